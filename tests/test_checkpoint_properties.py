"""Property-based tests (hypothesis) of memtune.save / memtune.load.

- A valid checkpoint damaged at random (its JSON config: values replaced by random JSON, keys deleted or
  inserted, types changed; its weights file: bytes flipped, a NaN/inf or an integer dtype stored, the file
  cut short, with or without a checksum that matches the damage) either loads or raises a memtune error; after a refusal the model is untouched
  (no methods, no hooks, same requires_grad, same logits), and after a load, ``detach`` gives it back.
- save -> load reproduces the logits bit for bit, for any finite memory values.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import memtune
from memtune.io import CONFIG_FILE
from memtune.tuning import STATE_ATTR

from conftest import FUZZ_SCALE, batch, logits, tiny_model

INPUTS = batch("bert")

# Integers: small ones, and sizes no machine holds. Mid-sized ones (1e5..1e9) are left out: as a slot count
# or prefix length they make a valid but costly checkpoint (load allocates what attach would), not a new case.
INTEGERS = st.integers(-3, 70) | st.sampled_from([10**12, 2**40, 2**63, -(2**63), 10**30])
SCALARS = st.none() | st.booleans() | INTEGERS | st.floats() | st.text(max_size=12)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """One valid checkpoint (mt-mf: a prefix, a memory and the classifier head), saved once per module."""
    model = memtune.attach(tiny_model("bert"), memtune.recipe("mt-mf", budget=8))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return memtune.save(model, tmp_path_factory.mktemp("checkpoint") / "ckpt")


@pytest.fixture(scope="module")
def base():
    """The base model every example loads onto, and how it looks untouched."""
    model = tiny_model("bert")
    return model, logits(model, INPUTS), [p.requires_grad for p in model.parameters()]


def assert_untouched(model, reference_logits, requires_grad) -> None:
    assert not hasattr(model, STATE_ATTR)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == requires_grad
    assert torch.equal(logits(model, INPUTS), reference_logits)


def paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """The path (keys and indices) of every value nested in ``value``."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield prefix + (key,)
        yield from paths(inner, prefix + (key,))


def retyped(value: Any) -> list[Any]:
    """The same value as other JSON types."""
    options = [json.dumps(value), [value], {"value": value}, None]
    if isinstance(value, bool) or (isinstance(value, int) and abs(value) < 2**53):
        options += [float(value), str(int(value))]
    if isinstance(value, float) and value == value and abs(value) < 1e18:
        options += [int(value), bool(value)]
    return options


def mutate(data, config: dict[str, Any]) -> None:
    """One random change at a random place of ``config``: replace, delete, insert or retype."""
    path = data.draw(st.sampled_from(list(paths(config))))
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    key, operation = path[-1], data.draw(st.sampled_from(["replace", "delete", "insert", "retype"]))
    if operation == "replace":
        parent[key] = data.draw(JSON)
    elif operation == "delete":
        del parent[key]
    elif operation == "retype":
        parent[key] = data.draw(st.sampled_from(retyped(parent[key])))
    else:
        target = parent[key] if isinstance(parent[key], (dict, list)) else parent
        if isinstance(target, dict):
            target[data.draw(st.text(max_size=12) | st.sampled_from(["bias", "layers", "slots", "gate"]))] = data.draw(JSON)
        else:
            target.insert(data.draw(st.integers(0, len(target))), data.draw(JSON))


def damage_weights(data, folder: Path, config: dict[str, Any]) -> None:
    """Flip random bytes of the weights file (often in its header), or store a NaN, an inf or an integer dtype,
    maybe cut the file short; maybe fix the checksum."""
    file = folder / config["weights"]["file"]
    raw = bytearray(file.read_bytes())
    header = int.from_bytes(raw[:8], "little") + 8
    where = st.integers(0, header - 1) | st.integers(0, len(raw) - 1)
    for at, bits in data.draw(st.lists(st.tuples(where, st.integers(1, 255)), max_size=4)):
        raw[at] ^= bits
    value = data.draw(st.sampled_from([None, float("nan"), float("inf"), "I32"]))
    if value == "I32":  # the same size as F32: the file still parses
        raw[:header] = raw[:header].replace(b'"F32"', b'"I32"', data.draw(st.integers(1, 3)))
    elif value is not None:
        at = header + 4 * data.draw(st.integers(0, (len(raw) - header) // 4 - 1))
        raw[at : at + 4] = struct.pack("<f", value)
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    file.write_bytes(bytes(raw))
    if data.draw(st.booleans()):  # a matching checksum: the damage reaches the safetensors reader and the checks
        config["weights"].update(sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw))


@pytest.mark.slow
@settings(max_examples=300 * FUZZ_SCALE, deadline=None, database=None)
@given(data=st.data())
def test_a_damaged_checkpoint_loads_or_is_refused_leaving_the_model_untouched(checkpoint, base, data):
    model, reference_logits, requires_grad = base
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(checkpoint, Path(tmp) / "ckpt"))
        config = json.loads((folder / CONFIG_FILE).read_text())
        weights_damaged = data.draw(st.booleans(), label="damage the weights")
        if weights_damaged:
            damage_weights(data, folder, config)
        for _ in range(data.draw(st.integers(0 if weights_damaged else 1, 3), label="config changes")):
            mutate(data, config)
        (folder / CONFIG_FILE).write_text(json.dumps(config))
        try:
            memtune.load(model, folder)
        except memtune.MemtuneError:
            pass
        else:
            memtune.detach(model)
        assert_untouched(model, reference_logits, requires_grad)


@settings(max_examples=30 * FUZZ_SCALE, deadline=None, database=None)
@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=40))
def test_save_then_load_reproduces_the_logits_exactly(base, values):
    model, reference_logits, requires_grad = base
    memtune.attach(model, memtune.MemoryConfig(num_slots=2, slot_dim=4, layers=[0, 2]))
    with torch.no_grad():
        for n, p in enumerate(model.memtune.methods["memory"].parameters()):
            drawn = torch.tensor(values[n % len(values) :] + values[: n % len(values)])
            p.copy_(drawn.repeat(p.numel() // len(values) + 1)[: p.numel()].view(p.shape))
    expected = logits(model, INPUTS)
    with tempfile.TemporaryDirectory() as tmp:
        memtune.save(model, tmp)
        memtune.detach(model)
        memtune.load(model, tmp)
    torch.testing.assert_close(logits(model, INPUTS), expected, rtol=0, atol=0, equal_nan=True)
    memtune.detach(model)
    assert_untouched(model, reference_logits, requires_grad)

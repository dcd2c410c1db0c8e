"""Property-based tests (hypothesis) of every config class, and a plain regression test per bug they found.

Properties:
- any values for any fields either build a config or raise a memtune error with a message (never a raw
  TypeError/ValueError/OverflowError from deep inside);
- a config that builds holds values of its fields' kinds (bools are bools, ints not bools, floats finite,
  text from the allowed choices) and round-trips through ``to_dict``/``from_dict`` (and JSON);
- ``MethodConfig.from_dict`` of any dict, ``TrainSettings``, ``settings_for``, ``DecodingConfig`` and
  ``memtune.recipe`` likewise;
- attaching valid configs to a tiny model either works (an exact no-op where the method promises one) or
  raises a memtune error and leaves the model as it was; sizes no machine holds are refused without allocating.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import resource
import typing
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import memtune
from memtune.decoding import DecodingConfig
from memtune.errors import ConfigError, MemtuneError
from memtune.methods import METHODS, RECIPES, MethodConfig, Recipe
from memtune.methods.adapter import ACTIVATIONS, MAX_SCALE, PLACEMENTS
from memtune.methods.base import MAX_SIZE
from memtune.methods.lora import MAX_SCALING, ROLES
from memtune.methods.memory import MEMORY_INITS, SMALLEST_EPS
from memtune.settings import TrainSettings, settings_for
from memtune.tuning import STATE_ATTR

from conftest import FUZZ_SCALE, batch, logits, tiny_model

PROPERTY = settings(max_examples=100 * FUZZ_SCALE, deadline=None, database=None)  # database=None: no .hypothesis/ in the tree
CLASSES = sorted(METHODS.values(), key=lambda cls: cls.method)
CHOICES = {  # text fields with a fixed set of values
    ("MemoryConfig", "init"): MEMORY_INITS,
    ("AdapterConfig", "placement"): PLACEMENTS,
    ("AdapterConfig", "activation"): tuple(ACTIVATIONS),
}
NO_OP_AT_ATTACH = ("full", "bitfit", "adapter", "lora")  # and memory with init="zero-out" (tests/test_baselines.py)

# ---- strategies ------------------------------------------------------------------------------------

EDGE_VALUES = [0, -1, 1, 2**31, 2**63, 10**12, MAX_SIZE, MAX_SIZE + 1, 10**400, -(10**400),
               -0.0, 5e-324, 1e-46, 1e-310, 1e39, 1e308, math.nan, math.inf, -math.inf, "", "1", "nan"]  # fmt: skip
WORDS = sorted({w for choices in CHOICES.values() for w in choices} | set(ROLES) | set(METHODS) | {"adamw_torch", "sgd"})
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6), st.sampled_from(EDGE_VALUES),
    st.sampled_from(WORDS),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def valid_values(cls: type, small: bool = True) -> dict[str, st.SearchStrategy]:
    """A strategy per field of ``cls`` that only draws allowed values: sizes up to 48 (the tiny models have width
    32, so some are too wide for them) or up to 2**40; layer indices up to 3 (they have 3 layers)."""
    size = st.integers(1, 48 if small else MAX_SIZE)
    out: dict[str, st.SearchStrategy] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if (cls.__name__, f.name) in CHOICES:
            out[f.name] = st.sampled_from(CHOICES[cls.__name__, f.name])
        elif kind is bool:
            out[f.name] = st.booleans()
        elif kind is int or f.name == "hidden":
            out[f.name] = size if kind is int else st.none() | size
        elif f.name == "layers":
            out[f.name] = st.none() | st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True)
        elif f.name == "targets":
            out[f.name] = st.lists(st.sampled_from(ROLES), min_size=1, max_size=3) | st.sampled_from(ROLES)
        elif f.name == "dropout":
            out[f.name] = st.floats(0.0, 1.0, exclude_max=True)
        elif f.name == "init_std":
            out[f.name] = st.floats(0.0, 1.0, exclude_min=True) | st.just(0.02)
        elif f.name == "layer_norm_eps":
            out[f.name] = st.floats(SMALLEST_EPS, 1.0, exclude_max=True) | st.sampled_from([1e-5, 1e-12])
        elif f.name in ("scale", "scaling"):
            limit = MAX_SCALE if f.name == "scale" else MAX_SCALING
            out[f.name] = st.floats(0.0, limit, exclude_min=True) | st.integers(1, int(limit))
        else:
            raise AssertionError(f"no strategy for {cls.__name__}.{f.name}: add one")
    return out


def field_values(cls: type, arbitrary: bool) -> st.SearchStrategy[dict]:
    """Keyword arguments for ``cls``: each field left out or given, an allowed value or (``arbitrary``) anything."""
    valid = valid_values(cls)
    return st.fixed_dictionaries({}, optional={k: (v | json_values) if arbitrary else v for k, v in valid.items()})


def method_configs(small: bool = True) -> st.SearchStrategy[MethodConfig]:
    return st.one_of(*(st.builds(cls, **valid_values(cls, small)) for cls in CLASSES))


# ---- checks ----------------------------------------------------------------------------------------

def assert_valid(config: MethodConfig) -> None:
    """Every field holds a value of its annotated kind, in its allowed range."""
    cls = type(config)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(config):
        kind, value = hints[f.name], getattr(config, f.name)
        where = f"{cls.__name__}.{f.name} = {value!r}"
        if kind is bool:
            assert type(value) is bool, where
        elif kind is int or f.name == "hidden":
            assert (value is None and kind is not int) or (type(value) is int and 1 <= value <= MAX_SIZE), where
        elif kind is float:
            assert type(value) is float and math.isfinite(value), where
        elif kind is str:
            assert type(value) is str and value in CHOICES[cls.__name__, f.name], where
        elif f.name == "layers":
            assert value is None or (
                type(value) is list and value and value == sorted(set(value))
                and all(type(i) is int and i >= 0 for i in value)
            ), where  # fmt: skip
        elif f.name == "targets":
            assert type(value) is list and value and len(set(value)) == len(value) and set(value) <= set(ROLES), where
        else:
            raise AssertionError(f"no check for {where}: add one")
    if hasattr(config, "dropout"):
        assert 0 <= config.dropout < 1
    assert cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)}) == config  # idempotent


def assert_round_trips(config: MethodConfig) -> None:
    data = config.to_dict()
    assert data["method"] == config.method
    assert MethodConfig.from_dict(data) == config
    assert MethodConfig.from_dict(json.loads(json.dumps(data))) == config  # as saved in a checkpoint


def assert_message(error: Exception) -> None:
    assert isinstance(error, MemtuneError) and len(str(error)) > 10


def built(make):
    """``make()``, or None when it raised a memtune error (whose message is checked): the two outcomes
    every property allows."""
    try:
        return make()
    except MemtuneError as e:
        assert_message(e)
        return None

# ---- (a)-(c): method configs -----------------------------------------------------------------------

@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
@PROPERTY
@given(data=st.data())
def test_any_field_values_build_a_valid_config_or_raise_a_memtune_error(cls, data):
    kwargs = data.draw(field_values(cls, arbitrary=True), label="kwargs")
    config = built(lambda: cls(**kwargs))
    if config is None:
        return
    assert_valid(config)
    assert_round_trips(config)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
@PROPERTY
@given(data=st.data())
def test_allowed_values_always_build(cls, data):
    config = cls(**data.draw(field_values(cls, arbitrary=False), label="kwargs"))
    assert_valid(config)
    assert_round_trips(config)


FIELD_NAMES = sorted({f.name for cls in CLASSES for f in dataclasses.fields(cls)})
dict_keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=5) | st.integers(-2, 2) | st.none()
method_names = st.sampled_from(sorted(METHODS)) | json_values


@PROPERTY
@given(
    method=method_names,
    fields=st.dictionaries(dict_keys, json_values, max_size=4),
    with_method=st.booleans(),
    not_a_dict=st.none() | st.lists(scalars, max_size=2) | st.text(max_size=4) | st.integers(),
    use_dict=st.booleans(),
)
def test_from_dict_of_any_dict_gives_a_valid_config_or_a_memtune_error(method, fields, with_method, not_a_dict, use_dict):
    data = {**fields, **({"method": method} if with_method else {})} if use_dict else not_a_dict
    config = built(lambda: MethodConfig.from_dict(data))
    if config is None:
        return
    assert type(config) is METHODS[data["method"]]
    assert_valid(config)
    assert_round_trips(config)


@PROPERTY
@given(config=method_configs(small=False), extra=st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=2))
def test_to_dict_round_trips_and_edited_dicts_stay_safe(config, extra):
    assert_round_trips(config)
    edited = built(lambda: MethodConfig.from_dict({**config.to_dict(), **extra}))
    if edited is None:
        return
    assert_valid(edited)


# ---- (d): training settings, decoding, recipes -----------------------------------------------------

def settings_fields() -> st.SearchStrategy[dict]:
    valid = {
        "epochs": st.integers(1, 50), "batch_size": st.integers(1, 64), "max_length": st.integers(1, 512),
        "learning_rate": st.floats(1e-8, 1.0) | st.integers(1, 3), "patience": st.integers(1, 9),
        "weight_decay": st.floats(0.0, 1.0), "warmup_ratio": st.floats(0.0, 1.0, exclude_max=True),
        "eval_batch_size": st.integers(1, 64), "max_train_steps": st.none() | st.integers(1, 10**6),
        "valid_size": st.none() | st.integers(1, 10**6), "optimizer": st.sampled_from(["adamw_torch", "sgd", "adafactor"]),
    }  # fmt: skip
    required = {"epochs", "batch_size", "learning_rate", "max_length"}
    anything = {k: v | json_values for k, v in valid.items()}
    return st.fixed_dictionaries(
        {k: v for k, v in anything.items() if k in required}, optional={k: v for k, v in anything.items() if k not in required}
    )


def assert_valid_settings(s: TrainSettings) -> None:
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if f.type in ("int", "int | None"):
            assert (value is None and f.type != "int") or (type(value) is int and value >= 1), (f.name, value)
        elif f.type == "float":
            assert type(value) is float and math.isfinite(value), (f.name, value)
        else:
            assert type(value) is str, (f.name, value)
    assert s.learning_rate > 0 and s.weight_decay >= 0 and 0 <= s.warmup_ratio < 1
    assert TrainSettings(**s.to_dict()) == s and hash(TrainSettings(**s.to_dict())) == hash(s)
    assert TrainSettings(**json.loads(json.dumps(s.to_dict()))) == s


@PROPERTY
@given(kwargs=settings_fields())
def test_train_settings_of_any_values_are_valid_or_refused(kwargs):
    s = built(lambda: TrainSettings(**kwargs))
    if s is None:
        return
    assert_valid_settings(s)


TASK = SimpleNamespace(epochs=3, batch_size=8, batch_size_large=4, max_length=64)


@PROPERTY
@given(
    profile=st.sampled_from(["paper", "cpu"]) | json_values,
    large=st.booleans(),
    overrides=st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(TrainSettings)]) | st.text(max_size=5),
                              json_values, max_size=3),  # fmt: skip
)
def test_settings_for_any_overrides_are_valid_or_refused(profile, large, overrides):
    s = built(lambda: settings_for(TASK, SimpleNamespace(learning_rate=1e-4), profile, large=large, **overrides))
    if s is None:
        return
    assert_valid_settings(s)


@PROPERTY
@given(kwargs=st.fixed_dictionaries({}, optional={
    "max_new_tokens": st.integers(1, 100) | json_values, "num_beams": st.integers(1, 4) | json_values,
    "batch_size": st.integers(1, 32) | json_values, "min_new_tokens": st.integers(0, 100) | json_values,
}))  # fmt: skip
def test_decoding_config_of_any_values_is_valid_or_refused(kwargs):
    config = built(lambda: DecodingConfig(**kwargs))
    if config is None:
        return
    for name in ("max_new_tokens", "num_beams", "batch_size"):
        assert type(getattr(config, name)) is int and getattr(config, name) >= 1
    assert type(config.min_new_tokens) is int and 0 <= config.min_new_tokens <= config.max_new_tokens
    assert DecodingConfig(**config.to_dict()) == config


recipe_names = st.sampled_from(sorted(RECIPES)) | st.sampled_from(["MT_MF", " LoRA ", "mt-f-Authors", "mtf", ""]) | json_values
budgets = st.integers(1, 64) | st.integers(1, MAX_SIZE) | json_values


@PROPERTY
@given(name=recipe_names, budget=budgets, shift=st.booleans() | json_values)
def test_recipe_of_any_name_and_budget_is_valid_or_refused(name, budget, shift):
    r = built(lambda: memtune.recipe(name, budget, shift_prefix_positions=shift))
    if r is None:
        return
    assert isinstance(r, Recipe) and r.name in RECIPES and r.budget == budget and len(r) >= 1
    assert math.isfinite(r.learning_rate) and r.learning_rate > 0
    for config in r:
        assert_valid(config)
        assert_round_trips(config)
        if isinstance(config, memtune.PrefixConfig):
            assert config.shift_positions is shift


# ---- (e): attach -----------------------------------------------------------------------------------

ATTACH_ARCHS = ("bert", "gpt2")


@functools.cache
def pristine(arch: str) -> tuple[torch.nn.Module, dict, torch.Tensor]:
    """The tiny model (copied per example, never changed), its inputs and its outputs on them."""
    model, inputs = tiny_model(arch), batch(arch, pad="right" if arch == "bert" else "left")
    return model, inputs, logits(model, inputs)


def promises_no_op(config: MethodConfig) -> bool:
    return config.method in NO_OP_AT_ATTACH or (config.method == "memory" and config.init == "zero-out")


def assert_untouched(model, arch: str) -> None:
    original, inputs, before = pristine(arch)
    assert not hasattr(model, STATE_ATTR) and not hasattr(model, "peft_config")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert model.state_dict().keys() == original.state_dict().keys()
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # as built
    assert torch.equal(logits(model, inputs), before)


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: on a shared machine, tiny models run several times faster than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def attach_or_refuse(arch: str, configs: list[MethodConfig]) -> str:
    """Attach ``configs`` to a fresh copy of the tiny model; check the outcome either way."""
    with one_thread():
        return _attach_or_refuse(arch, configs)


def _attach_or_refuse(arch: str, configs: list[MethodConfig]) -> str:
    original, inputs, before = pristine(arch)
    model = copy.deepcopy(original)
    try:
        memtune.attach(model, configs)
    except MemtuneError as e:
        assert_message(e)
        assert_untouched(model, arch)
        return "refused"
    try:
        after = logits(model, inputs)
    except MemtuneError as e:  # a prefix that shifts positions past the position table says so when run
        assert_message(e)
        assert any(getattr(c, "shift_positions", False) for c in configs)
        return "refused at run"
    assert after.shape == before.shape and torch.isfinite(after).all()
    if all(promises_no_op(c) for c in configs):
        assert torch.equal(after, before)
    return "attached"


@pytest.mark.parametrize("arch", ATTACH_ARCHS)
@settings(PROPERTY, max_examples=50 * FUZZ_SCALE)  # each example copies and runs the model: ~0.03 s
@given(configs=st.lists(method_configs(), min_size=1, max_size=2))
def test_valid_configs_attach_cleanly_or_not_at_all(arch, configs):
    event(attach_or_refuse(arch, configs))  # pytest --hypothesis-show-statistics: how many attached


HUGE = {  # size fields, at values no machine holds (attach's size check refuses them before allocating)
    "MemoryConfig": ("num_slots",),
    "PrefixConfig": ("prefix_length", "hidden"),
    "AdapterConfig": ("bottleneck",),
    "LoraConfig": ("rank",),
}


@settings(PROPERTY, max_examples=30 * FUZZ_SCALE)
@given(
    data=st.data(),
    cls=st.sampled_from([c for c in CLASSES if c.__name__ in HUGE]),
    size=st.integers(10**10, MAX_SIZE) | st.sampled_from([10**12, MAX_SIZE]),
)
def test_huge_sizes_are_refused_without_allocating(data, cls, size):
    name = data.draw(st.sampled_from(HUGE[cls.__name__]), label="field")
    kwargs = data.draw(st.fixed_dictionaries(valid_values(cls)), label="kwargs")
    kwargs.update({name: size}, layers=None)
    if cls.__name__ == "MemoryConfig":
        kwargs["slot_dim"] = 8  # within the model's width, so that only the slots are too many
    if name == "hidden":
        kwargs["reparameterize"] = True  # the reparameterisation network is what has width m
    config = cls(**kwargs)  # valid: the size is below 2**40
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with mock.patch("memtune.tuning._available_bytes", return_value=16 * 2**30):  # the same on any machine
        assert attach_or_refuse(data.draw(st.sampled_from(ATTACH_ARCHS), label="arch"), [config]) == "refused"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 2**20  # under 1 GiB more at peak


TOO_MANY = "would add [0-9,]+ parameters .* more than the 16.0 GiB this machine has free"
TOO_WIDE = "exceeds the model's hidden size d=32"


@pytest.mark.parametrize("make, message", [
    (lambda: memtune.MemoryConfig(num_slots=10**12, slot_dim=8), TOO_MANY),
    (lambda: memtune.PrefixConfig(prefix_length=10**9), TOO_MANY),
    (lambda: memtune.PrefixConfig(prefix_length=10**9, reparameterize=False), TOO_MANY),
    (lambda: memtune.PrefixConfig(prefix_length=4, hidden=10**12), TOO_MANY),
    (lambda: memtune.AdapterConfig(bottleneck=10**12), TOO_MANY),
    (lambda: memtune.LoraConfig(rank=10**9), TOO_WIDE),
    (lambda: memtune.recipe("mt-f", 10**12), TOO_WIDE),
    (lambda: [memtune.recipe("mt-m", 10**9).configs[0], memtune.MemoryConfig(num_slots=10**9)], TOO_MANY),
])  # fmt: skip
def test_sizes_no_machine_holds_are_refused_before_anything_is_allocated(make, message):
    model = copy.deepcopy(pristine("bert")[0])
    with one_thread(), mock.patch("memtune.tuning._available_bytes", return_value=16 * 2**30):
        with pytest.raises(ConfigError, match=message):
            memtune.attach(model, make())
        assert_untouched(model, "bert")


# ---- regressions: one plain example per bug the properties found --------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: memtune.MemoryConfig(bias="no"), "MemoryConfig.bias must be True or False, got 'no'"),
    (lambda: memtune.MemoryConfig(init_std=math.nan), "init_std must be a finite number, got nan"),
    (lambda: memtune.LoraConfig(targets=7), "targets must be a non-empty list"),
    (lambda: memtune.AdapterConfig(activation=[1]), "activation must be a string, got \\[1\\]"),
])  # fmt: skip
def test_earlier_fuzzing_findings_still_get_messages(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize("make, message", [
    (lambda: memtune.AdapterConfig(scale=10**400), "AdapterConfig.scale must be a finite number, got 1.000e\\+400"),
    (lambda: memtune.LoraConfig(scaling=10**400), "LoraConfig.scaling must be a finite number"),
    (lambda: memtune.MemoryConfig(init_std=10**400), "MemoryConfig.init_std must be a finite number"),
    (lambda: memtune.MemoryConfig(layer_norm_eps=-(10**400)), "MemoryConfig.layer_norm_eps must be a finite number"),
    (lambda: memtune.PrefixConfig(dropout=10**400), "PrefixConfig.dropout must be a finite number"),
    (lambda: TrainSettings(1, 1, 10**400, 1), "learning_rate must be a positive finite number, got 1.000e\\+400"),
    (lambda: TrainSettings(1, 1, 1e-4, 1, weight_decay=10**400), "weight_decay must be a finite number >= 0"),
])  # fmt: skip
def test_an_int_too_large_for_a_float_is_refused_not_an_overflow_error(make, message):
    """Was: OverflowError (int too large to convert to float) from math.isfinite."""
    with pytest.raises(ConfigError, match=message):
        make()


def test_whole_numbers_in_number_fields_are_stored_as_floats():
    """Was: the int kept, so a float field held an int (and to_dict wrote one)."""
    assert type(memtune.AdapterConfig(scale=4).scale) is float
    assert type(memtune.LoraConfig(scaling=2).to_dict()["scaling"]) is float
    assert type(TrainSettings(1, 1, 1, 1, weight_decay=0).learning_rate) is float
    assert memtune.AdapterConfig(scale=4) == memtune.AdapterConfig(scale=4.0)


@pytest.mark.parametrize("make, message", [
    (lambda: memtune.MemoryConfig(num_slots=-(10**5000)), "num_slots \\(k\\) must be a positive integer, got -1.000e\\+5000"),
    (lambda: memtune.MemoryConfig(layers=[10**5000, 10**5000]), "layers lists a layer twice: a list holding an integer too long"),
    (lambda: memtune.LoraConfig(targets=[10**5000]), "targets must be a non-empty list"),
    (lambda: TrainSettings(-(10**5000), 1, 1e-4, 1), "epochs must be a positive integer \\(at most 1,000,000,000\\), got -1.000e\\+5000"),
    (lambda: DecodingConfig(batch_size=-(10**5000)), "batch_size must be a positive integer \\(at most 1,000,000,000\\), got -1.000e\\+5000"),
    (lambda: memtune.attach(tiny_model("bert"), memtune.BitFitConfig(layers=[10**5000])), "layers .* do not exist"),
])  # fmt: skip
def test_messages_survive_integers_too_long_to_print(make, message):
    """Was: ValueError (Exceeds the limit (4300 digits) for integer string conversion) while writing the message."""
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize("make", [
    lambda: memtune.MemoryConfig(num_slots=2**62, slot_dim=8),
    lambda: memtune.PrefixConfig(prefix_length=2**62, reparameterize=False),
    lambda: memtune.PrefixConfig(hidden=10**30),
    lambda: memtune.AdapterConfig(bottleneck=2**63),
    lambda: memtune.recipe("unipelt", 2**70),
])  # fmt: skip
def test_sizes_above_2_40_are_refused_before_torch_sees_them(make):
    """Was: attach raised RuntimeError (numel: integer multiplication overflow) or TypeError (Overflow when
    unpacking long long) from the meta-device size check."""
    with pytest.raises(ConfigError, match="must be at most 2\\*\\*40"):
        make()
    assert memtune.MemoryConfig(num_slots=MAX_SIZE).num_slots == MAX_SIZE


@pytest.mark.parametrize("data, message", [
    ([], "a method config must be a dict with a 'method' key, got \\[\\]"),
    (None, "must be a dict"),
    ({"method": []}, "unknown method \\[\\]"),
    ({"method": {"a": 1}}, "unknown method"),
    ({"method": "lora", "x": 1, 2: 3}, "LoraConfig has no field\\(s\\) \\['x', 2\\]"),
])  # fmt: skip
def test_from_dict_refuses_what_is_not_a_config_dict(data, message):
    """Was: TypeError (unhashable type / not iterable / '<' between int and str) or ValueError from dict()."""
    with pytest.raises(ConfigError, match=message):
        MethodConfig.from_dict(data)


@pytest.mark.parametrize("make, message", [
    (lambda: memtune.AdapterConfig(scale=1e39), "AdapterConfig.scale must be a positive number at most 1000"),
    (lambda: memtune.LoraConfig(scaling=1e308), "LoraConfig.scaling must be a positive number at most 1000"),
    (lambda: memtune.MemoryConfig(init_std=1e38), "MemoryConfig.init_std must be a positive number at most 1"),
    (lambda: memtune.MemoryConfig(init_std=1e30, layer_norms=True), "init_std must be a positive number at most 1"),
    (lambda: memtune.MemoryConfig(layer_norm_eps=1e-46), "layer_norm_eps must be a number in \\[1.18e-38, 1\\)"),
])  # fmt: skip
def test_values_that_turn_the_no_op_into_nan_are_refused(make, message):
    """Was: accepted, and attach turned every output into nan (0 * inf in float32; a LayerNorm of one slot with
    an eps that rounds to 0 divides 0 by 0)."""
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize("arch", ATTACH_ARCHS)
def test_the_largest_allowed_scales_and_smallest_eps_still_attach_as_a_no_op(arch):
    configs = [
        memtune.AdapterConfig(scale=MAX_SCALE, gate=True),
        memtune.LoraConfig(scaling=MAX_SCALING, rank=4),
        memtune.MemoryConfig(init_std=1.0, slot_dim=1, layer_norms=True, bias=True, layer_norm_eps=SMALLEST_EPS),
    ]
    assert attach_or_refuse(arch, configs) == "attached"


def test_recipe_refuses_a_shift_flag_that_is_not_a_bool():
    """Was: recipe('lora', 8, shift_prefix_positions='yes') accepted; for a prefix recipe the message named
    PrefixConfig.shift_positions instead of the argument."""
    for name in ("lora", "mt-mf"):
        with pytest.raises(ConfigError, match="recipe shift_prefix_positions must be True or False, got 'yes'"):
            memtune.recipe(name, 8, shift_prefix_positions="yes")


def test_a_recipe_holds_method_configs_only():
    """Was: Recipe('x', 8, [7]) accepted, and attach raised AttributeError ('int' object has no attribute
    'layer_indices')."""
    with pytest.raises(ConfigError, match="Recipe.configs must be a list of method configs"):
        Recipe("x", 8, [7])
    assert Recipe("x", 8, (memtune.FullConfig(),)).configs == [memtune.FullConfig()]

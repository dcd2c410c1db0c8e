"""save / load: round trips, the stored form, and every way a checkpoint can be wrong."""
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import memtune
from memtune.io import CONFIG_FILE
from conftest import ARCHS, batch, logits, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")


def weights_of(folder):
    """The weights file a checkpoint's config names."""
    return folder / json.loads((folder / CONFIG_FILE).read_text())["weights"]["file"]


def trained(arch, name="mt-mf", **kw):
    """A model with the recipe attached and its tuned parameters (and head) set to random values."""
    model = memtune.attach(tiny_model(arch, **kw), memtune.recipe(name, budget=8))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_gives_identical_outputs(arch, tmp_path):
    model = trained(arch)
    inputs = batch(arch)
    expected = logits(model, inputs)
    memtune.save(model, tmp_path / "ckpt")
    fresh = memtune.load(tiny_model(arch), tmp_path / "ckpt")
    torch.testing.assert_close(logits(fresh, inputs), expected, rtol=1e-5, atol=1e-6)
    assert not fresh.memtune.methods["prefix"].reparameterized  # loaded in the stored form
    report = memtune.parameter_report(fresh)
    assert report["stored"] == memtune.parameter_report(model)["stored"]


@pytest.mark.parametrize("name", ["adapter", "bitfit", "ft", "lora", "mam", "mt-f-authors", "mt-m", "prefix", "unipelt"])
def test_every_recipe_round_trips(name, tmp_path):
    """Each method's stored tensors pass load's checks (names, dtypes, the tensors each method expects)."""
    model, inputs = trained("bert", name=name), batch("bert")
    expected = logits(model, inputs)
    memtune.save(model, tmp_path)
    fresh = memtune.load(tiny_model("bert"), tmp_path)
    torch.testing.assert_close(logits(fresh, inputs), expected, rtol=1e-5, atol=1e-6)
    assert list(fresh.memtune.methods) == list(model.memtune.methods)


def test_saved_files_hold_only_the_stored_parameters(tmp_path):
    model = trained("bert")
    memtune.save(model, tmp_path)
    tensors = load_file(weights_of(tmp_path))
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    report = memtune.parameter_report(model)
    assert tensors["methods.prefix.prefix"].shape == (3, 4, 64)  # L x l x 2d: no reparameterisation network
    assert sum(t.numel() for n, t in tensors.items() if n.startswith("methods.")) == report["stored"]
    assert {n for n in tensors if n.startswith("head.")} == {"head.classifier.weight", "head.classifier.bias"}
    assert config["recipe"] == "mt-mf" and config["budget"] == 8
    assert config["base_model"]["model_type"] == "bert" and config["base_model"]["fingerprint"].startswith("sha256:")
    assert [m["method"] for m in config["methods"]] == ["prefix", "memory"]
    assert config["memtune_version"] == memtune.__version__
    assert not list(tmp_path.glob("*.tmp"))


def test_overwriting_a_checkpoint(tmp_path):
    first, second = trained("bert"), trained("bert", name="mt-f")
    memtune.save(first, tmp_path)
    memtune.save(second, tmp_path)
    fresh = memtune.load(tiny_model("bert"), tmp_path)
    assert list(fresh.memtune.methods) == ["memory"]


def test_fingerprint_ignores_dtype_but_not_weights():
    from memtune.tuning import fingerprint

    model = tiny_model("bert")
    assert fingerprint(model) == fingerprint(tiny_model("bert").to(torch.bfloat16))
    assert fingerprint(model) != fingerprint(tiny_model("bert", seed=1))


def assert_untouched(model, reference_logits, inputs):
    assert not hasattr(model, "memtune")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(logits(model, inputs), reference_logits)


@pytest.fixture
def saved(tmp_path):
    memtune.save(trained("bert"), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_load_onto_another_base_model_fails_cleanly(saved):
    inputs = batch("bert")
    other_weights = tiny_model("bert", seed=1)
    ref = logits(other_weights, inputs)
    with pytest.raises(memtune.CheckpointError, match="different base model.*fingerprint"):
        memtune.load(other_weights, saved)
    assert_untouched(other_weights, ref, inputs)
    wider = tiny_model("gpt2")
    with pytest.raises(memtune.CheckpointError, match="model_type: checkpoint 'bert', model 'gpt2'"):
        memtune.load(wider, saved)


def test_load_with_other_head_size_fails_cleanly(saved):
    model = tiny_model("bert")
    model.classifier = torch.nn.Linear(32, 7)
    inputs = batch("bert")
    ref = logits(model, inputs)
    with pytest.raises(memtune.CheckpointError, match="classifier.weight has shape \\(3, 32\\) in the checkpoint"):
        memtune.load(model, saved)
    assert_untouched(model, ref, inputs)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_or_truncated_weights(saved, damage):
    weights = weights_of(saved)
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        weights.unlink()
    model, inputs = tiny_model("bert"), batch("bert")
    ref = logits(model, inputs)
    with pytest.raises(memtune.CheckpointError, match="corrupt or truncated|missing"):
        memtune.load(model, saved)
    assert_untouched(model, ref, inputs)


def test_corrupt_config_and_newer_format(saved):
    config_file = saved / CONFIG_FILE
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "format_version": 99, "memtune_version": "9.0"}))
    with pytest.raises(memtune.CheckpointError, match="written by memtune 9.0 in checkpoint format 99.*Upgrade"):
        memtune.load(tiny_model("bert"), saved)
    config_file.write_text(json.dumps(config)[:40])
    with pytest.raises(memtune.CheckpointError, match="corrupt \\(not valid JSON"):
        memtune.load(tiny_model("bert"), saved)
    config_file.write_text(json.dumps({**config, "methods": [{"method": "memory", "slot_dim": 0}], "method_keys": ["memory"]}))
    with pytest.raises(memtune.CheckpointError, match="invalid method config.*slot_dim"):
        memtune.load(tiny_model("bert"), saved)


def test_not_a_checkpoint_and_not_attached(tmp_path):
    with pytest.raises(memtune.CheckpointError, match="not a memtune checkpoint"):
        memtune.load(tiny_model("bert"), tmp_path)
    with pytest.raises(memtune.MemtuneError, match="no memtune methods attached"):
        memtune.save(tiny_model("bert"), tmp_path)


def test_crash_while_writing_leaves_the_old_checkpoint_loadable(saved, monkeypatch):
    import memtune.io as io

    before = weights_of(saved).read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(memtune.errors.CheckpointError, match=r"cannot write the checkpoint .* \(disk full\)"):
        memtune.save(trained("bert", name="mt-f"), saved)
    monkeypatch.undo()
    assert weights_of(saved).read_bytes() == before and not list(saved.glob(".*tmp"))
    memtune.load(tiny_model("bert"), saved)


def test_crash_between_weights_and_config_keeps_the_old_checkpoint(saved, monkeypatch):
    import memtune.io as io

    replace, calls = os.replace, []

    def crash_on_config(src, dst):
        calls.append(dst)
        if str(dst).endswith(CONFIG_FILE):
            raise OSError("killed")
        replace(src, dst)

    monkeypatch.setattr(io.os, "replace", crash_on_config)
    with pytest.raises(memtune.errors.CheckpointError, match=r"\(killed\); a checkpoint already there is still loadable"):
        memtune.save(trained("bert", name="mt-f"), saved)
    monkeypatch.undo()
    assert len(calls) == 2  # the new weights landed, the config did not
    fresh = memtune.load(tiny_model("bert"), saved)
    assert list(fresh.memtune.methods) == ["prefix", "memory"]  # still the old (mt-mf) checkpoint
    memtune.save(trained("bert", name="mt-f"), saved)
    assert len(list(saved.glob("memtune_weights*.safetensors"))) == 1  # the orphan is swept


def test_decoder_generation_after_load(tmp_path):
    model = trained("gpt2")
    inputs = batch("gpt2", pad="left")
    expected = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0)
    memtune.save(model, tmp_path)
    fresh = memtune.load(tiny_model("gpt2"), tmp_path)
    assert torch.equal(fresh.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0), expected)


def test_checkpoint_files_follow_the_umask(tmp_path):
    memtune.save(trained("bert"), tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert weights_of(tmp_path).stat().st_mode & 0o777 == 0o666 & ~umask


def test_load_with_an_explicit_arch_for_an_unregistered_model(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    def distilbert():
        torch.manual_seed(0)
        return DistilBertModel(DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, hidden_dim=48)).eval()

    spec = memtune.ArchSpec(layers="transformer.layer", ffn_output="ffn.dropout", self_attention="attention",
                            ffn_input="ffn", query_proj="q_lin", value_proj="v_lin")
    model = memtune.attach(distilbert(), memtune.recipe("mt-mf", budget=8), arch=spec)
    ids = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
    memtune.save(model, tmp_path)
    loaded = memtune.load(distilbert(), tmp_path, arch=spec)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).last_hidden_state, expected)


# --- non-finite and meta tensors ---------------------------------------------------------------------------

def rewrite_weights(folder, change):
    """Apply ``change`` to the stored tensors and store them back with a matching checksum (a valid file)."""
    from safetensors.torch import save as to_safetensors

    old = weights_of(folder)
    tensors = load_file(old)
    change(tensors)
    data = to_safetensors(tensors)
    digest = hashlib.sha256(data).hexdigest()
    new = folder / f"memtune_weights-{digest[:16]}.safetensors"
    new.write_bytes(data)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["weights"] = {"file": new.name, "sha256": digest, "bytes": len(data)}
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    if old != new:
        old.unlink()


def test_save_refuses_non_finite_tensors_unless_allowed(tmp_path):
    from memtune.io import stored_tensors

    model = trained("bert")
    with torch.no_grad():
        model.memtune.methods["memory"].blocks["0"].memory[0, :2] = torch.tensor([float("nan"), float("inf")])
        model.classifier.bias[1] = -float("inf")
    pattern = (r"cannot save: 2 stored tensor\(s\) hold NaN or inf: head\.classifier\.bias \(1 of 3 values\), "
               r"methods\.memory\.blocks\.0\.memory \(2 of 200 values\).*allow_non_finite=True")
    with pytest.raises(memtune.CheckpointError, match=pattern):
        memtune.save(model, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()  # refused before anything was written
    memtune.save(model, tmp_path / "ckpt", allow_non_finite=True)
    fresh, inputs = tiny_model("bert"), batch("bert")
    ref = logits(fresh, inputs)
    with pytest.raises(memtune.CheckpointError, match=r"2 stored tensor\(s\) hold NaN or inf: head\.classifier\.bias "
                                                      r"\(1 of 3 values\), methods\.memory\.blocks\.0\.memory \(2 of 200 "
                                                      r"values\).*allow_non_finite=True to load it anyway"):
        memtune.load(fresh, tmp_path / "ckpt")
    assert_untouched(fresh, ref, inputs)
    memtune.load(fresh, tmp_path / "ckpt", allow_non_finite=True)
    saved, loaded = stored_tensors(model), stored_tensors(fresh)
    assert saved.keys() == loaded.keys()
    for name in saved:
        torch.testing.assert_close(loaded[name], saved[name], rtol=0, atol=0, equal_nan=True)


def test_load_refuses_a_checkpoint_whose_file_holds_non_finite_values(saved):
    def poison(tensors):
        tensors["methods.prefix.prefix"][0, 0, :3] = float("nan")

    rewrite_weights(saved, poison)  # a valid file with a matching checksum, e.g. from an older memtune
    model, inputs = tiny_model("bert"), batch("bert")
    ref = logits(model, inputs)
    with pytest.raises(memtune.CheckpointError, match=r"1 stored tensor\(s\) hold NaN or inf: methods\.prefix\.prefix "
                                                      r"\(3 of 768 values\)"):
        memtune.load(model, saved)
    assert_untouched(model, ref, inputs)
    assert memtune.load(model, saved, allow_non_finite=True).memtune.methods["prefix"].prefix.isnan().sum() == 3


def test_saving_tensors_on_the_meta_device_is_refused(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from conftest import CONFIGS

    config = CONFIGS["bert"]()
    config.num_labels = 3
    with torch.device("meta"):
        meta_model = AutoModelForSequenceClassification.from_config(config)
    memtune.attach(meta_model, memtune.recipe("mt-mf", budget=8))
    with pytest.raises(memtune.CheckpointError, match=r"stored tensor\(s\) are on the meta device.*methods\.prefix\.prefix"):
        memtune.save(meta_model, tmp_path / "meta")
    half_meta = trained("bert")
    half_meta.memtune.methods["memory"].to("meta")  # the backbone is real, one method's tensors are not
    with pytest.raises(memtune.CheckpointError, match=r"on the meta device and hold no values \(methods\.memory\."):
        memtune.save(half_meta, tmp_path / "meta")
    assert not (tmp_path / "meta").exists()


# --- concurrent saves and loads ------------------------------------------------------------------------------

def fill(model, value):
    """Set every tuned value of ``model`` to ``value``."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.fill_(value)


def memory_model():
    return memtune.attach(tiny_model("bert"), memtune.MemoryConfig(num_slots=4, slot_dim=8))


def save_loop(folder, stop, saves):
    """A writer process: saves a memory-only model into ``folder`` until ``stop``; every tuned value of its
    i-th save is 1000 + i (so a load shows which save it read, and whether it read a mix of two)."""
    torch.set_num_threads(1)
    model = memory_model()
    while not stop.is_set() and saves.value < 999:
        fill(model, 1000 + saves.value + 1)
        memtune.save(model, folder)
        saves.value += 1


def saved_values(model):
    """The distinct values of a loaded model's stored tensors."""
    from memtune.io import stored_tensors

    return {v for t in stored_tensors(model).values() for v in t.unique().tolist()}


@pytest.mark.slow
def test_concurrent_saves_and_loads(tmp_path):
    """A writer process saves into a folder in a loop while this process saves into it too (values 2000 + i)
    and loads it after each save: no save fails, every load reads one save whole, and the folder ends up
    holding one writer's last save."""
    folder = tmp_path / "ckpt"
    ctx = multiprocessing.get_context("spawn")
    stop, saves = ctx.Event(), ctx.Value("i", 0)
    writer = ctx.Process(target=save_loop, args=(str(folder), stop, saves))
    writer.start()
    own, reader, loads = memory_model(), tiny_model("bert"), []
    try:
        while saves.value == 0 and writer.is_alive():  # the writer starts up (imports torch) first
            time.sleep(0.05)
        while writer.is_alive() and (len(loads) < 10 or saves.value < 10):
            fill(own, 2000 + len(loads) + 1)
            memtune.save(own, folder)
            memtune.load(reader, folder)  # must never meet a half-replaced checkpoint
            loads.append(saved_values(reader))
            memtune.detach(reader)
    finally:
        stop.set()
        writer.join(timeout=120)
    assert writer.exitcode == 0 and saves.value >= 10 and len(loads) >= 10
    assert all(len(values) == 1 for values in loads), loads
    final = saved_values(memtune.load(tiny_model("bert"), folder))
    assert final in ({1000.0 + saves.value}, {2000.0 + len(loads)})
    assert len(list(folder.glob("memtune_weights*.safetensors"))) == 1
    assert not list(folder.glob("*.tmp"))


def test_load_retries_when_a_save_replaces_the_checkpoint_under_it(saved, monkeypatch):
    import memtune.io as io

    read_weights, calls = io._read_weights, []

    def save_first(folder, config):  # another process saves between this load's config and weights reads
        calls.append(config["weights"]["file"])
        if len(calls) == 1:
            memtune.save(trained("bert", name="mt-f"), saved)
        return read_weights(folder, config)

    monkeypatch.setattr(io, "_read_weights", save_first)
    fresh = memtune.load(tiny_model("bert"), saved)
    assert list(fresh.memtune.methods) == ["memory"]  # the new checkpoint, read whole
    assert len(calls) == 2 and calls[0] != calls[1]


def test_load_gives_up_on_a_checkpoint_that_keeps_changing(saved, monkeypatch):
    import memtune.io as io

    read_weights, models = io._read_weights, [trained("bert", name="mt-f"), trained("bert")]

    def save_every_time(folder, config):  # each save differs from the one before (the first from `saved`)
        memtune.save(models[0], saved)
        models.reverse()
        return read_weights(folder, config)

    monkeypatch.setattr(io, "_read_weights", save_every_time)
    model, inputs = tiny_model("bert"), batch("bert")
    ref = logits(model, inputs)
    with pytest.raises(memtune.CheckpointError, match="replaced 5 times while being read.*load it once those saves are done"):
        memtune.load(model, saved)
    assert_untouched(model, ref, inputs)


def test_a_read_only_checkpoint_loads(saved):
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not bind root, so a read-only folder cannot be made")
    files = list(saved.iterdir())
    try:
        for f in files:
            f.chmod(0o444)
        saved.chmod(0o555)
        memtune.load(tiny_model("bert"), saved)
    finally:
        saved.chmod(0o755)
        for f in files:
            f.chmod(0o644)


def test_loading_takes_no_lock_and_writes_nothing(saved, monkeypatch):
    """(Root ignores file permissions: this is the part of the read-only test that holds for root too.)"""
    import memtune.io as io

    def refuse(*args, **kwargs):
        raise AssertionError("load tried to write")

    before = sorted((p.name, p.stat().st_mtime_ns) for p in saved.iterdir())
    monkeypatch.setattr(io, "_save_lock", refuse)
    monkeypatch.setattr(io, "atomic_write", refuse)
    memtune.load(tiny_model("bert"), saved)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in saved.iterdir()) == before


# --- temporaries of killed writers ---------------------------------------------------------------------------

def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_atomic_write_removes_the_temporaries_of_dead_writers(tmp_path):
    from memtune.io import _host, atomic_write

    host, dead = _host(), dead_pid()
    stale = tmp_path / f".table.md.{host}.{dead}.0badc0de.tmp"
    kept = [
        tmp_path / f".table.md.{host}.{os.getpid()}.1234abcd.tmp",  # a live writer's (this process)
        tmp_path / f".table.md.otherhost.{dead}.1234abcd.tmp",  # another machine's: its pids mean nothing here
        tmp_path / f".table.csv.{host}.{dead}.1234abcd.tmp",  # another file's: swept by that file's next write
        tmp_path / ".table.md.k2j3h4g5.tmp",  # the old naming (mkstemp): no owner to check
    ]
    for f in [stale, *kept]:
        f.write_bytes(b"half a table")
    atomic_write(tmp_path / "table.md", b"| a |\n")
    assert (tmp_path / "table.md").read_bytes() == b"| a |\n"
    assert not stale.exists() and all(f.exists() for f in kept)


def test_a_writer_killed_mid_save_leaves_a_temporary_the_next_save_removes(saved):
    script = (
        "import os, sys; from pathlib import Path; import memtune.io as io\n"
        "os.replace = lambda *args: os._exit(9)  # killed after writing, before the rename\n"
        "io.atomic_write(Path(sys.argv[1]) / io.CONFIG_FILE, b'{}')\n"
    )
    path = os.pathsep.join([str(Path(memtune.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", script, str(saved)], env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 9
    assert len(list(saved.glob(f".{CONFIG_FILE}.*.tmp"))) == 1
    memtune.load(tiny_model("bert"), saved)  # the leftover does not disturb a load
    memtune.save(trained("bert"), saved)
    assert not list(saved.glob("*.tmp"))


# --- damaged or lenient configs ------------------------------------------------------------------------------

def method(config, key):
    return config["methods"][config["method_keys"].index(key)]


DAMAGED_CONFIGS = {
    "weights-not-an-object": (lambda c: c.update(weights="memtune_weights.safetensors"), r"'weights' must be an object"),
    "weights-file-not-a-string": (lambda c: c["weights"].update(file=7), r"'weights\.file' must be the name of a file"),
    "weights-sha-not-a-string": (lambda c: c["weights"].update(sha256=None), r"'weights\.sha256' must be 64"),
    "weights-file-too-long": (lambda c: c["weights"].update(file="memtune_weights-" + "a" * 300 + ".safetensors"),
                              r"'weights\.file' must be the name of a file in the checkpoint folder"),
    "weights-file-escapes": (lambda c: c["weights"].update(file="../" + c["weights"]["file"]), r"'weights\.file' must"),
    "weights-file-absolute": (lambda c: c["weights"].update(file="/etc/passwd"), r"'weights\.file' must"),
    "weights-bytes-text": (lambda c: c["weights"].update(bytes="many"), r"'weights\.bytes' must be a byte count"),
    "base-model-not-an-object": (lambda c: c.update(base_model=["bert"]), r"'base_model' must be an object"),
    "base-model-empty": (lambda c: c.update(base_model={}), r"base_model lacks \['model_type', .*'fingerprint'\].*check_base=False"),
    "base-model-no-fingerprint": (lambda c: c["base_model"].pop("fingerprint"), r"base_model lacks \['fingerprint'\]"),
    "methods-not-a-list": (lambda c: c.update(methods=c["methods"][0]), r"'methods' must be a non-empty array"),
    "methods-empty": (lambda c: c.update(methods=[], method_keys=[]), r"'methods' must be a non-empty array"),
    "method-not-an-object": (lambda c: c["methods"].__setitem__(0, "prefix"), r"'methods' must be a non-empty array of method configs"),
    "method-keys-not-a-list": (lambda c: c.update(method_keys="prefix,memory"), r"'method_keys' must be an array of 2 names"),
    "method-keys-shorter": (lambda c: c.update(method_keys=["prefix"]), r"'method_keys' must be an array of 2 names"),
    "method-keys-renamed": (lambda c: c.update(method_keys=["prefix", "mem"]), r"tensors of no method in the config \(methods\.memory\."),
    "method-keys-swapped": (lambda c: c.update(method_keys=["memory", "prefix"]), r"names its methods \['memory', 'prefix'\] but they attach as \['prefix', 'memory'\]"),
    "format-version-true": (lambda c: c.update(format_version=True), r"format_version must be an integer >= 1, got True"),
    "format-version-0": (lambda c: c.update(format_version=0), r"format_version must be an integer >= 1, got 0"),
    "format-version-negative": (lambda c: c.update(format_version=-1), r"format_version must be an integer >= 1, got -1"),
    "format-version-text": (lambda c: c.update(format_version="1"), r"format_version must be an integer >= 1, got '1'"),
    "format-version-float": (lambda c: c.update(format_version=1.0), r"format_version must be an integer >= 1, got 1\.0"),
    "format-version-missing": (lambda c: c.pop("format_version"), r"format_version must be an integer >= 1, got None"),
    "recipe-a-number": (lambda c: c.update(recipe=5), r"'recipe' must be a recipe name or null, got 5"),
    "budget-text": (lambda c: c.update(budget="8"), r"'budget' must be a non-negative integer or null, got '8'"),
    "budget-negative": (lambda c: c.update(budget=-8), r"'budget' must be a non-negative integer"),
    "budget-bool": (lambda c: c.update(budget=True), r"'budget' must be a non-negative integer"),
    "train-head-text": (lambda c: c.update(train_head="yes"), r"'train_head' must be true, false or null, got 'yes'"),
    "train-head-number": (lambda c: c.update(train_head=1), r"'train_head' must be true, false or null, got 1"),
    "num-slots-huge": (lambda c: method(c, "memory").update(num_slots=10**12), r"num_slots|would add [\d,]+ parameters"),
    "num-slots-beyond-int64": (lambda c: method(c, "memory").update(num_slots=2**70), r"num_slots"),
    "method-field-unknown": (lambda c: method(c, "memory").update(slots=4), r"invalid method config.*no field\(s\) \['slots'\]"),
    "method-layer-missing": (lambda c: method(c, "memory").update(layers=[7]), r"cannot be attached.*layers \[7\] do not exist"),
}


@pytest.mark.parametrize("damage", DAMAGED_CONFIGS, ids=list(DAMAGED_CONFIGS))
def test_damaged_or_lenient_configs_are_refused(saved, damage):
    change, pattern = DAMAGED_CONFIGS[damage]
    config = json.loads((saved / CONFIG_FILE).read_text())
    change(config)
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    model, inputs = tiny_model("bert"), batch("bert")
    ref = logits(model, inputs)
    with pytest.raises(memtune.CheckpointError, match=pattern):
        memtune.load(model, saved)
    assert_untouched(model, ref, inputs)


@pytest.mark.parametrize("text, pattern", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"format_version": 1, "methods": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"format_version": ' + "9" * 5000 + "}", r"not valid JSON: Exceeds the limit"),
    ("[1, 2]", "format_version must be an integer >= 1, got None"),
    ("\udcff", r"not UTF-8 text"),
], ids=["deep-array", "deep-entry", "huge-integer", "not-an-object", "not-utf8"])
def test_unreadable_config_text_is_refused(saved, text, pattern):
    (saved / CONFIG_FILE).write_bytes(text.encode("utf-8", "surrogateescape"))
    model, inputs = tiny_model("bert"), batch("bert")
    ref = logits(model, inputs)
    with pytest.raises(memtune.CheckpointError, match=pattern):
        memtune.load(model, saved)
    assert_untouched(model, ref, inputs)


def test_base_model_identity_is_only_required_when_checked(saved):
    config = json.loads((saved / CONFIG_FILE).read_text())
    (saved / CONFIG_FILE).write_text(json.dumps({**config, "base_model": {}}))
    assert list(memtune.load(tiny_model("bert"), saved, check_base=False).memtune.methods) == ["prefix", "memory"]


DAMAGED_TENSORS = {
    "int-tensor": (lambda t: t.update({"head.classifier.bias": t["head.classifier.bias"].to(torch.int64)}),
                   r"must be floating point; head\.classifier\.bias \(torch\.int64\) are not"),
    "bool-tensor": (lambda t: t.update({"methods.memory.blocks.1.memory": t["methods.memory.blocks.1.memory"] > 0}),
                    r"methods\.memory\.blocks\.1\.memory \(torch\.bool\)"),
    "unknown-method-key": (lambda t: t.update({"methods.ghost.memory": torch.zeros(2)}),
                           r"tensors of no method in the config \(methods\.ghost\.memory; methods: \['memory', 'prefix'\]\)"),
    "unknown-section": (lambda t: t.update({"extras.note": torch.zeros(2)}), r"tensors of no method in the config \(extras\.note"),
    "method-key-without-name": (lambda t: t.update({"methods.memory": torch.zeros(2)}),
                                r"tensors of no method in the config \(methods\.memory;"),
    "method-tensor-missing": (lambda t: t.pop("methods.memory.blocks.0.memory"),
                              r"'memory' method's tensors do not match its config \(missing methods\.memory\.blocks\.0\.memory\)"),
    "method-tensor-unexpected": (lambda t: t.update({"methods.memory.blocks.9.memory": torch.zeros(2)}),
                                 r"\(unexpected methods\.memory\.blocks\.9\.memory\)"),
    "method-tensor-wrong-shape": (lambda t: t.update({"methods.memory.blocks.0.memory": torch.zeros(3, 3)}),
                                  r"the 'memory' tensors do not fit this model"),
    "head-tensor-missing": (lambda t: t.pop("head.classifier.bias"), r"head/backbone tensors do not match.*missing \['head\.classifier\.bias'\]"),
}


@pytest.mark.parametrize("damage", DAMAGED_TENSORS, ids=list(DAMAGED_TENSORS))
def test_stored_tensors_that_do_not_match_the_config_are_refused(saved, damage):
    change, pattern = DAMAGED_TENSORS[damage]
    rewrite_weights(saved, change)
    model, inputs = tiny_model("bert"), batch("bert")
    ref = logits(model, inputs)
    with pytest.raises(memtune.CheckpointError, match=pattern):
        memtune.load(model, saved)
    assert_untouched(model, ref, inputs)


def test_over_long_paths_are_checkpoint_errors(tmp_path):
    model, inputs = tiny_model("bert"), batch("bert")
    ref = logits(model, inputs)
    with pytest.raises(memtune.CheckpointError, match="cannot read .*File name too long"):
        memtune.load(model, tmp_path / ("x" * 300))
    assert_untouched(model, ref, inputs)


@pytest.mark.parametrize("check_base", [True, False])
def test_an_arch_that_misses_a_module_stays_an_architecture_error(saved, check_base):
    spec = memtune.ArchSpec(layers="encoder.layer", ffn_output="output.nonexistent", self_attention="attention.self",
                            ffn_input="intermediate", query_proj="query", value_proj="value")
    model, inputs = tiny_model("bert"), batch("bert")
    ref = logits(model, inputs)
    with pytest.raises(memtune.ArchitectureError, match="'output.nonexistent' \\(the FFN output\\)"):  # the arch's fault
        memtune.load(model, saved, arch=spec, check_base=check_base)
    assert_untouched(model, ref, inputs)


def test_a_save_that_cannot_write_is_a_checkpoint_error_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import memtune.io as io

    model = tiny_model("bert")
    memtune.attach(model, memtune.MemoryConfig(num_slots=4))
    memtune.save(model, tmp_path / "ck")

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "atomic_write", disk_full)
    with torch.no_grad():
        next(p for p in memtune.tuning.method_parameters(model)).add_(1.0)
    with pytest.raises(memtune.errors.CheckpointError, match=r"cannot write the checkpoint to .*ck \(No space left on device\); a checkpoint already there is still loadable"):
        memtune.save(model, tmp_path / "ck")
    monkeypatch.undo()
    memtune.load(tiny_model("bert"), tmp_path / "ck")

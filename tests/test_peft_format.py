"""peft's adapter format: memtune -> peft folder -> PeftModel.from_pretrained, and peft folder -> memtune.load.

Where peft's own prefix-tuned model cannot run on the installed transformers, the comparisons with it skip
(``_peft_or_skip``); loading a peft prefix into memtune is checked against a prefix computed by hand instead.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from peft import IA3Config, PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from peft import LoraConfig as PeftLoraConfig
from safetensors.torch import load_file

import memtune
from memtune.errors import CheckpointError, ConfigError, MemtuneError
from memtune.tuning import method_parameters

from conftest import batch, logits, tiny_model
from test_baselines import _peft_or_skip

TASKS = {"seq": TaskType.SEQ_CLS, "token": TaskType.TOKEN_CLS, "lm": TaskType.CAUSAL_LM}


def _randomise(model, std=0.3):
    """Random method tensors (LoRA's B starts at zero: an exported no-op would prove nothing)."""
    with torch.no_grad():
        for p in method_parameters(model):
            p.normal_(0, std)


def _peft_load(base, folder):
    """PeftModel.from_pretrained, failing on any missing or unexpected adapter key peft warns about."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, str(folder))
    bad = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    assert not bad, bad
    return model.eval()


def _close(got, expected, mask=None):
    keep = mask.bool() if mask is not None and got.dim() == 3 else slice(None)
    torch.testing.assert_close(got[keep], expected[keep], rtol=1e-5, atol=1e-5)


def _state(model):
    return {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}


def _untouched(model, before):
    assert not hasattr(model, "memtune") and not hasattr(model, "peft_config")
    after = _state(model)
    assert after.keys() == before.keys()
    for n, (p, grad) in before.items():
        assert torch.equal(after[n][0], p) and after[n][1] == grad, n


# --- memtune -> peft ---------------------------------------------------------------------------------

LORA_CASES = [
    ("bert", "seq", memtune.LoraConfig(rank=4, scaling=2.0)),
    ("gpt2", "lm", memtune.LoraConfig(rank=4, scaling=0.5, layers=[0, 2])),
    ("llama", "lm", memtune.LoraConfig(rank=2, targets=["query", "key", "value"], dropout=0.1)),
]


@pytest.mark.parametrize("arch,head,config", LORA_CASES, ids=[c[0] for c in LORA_CASES])
def test_lora_exports_to_a_folder_peft_loads_with_the_same_outputs(arch, head, config, tmp_path):
    base_logits = logits(tiny_model(arch, head), batch(arch))
    ours = memtune.attach(tiny_model(arch, head), config)
    _randomise(ours)
    inputs = batch(arch)
    expected = logits(ours, inputs)
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # the LoRA acts

    memtune.export_peft(ours, tmp_path / "peft")
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["task_type"] == TASKS[head].value
    assert (saved["r"], saved["lora_alpha"], saved["lora_dropout"]) == (config.rank, config.scaling * config.rank, config.dropout)
    assert saved["fan_in_fan_out"] == (arch == "gpt2")  # GPT-2's fused c_attn is a Conv1D
    assert saved["layers_to_transform"] == config.layers
    assert saved["target_modules"] == {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["k_proj", "q_proj", "v_proj"]}[arch]

    theirs = _peft_load(tiny_model(arch, head), tmp_path / "peft")
    _close(logits(theirs, inputs), expected)


def test_several_lora_configs_export_as_one_adapter_with_rank_and_alpha_patterns(tmp_path):
    configs = [memtune.LoraConfig(rank=4, layers=[0]), memtune.LoraConfig(rank=2, scaling=3.0, layers=[1, 2], targets=["value"])]
    ours = memtune.attach(tiny_model("bert"), configs)
    _randomise(ours)
    memtune.export_peft(ours, tmp_path / "peft")
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert len(saved["target_modules"]) == 4 and set(saved["rank_pattern"].values()) == {2}
    inputs = batch("bert", pad="right")
    _close(logits(_peft_load(tiny_model("bert"), tmp_path / "peft"), inputs), logits(ours, inputs))
    back = memtune.load(tiny_model("bert"), tmp_path / "peft")  # and back: the same two memtune configs
    assert [m.config for m in memtune.methods_of(back).values()] == configs
    _close(logits(back, inputs), logits(ours, inputs))


PREFIX_CASES = [("bert", "seq"), ("gpt2", "lm"), ("llama", "lm")]


def _memtune_prefix(arch, head, length=4, reparameterize=False):
    """A shifted memtune prefix with random tensors, and a randomised (as if trained) head."""
    config = memtune.PrefixConfig(prefix_length=length, reparameterize=reparameterize, shift_positions=True)
    model = memtune.attach(tiny_model(arch, head), config, train_head=head != "lm")
    _randomise(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in model.memtune.head_names:
            params[name].normal_(0, 1.0)
    return model


@pytest.mark.parametrize("reparameterize", [False, True], ids=["stored", "reparameterized"])
@pytest.mark.parametrize("arch,head", PREFIX_CASES, ids=[c[0] for c in PREFIX_CASES])
def test_shifted_prefix_exports_as_peft_prefix_tuning(arch, head, reparameterize, tmp_path):
    """peft's config and its prompt encoder's weights, as PeftModel.from_pretrained loads them (no peft forward)."""
    length = 4
    ours = _memtune_prefix(arch, head, length, reparameterize)
    memtune.export_peft(ours, tmp_path / "peft")
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PREFIX_TUNING" and saved["task_type"] == TASKS[head].value
    assert (saved["num_virtual_tokens"], saved["prefix_projection"], saved["num_layers"]) == (length, False, 3)
    assert (saved["token_dim"], saved["num_attention_heads"]) == ((16, 2) if arch == "llama" else (32, 4))  # key/value width

    theirs = _peft_load(tiny_model(arch, head), tmp_path / "peft")
    with torch.no_grad():
        stored = memtune.methods_of(ours)["prefix"].full_prefix()  # (L, l, 2 d_kv)
        torch.testing.assert_close(theirs.prompt_encoder["default"].embedding.weight, stored.permute(1, 0, 2).reshape(length, -1))


@pytest.mark.parametrize("arch,head", PREFIX_CASES, ids=[c[0] for c in PREFIX_CASES])
def test_an_exported_prefix_runs_in_peft_with_the_same_outputs(arch, head, tmp_path):
    ours = _memtune_prefix(arch, head)
    memtune.export_peft(ours, tmp_path / "peft")
    theirs = _peft_load(tiny_model(arch, head), tmp_path / "peft")
    inputs = batch(arch, pad="right")
    expected = _peft_or_skip(lambda: logits(theirs, inputs))
    _close(logits(ours, inputs), expected, inputs["attention_mask"])


@pytest.mark.parametrize("arch,head,method", [
    ("bert", "seq", "lora"), ("bert", "token", "lora"), ("llama", "seq", "lora"), ("llama", "lm", "lora"), ("bert", "seq", "prefix"),
])
def test_a_trained_head_survives_the_export(arch, head, method, tmp_path):
    """Classification heads go into peft's modules_to_save (as does an LM head memtune was told to train)."""
    config = memtune.LoraConfig(rank=2) if method == "lora" else memtune.PrefixConfig(prefix_length=3, shift_positions=True)
    ours = memtune.attach(tiny_model(arch, head), config, train_head=True)
    _randomise(ours)
    head_names = ours.memtune.head_names
    assert head_names
    params = dict(ours.named_parameters())
    with torch.no_grad():
        for name in head_names:
            params[name].normal_(0, 1.0)  # as if trained: a fresh base model's head differs
    memtune.export_peft(ours, tmp_path / "peft")
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert saved["modules_to_save"] == [{"bert": "classifier", "llama": "score" if head == "seq" else "lm_head"}[arch]]
    keys = load_file(tmp_path / "peft" / "adapter_model.safetensors").keys()
    assert {("base_model.model." if method == "lora" else "base_model.") + n for n in head_names} <= set(keys)

    theirs = _peft_load(tiny_model(arch, head), tmp_path / "peft")
    loaded = dict(theirs.named_parameters())
    for name in head_names:  # peft's wrapper holds the trained head
        module, _, leaf = name.rpartition(".")
        wrapped = [k for k in loaded if k.endswith(f"{module}.modules_to_save.default.{leaf}")]
        assert len(wrapped) == 1 and torch.equal(loaded[wrapped[0]], params[name]), name
    if method == "lora":  # a prefix-tuned PeftModel is run by the test above, where peft can run it
        inputs = batch(arch)
        _close(logits(ours, inputs), logits(theirs, inputs))


# --- peft -> memtune ---------------------------------------------------------------------------------

PEFT_LORA_CASES = [
    ("bert", "seq", dict(r=4, lora_alpha=16, target_modules=["query", "value"], layers_to_transform=[1, 2])),
    ("gpt2", "lm", dict(r=2, lora_alpha=3, target_modules=["c_attn"], fan_in_fan_out=True)),
    ("llama", "lm", dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj"], use_rslora=True,
                         rank_pattern={"model.layers.0.self_attn.q_proj": 2, "model.layers.0.self_attn.k_proj": 2})),
]


@pytest.mark.parametrize("arch,head,options", PEFT_LORA_CASES, ids=[c[0] for c in PEFT_LORA_CASES])
def test_a_peft_lora_folder_loads_into_memtune(arch, head, options, tmp_path):
    theirs = get_peft_model(tiny_model(arch, head), PeftLoraConfig(task_type=TASKS[head], **options)).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.normal_(0, 0.3)  # LoRA's B and the (saved) classification head, as if trained
    theirs.save_pretrained(tmp_path / "peft")
    inputs = batch(arch, pad="right")
    expected = logits(theirs, inputs)
    assert not torch.allclose(expected, logits(tiny_model(arch, head), inputs), atol=1e-4)

    ours = memtune.load(tiny_model(arch, head), tmp_path / "peft")  # memtune.load delegates to load_peft
    _close(logits(ours, inputs), expected)
    configs = [m.config for m in memtune.methods_of(ours).values()]
    assert all(isinstance(c, memtune.LoraConfig) for c in configs)
    if arch == "bert":
        assert configs == [memtune.LoraConfig(rank=4, scaling=4.0, layers=[1, 2])]
        assert ours.memtune.head_names == ["classifier.weight", "classifier.bias"]
    if arch == "llama":  # rsLoRA: alpha / sqrt(r); the rank pattern makes layer 0 its own config
        assert sorted((c.rank, c.scaling, tuple(c.layers or ())) for c in configs) == [(2, 8 / 2**0.5, (0,)), (4, 4.0, (1, 2))]


def _peft_prefix_folder(arch, head, projection, folder, length=4):
    """A peft prefix-tuned model (random prefix and head), saved with save_pretrained; returns it, the prefix
    its prompt encoder computes (by hand: a tanh MLP when prefix_projection=True), and its head tensors."""
    config = PrefixTuningConfig(task_type=TASKS[head], num_virtual_tokens=length, prefix_projection=projection, encoder_hidden_size=24)
    theirs = get_peft_model(tiny_model(arch, head), config).eval()
    encoder = theirs.prompt_encoder["default"]
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "modules_to_save" in name:
                p.normal_(0, 1.0)
        heads = {n.replace("modules_to_save.default.", "").removeprefix("base_model."): p.detach().clone()
                 for n, p in theirs.named_parameters() if "modules_to_save" in n}
        flat = encoder.embedding.weight  # (l, L * 2 d_kv), or with a projection the (l, d_kv) embeddings it reads
        if projection:
            first, second = encoder.transform[0], encoder.transform[2]
            flat = F.linear(torch.tanh(F.linear(flat, first.weight, first.bias)), second.weight, second.bias)
    theirs.save_pretrained(folder)
    return theirs, flat.detach().clone(), heads


@pytest.mark.parametrize("projection", [False, True], ids=["stored", "prefix_projection"])
@pytest.mark.parametrize("arch,head", PREFIX_CASES, ids=[c[0] for c in PREFIX_CASES])
def test_a_peft_prefix_folder_loads_into_memtune(arch, head, projection, tmp_path):
    """Checked without running peft's prefix: memtune.load equals memtune's own shifted prefix holding what
    peft's prompt encoder computes, with peft's head."""
    length = 4
    _, flat, heads = _peft_prefix_folder(arch, head, projection, tmp_path / "peft", length)
    assert bool(heads) == (head == "seq")
    reference = memtune.attach(tiny_model(arch, head), memtune.PrefixConfig(prefix_length=length, reparameterize=False, shift_positions=True))
    with torch.no_grad():
        memtune.methods_of(reference)["prefix"].prefix.copy_(flat.view(length, 3, -1).permute(1, 0, 2))
        params = dict(reference.named_parameters())
        for name, tensor in heads.items():
            params[name].copy_(tensor)

    ours = memtune.load(tiny_model(arch, head), tmp_path / "peft")
    assert [m.config for m in memtune.methods_of(ours).values()] == [
        memtune.PrefixConfig(prefix_length=length, reparameterize=False, shift_positions=True)
    ]
    inputs = batch(arch, pad="right")
    got = logits(ours, inputs)
    _close(got, logits(reference, inputs), inputs["attention_mask"])
    assert not torch.allclose(got, logits(tiny_model(arch, head), inputs), atol=1e-4)


@pytest.mark.parametrize("arch,head", PREFIX_CASES, ids=[c[0] for c in PREFIX_CASES])
def test_a_peft_prefix_folder_in_memtune_equals_peft_running_it(arch, head, tmp_path):
    theirs, _, _ = _peft_prefix_folder(arch, head, True, tmp_path / "peft")
    ours = memtune.load(tiny_model(arch, head), tmp_path / "peft")
    inputs = batch(arch, pad="right")
    expected = _peft_or_skip(lambda: logits(theirs, inputs))
    _close(logits(ours, inputs), expected, inputs["attention_mask"])


# --- refusals ----------------------------------------------------------------------------------------

EXPORT_REFUSALS = [
    ("mt-f", memtune.MemoryConfig(slot_dim=4), MemtuneError, r"memory \(memory\): MT-F memory blocks: peft has no memory-tuning"),
    ("adapter", memtune.AdapterConfig(bottleneck=4), MemtuneError, r"adapter \(adapter\): bottleneck adapters: peft has no bottleneck"),
    ("prefix-unshifted", memtune.PrefixConfig(prefix_length=3), ConfigError, r"prefix \(prefix\): shift_positions=False.*PrefixConfig\(shift_positions=True\)"),
    ("unipelt", memtune.recipe("unipelt", budget=8), MemtuneError,
     r"prefix \(prefix\): gated \(UniPELT\): peft has no learned gates; shift_positions=False.*\n- adapter \(adapter\): bottleneck.*\n- lora \(lora\): gated \(UniPELT\)"),
    ("bitfit", memtune.BitFitConfig(), MemtuneError, "peft has no BitFit"),
    ("full", memtune.FullConfig(), MemtuneError, "save the whole model with save_pretrained"),
    ("gated-lora", memtune.LoraConfig(gate=True), ConfigError, r"lora \(lora\): gated \(UniPELT\): peft has no learned gates"),
    ("lora+prefix", [memtune.LoraConfig(), memtune.PrefixConfig(shift_positions=True)], MemtuneError, "cannot combine LoRA and prefix"),
    ("prefix-layers", memtune.PrefixConfig(shift_positions=True, layers=[1]), ConfigError, "peft's prefix covers every layer"),
]


@pytest.mark.parametrize("name,config,error,message", EXPORT_REFUSALS, ids=[c[0] for c in EXPORT_REFUSALS])
def test_export_refuses_what_peft_cannot_represent_and_writes_nothing(name, config, error, message, tmp_path):
    model = memtune.attach(tiny_model("bert"), config)
    with pytest.raises(error, match=message):
        memtune.export_peft(model, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_export_refuses_a_folder_holding_a_memtune_checkpoint(tmp_path):
    model = memtune.attach(tiny_model("bert"), memtune.LoraConfig(rank=2))
    memtune.save(model, tmp_path / "ckpt")
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    with pytest.raises(CheckpointError, match="memtune.load would read"):
        memtune.export_peft(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before


def _peft_folder(path, config, arch="bert", head="seq"):
    get_peft_model(tiny_model(arch, head), config).save_pretrained(path)
    return path


LOAD_REFUSALS = [
    ("ia3", "PREFIX_TUNING adapters only"),
    ("dense", "not query/key/value projections"),
    ("dora", "DoRA"),
    ("no-weights", "adapter_model.safetensors is missing"),
    ("no-config", "adapter_config.json is missing"),
    ("other-model", r"made for another model: num_layers 4 \(model: 3\)"),
    ("missing-tensor", r"layer\.2\.attention\.self\.value\.lora_B\.weight is missing"),  # found after attach: detached again
]


@pytest.mark.parametrize("case,message", LOAD_REFUSALS, ids=[c[0] for c in LOAD_REFUSALS])
def test_load_peft_refuses_what_memtune_cannot_represent_and_leaves_the_model_untouched(case, message, tmp_path):
    folder = tmp_path / "peft"
    if case == "ia3":
        _peft_folder(folder, IA3Config(task_type=TaskType.SEQ_CLS, target_modules=["key", "value"], feedforward_modules=[]))
    elif case == "dense":
        _peft_folder(folder, PeftLoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query", "dense"]))
    elif case == "dora":
        _peft_folder(folder, PeftLoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query"], use_dora=True))
    elif case == "no-weights":
        (_peft_folder(folder, PeftLoraConfig(task_type=TaskType.SEQ_CLS, r=2)) / "adapter_model.safetensors").unlink()
    elif case == "no-config":
        folder.mkdir()
    elif case == "missing-tensor":
        from safetensors.torch import save_file

        _peft_folder(folder, PeftLoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query", "value"]))
        tensors = load_file(folder / "adapter_model.safetensors")
        del tensors["base_model.model.bert.encoder.layer.2.attention.self.value.lora_B.weight"]
        save_file(tensors, folder / "adapter_model.safetensors")
    else:  # a prefix saved from a model with more layers
        _peft_folder(folder, PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=3))
        saved = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**saved, "num_layers": 4}))
        from safetensors.torch import save_file

        save_file({"prompt_embeddings": torch.zeros(3, 4 * 2 * 32)}, folder / "adapter_model.safetensors")
    model = tiny_model("bert")
    before = _state(model)
    with pytest.raises(CheckpointError, match=message):
        memtune.load_peft(model, folder)
    _untouched(model, before)


def test_load_peft_refuses_a_head_of_another_shape(tmp_path):
    folder = _peft_folder(tmp_path / "peft", PeftLoraConfig(task_type=TaskType.SEQ_CLS, r=2))  # classifier: 3 labels
    model = tiny_model("bert", "token")  # classifier: 5 labels
    before = _state(model)
    with pytest.raises(CheckpointError, match="different num_labels"):
        memtune.load(model, folder)
    _untouched(model, before)

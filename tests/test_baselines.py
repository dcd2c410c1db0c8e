"""Baselines (full fine-tuning, BitFit, adapters, LoRA, MAM, UniPELT) in the same API as memory-tuning.

A matrix of architectures x recipes checks attach/train/save/load/detach; reference tests compare each
method with an independent computation (explicit formulas, peft's own PeftModel).
"""
from __future__ import annotations

import copy

import peft
import pytest
import torch
import transformers
from peft import LoraConfig as PeftLoraConfig
from peft import PrefixTuningConfig, TaskType, get_peft_model

import memtune
from memtune.errors import ArchitectureError, ConfigError, MemtuneError
from memtune.compat import enable_activation_checkpointing
from memtune.tuning import backbone_named_parameters, method_parameters

from conftest import ARCHS, ENCODERS, batch, logits, tiny_model

RECIPES = ["ft", "bitfit", "adapter", "lora", "prefix", "mam", "unipelt", "mt-f", "mt-mf"]
NO_OP = {"ft", "bitfit", "adapter", "lora", "mt-f"}  # exact no-ops at attach (prefixes are not, by design)


def _applies(arch: str, name: str) -> bool:
    return not (arch == "llama" and name == "bitfit")  # Llama has no biases


MATRIX = [(a, r) for a in ARCHS for r in RECIPES if _applies(a, r)]


def _loss(model, inputs):
    out = model(**inputs)
    return out.logits.float().pow(2).mean()


def _train_step(model, inputs, lr=0.05):
    """One SGD step on every trainable parameter, big enough to move all of them."""
    model.train()
    _loss(model, inputs).backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(torch.randn_like(p) * lr)  # random, so zero-initialised parts move too
                p.grad = None
    model.eval()


@pytest.mark.parametrize("arch,name", MATRIX)
def test_attach_is_a_no_op_where_the_method_says_so(arch, name):
    model = tiny_model(arch)
    inputs = batch(arch, pad="right" if arch in ENCODERS else "left")
    before = logits(model, inputs)
    memtune.attach(model, memtune.recipe(name, budget=8))
    after = logits(model, inputs)
    if name in NO_OP:
        torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    else:
        assert not torch.allclose(after, before, atol=1e-6)  # a prefix changes attention from the start


@pytest.mark.parametrize("arch,name", MATRIX)
def test_only_the_methods_parameters_and_the_head_get_gradients(arch, name):
    model = tiny_model(arch)
    memtune.attach(model, memtune.recipe(name, budget=8))
    state = model.memtune
    trained = {id(p) for p in method_parameters(model)}
    params = dict(model.named_parameters())
    trained |= {id(params[n]) for names in state.backbone_names.values() for n in names}
    trained |= {id(params[n]) for n in state.head_names}
    assert {id(p) for p in model.parameters() if p.requires_grad} == trained
    model.train()
    _loss(model, batch(arch)).backward()
    for n, p in model.named_parameters():
        if id(p) not in trained:
            assert p.grad is None, n
    for key, method in state.methods.items():  # every method takes part in the forward
        own = [p for _, p in method.own_parameters()] + [params[n] for n in state.backbone_names[key]]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in own), key


@pytest.mark.parametrize("arch,name", MATRIX)
def test_train_save_load_detach_round_trip(arch, name, tmp_path):
    model = tiny_model(arch)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = batch(arch, pad="right" if arch in ENCODERS else "left")
    before = logits(model, inputs)
    memtune.attach(model, memtune.recipe(name, budget=8))
    _train_step(model, inputs)
    trained = logits(model, inputs)
    assert not torch.allclose(trained, before, atol=1e-6)
    memtune.save(model, tmp_path / "ckpt")

    fresh = memtune.load(tiny_model(arch), tmp_path / "ckpt")
    torch.testing.assert_close(logits(fresh, inputs), trained, rtol=1e-5, atol=1e-5)
    assert memtune.parameter_report(fresh)["stored"] == memtune.parameter_report(model)["stored"]

    memtune.detach(model)
    torch.testing.assert_close(logits(model, inputs), before, rtol=0, atol=0)
    assert {n: p for n, p in model.named_parameters()}.keys() == original.keys()
    for n, p in model.named_parameters():
        assert torch.equal(p, original[n]), n


def test_recipe_shift_prefix_positions_sets_only_prefixes():
    for name in ("prefix", "mam", "mt-mf", "unipelt"):
        configs = memtune.recipe(name, shift_prefix_positions=True).configs
        assert [c.shift_positions for c in configs if isinstance(c, memtune.PrefixConfig)] == [True]
    assert all(not c.shift_positions for c in memtune.recipe("mt-mf").configs if isinstance(c, memtune.PrefixConfig))
    assert memtune.recipe("lora", shift_prefix_positions=True).configs == memtune.recipe("lora").configs


def test_recipes_scale_with_the_budget():
    def fields(name, budget):
        return [(c.method, {k: v for k, v in c.to_dict().items() if k in ("prefix_length", "bottleneck", "rank", "slot_dim")})
                for c in memtune.recipe(name, budget).configs]

    assert fields("adapter", 32) == [("adapter", {"bottleneck": 32})]
    assert fields("lora", 32) == [("lora", {"rank": 16})]
    assert fields("prefix", 32) == [("prefix", {"prefix_length": 32})]
    assert fields("mam", 32) == [("prefix", {"prefix_length": 16}), ("adapter", {"bottleneck": 16})]
    assert fields("mam", 8) == [("prefix", {"prefix_length": 4}), ("adapter", {"bottleneck": 4})]
    assert fields("mam", 128) == [("prefix", {"prefix_length": 8}), ("adapter", {"bottleneck": 128})]  # paper Sec. IV-D
    assert fields("unipelt", 32) == [("prefix", {"prefix_length": 10}), ("adapter", {"bottleneck": 16}), ("lora", {"rank": 8})]
    assert fields("unipelt", 64) == [("prefix", {"prefix_length": 20}), ("adapter", {"bottleneck": 32}), ("lora", {"rank": 16})]
    assert fields("mt-mf", 32) == [("prefix", {"prefix_length": 16}), ("memory", {"slot_dim": 16})]
    mam = memtune.recipe("mam").configs[1]
    assert (mam.placement, mam.scale) == ("parallel", 4.0)
    assert memtune.recipe("ft").learning_rate == 2e-5 and memtune.recipe("mt-mf").learning_rate == 1e-4
    with pytest.raises(ConfigError, match="budget must be a positive integer"):
        memtune.recipe("lora", 0)
    with pytest.raises(ConfigError, match="lora's rank is budget / 2, so it needs budget >= 2"):
        memtune.recipe("lora", 1)


# --- reference tests: each method against an independent computation --------------------------------


def _bert_layer_reference(layer, x, adapter_delta):
    """One BERT layer by hand: attention, then LN(dense(act(intermediate)) + adapter + attention output)."""
    attention = layer.attention(x)[0]  # (B, T, d): the FFN's input
    h = layer.output.dense(layer.intermediate(attention))  # the FFN output H (dropout off)
    return layer.output.LayerNorm(h + adapter_delta(h, attention) + attention)


def _random_adapter(model):
    with torch.no_grad():
        for block in memtune.methods_of(model)["adapter"].blocks.values():
            for p in block.parameters():
                p.normal_(0, 0.3)
    return memtune.methods_of(model)["adapter"].blocks["1"]


@pytest.mark.parametrize("placement,scale", [("sequential", 1.0), ("parallel", 4.0)])
def test_adapter_equals_equation_4_on_a_bert_layer(placement, scale):
    model = tiny_model("bert")
    memtune.attach(model, memtune.AdapterConfig(bottleneck=6, placement=placement, scale=scale))
    block = _random_adapter(model)
    layer = model.bert.encoder.layer[1]
    x = torch.randn(2, 5, 32)

    def delta(h, ffn_input):
        source = h if placement == "sequential" else ffn_input
        return scale * (torch.relu(source @ block.down.weight.T + block.down.bias) @ block.up.weight.T + block.up.bias)

    with torch.no_grad():
        torch.testing.assert_close(layer(x)[0] if isinstance(layer(x), tuple) else layer(x), _bert_layer_reference(layer, x, delta))


def test_parallel_adapter_on_a_pre_norm_decoder_reads_the_mlp_input():
    model = tiny_model("gpt2")
    memtune.attach(model, memtune.AdapterConfig(bottleneck=6, placement="parallel", scale=4.0))
    block = _random_adapter(model)
    mlp = model.transformer.h[1].mlp
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = mlp.dropout(mlp.c_proj(mlp.act(mlp.c_fc(x)))) + 4.0 * block.up(torch.relu(block.down(x)))
        torch.testing.assert_close(mlp(x), expected)


def test_adapter_gate_multiplies_the_update_per_token():
    model = tiny_model("bert")
    memtune.attach(model, memtune.AdapterConfig(bottleneck=6, gate=True))
    block = _random_adapter(model)
    h = torch.randn(2, 5, 32)
    with torch.no_grad():
        plain = block.up(torch.relu(block.down(h)))
        torch.testing.assert_close(block(h), plain * torch.sigmoid(h @ block.gate.weight.T + block.gate.bias))


def _copy_lora(ours, theirs):
    """Give peft's PeftModel the LoRA matrices memtune holds (after randomising them)."""
    method = memtune.methods_of(ours)["lora"]
    names = {id(m): n for n, m in ours.named_modules()}
    with torch.no_grad():
        for pair in method.pairs.values():
            for part in ("A", "B"):
                pair[part].weight.normal_(0, 0.3)
                name = names[id(pair[part])].replace(f".{method.adapter}", ".default")
                theirs.get_submodule("base_model.model." + name).weight.copy_(pair[part].weight)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_lora_equals_peft_on_query_and_value(arch):
    base = tiny_model(arch)
    ours = memtune.attach(copy.deepcopy(base), memtune.LoraConfig(rank=4, scaling=2.0))
    targets = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}[arch]
    theirs = get_peft_model(
        copy.deepcopy(base), PeftLoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=arch == "gpt2")
    )
    _copy_lora(ours, theirs)
    inputs = batch(arch)
    torch.testing.assert_close(logits(ours, inputs), logits(theirs, inputs), rtol=1e-5, atol=1e-5)
    n_peft = sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n)
    assert memtune.parameter_report(ours)["methods"]["lora"]["tuned"] == n_peft


def test_lora_update_is_equation_6():
    model = memtune.attach(tiny_model("bert"), memtune.LoraConfig(rank=4, scaling=3.0, layers=[0]))
    pair = memtune.methods_of(model)["lora"].pairs["0_query"]
    with torch.no_grad():
        pair["B"].weight.normal_()
        query = model.bert.encoder.layer[0].attention.self.query
        x = torch.randn(2, 5, 32)
        expected = x @ query.base_layer.weight.T + query.base_layer.bias + 3.0 * x @ pair["A"].weight.T @ pair["B"].weight.T
        torch.testing.assert_close(query(x), expected)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_merge_and_unload_keeps_the_outputs_and_leaves_a_plain_model(arch):
    model = tiny_model(arch)
    inputs = batch(arch)
    memtune.attach(model, memtune.LoraConfig(rank=4))
    _train_step(model, inputs)
    tuned = logits(model, inputs)
    names_before = {n for n, _ in tiny_model(arch).named_parameters()}
    memtune.merge_and_unload(model)
    assert not hasattr(model, "memtune") and not hasattr(model, "peft_config")
    assert {n for n, _ in model.named_parameters()} == names_before
    torch.testing.assert_close(logits(model, inputs), tuned, rtol=1e-5, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())


def test_merge_refuses_methods_that_add_computation():
    model = memtune.attach(tiny_model("bert"), memtune.recipe("mam"))
    with pytest.raises(MemtuneError, match=r"cannot merge prefix \(prefix\), adapter \(adapter\)"):
        memtune.merge_and_unload(model)
    assert hasattr(model, "memtune")  # nothing changed
    gated = memtune.attach(tiny_model("bert"), memtune.LoraConfig(gate=True))
    with pytest.raises(MemtuneError, match="cannot merge lora"):
        memtune.merge_and_unload(gated)


def test_lora_gate_multiplies_the_update_per_token():
    model = memtune.attach(tiny_model("bert"), memtune.LoraConfig(rank=4, gate=True, layers=[0], targets=["value"]))
    method = memtune.methods_of(model)["lora"]
    pair, gate = method.pairs["0_value"], method.gates["0_value"].linear
    with torch.no_grad():
        pair["B"].weight.normal_()
        value = model.bert.encoder.layer[0].attention.self.value
        x = torch.randn(2, 5, 32)
        update = x @ pair["A"].weight.T @ pair["B"].weight.T
        expected = value.base_layer(x) + torch.sigmoid(x @ gate.weight.T + gate.bias) * update
        torch.testing.assert_close(value(x), expected)


def test_bitfit_and_ft_train_what_the_paper_says():
    d, L, d_ff = 32, 3, 48  # the tiny BERT (Table II assumes d_ff = 4d)
    model = memtune.attach(tiny_model("bert"), memtune.recipe("bitfit"))
    names = model.memtune.backbone_names["bitfit"]
    # embedding LN + per layer (q, k, v, o, 2 LNs, output: 7d; intermediate: d_ff) + pooler; = d + 11dL + d at 4d
    assert memtune.parameter_report(model)["tuned"] == d + (7 * d + d_ff) * L + d
    assert {n.split(".")[-2] for n in names} == {"LayerNorm", "query", "key", "value", "dense"}
    model = memtune.attach(tiny_model("bert"), memtune.FullConfig(layers=[2]))
    assert all(n.startswith("bert.encoder.layer.2.") for n in model.memtune.backbone_names["full"])
    assert memtune.parameter_report(model)["tuned"] == 4 * d * d + 9 * d + 2 * d * d_ff + d_ff  # 12d^2 + 13d at 4d
    model = memtune.attach(tiny_model("bert"), memtune.recipe("ft"))
    assert memtune.parameter_report(model)["tuned"] == memtune.parameter_report(model)["backbone"]


# --- prefix tuning against peft ---------------------------------------------------------------------
# peft passes its prefix as past_key_values, which transformers renames from release to release (5.24:
# ``cache``). Where the installed pair breaks peft's own prefix tuning, these tests skip and say why,
# with the versions: they compare memtune with peft, and a broken peft is no reference.

VERSIONS = f"peft {peft.__version__} with transformers {transformers.__version__}"


def _peft_or_skip(run):
    """``run()`` (a call into peft's prefix-tuned model); skip with peft's own error if it raises."""
    try:
        return run()
    except Exception as error:  # noqa: BLE001 - any failure inside peft means there is no reference
        pytest.skip(f"peft's prefix tuning fails on {VERSIONS}: {type(error).__name__}: {error}")


def _generate(model, inputs, steps=6):
    return model.generate(**inputs, max_new_tokens=steps, do_sample=False, pad_token_id=0, output_scores=True,
                          return_dict_in_generate=True)


def _without_left_padding(inputs, row, padding):
    return {k: v[row : row + 1, padding:] for k, v in inputs.items()}


def _skip_unless_peft_generates_as_a_reference(model, inputs, row, padding):
    """peft's prefix-tuned generate() is a reference only where it is consistent with itself:
    - its first step equals its own forward pass on the rows without padding (where transformers drops the
      prefix peft hands to generate(), 5.24: 'Both past_key_values and cache are set', it does not);
    - a left-padded row generates what the same row does alone (on 5.0 it does not)."""
    with torch.no_grad():
        forward = _peft_or_skip(lambda: model(**inputs).logits[:, -1])
    padded = _peft_or_skip(lambda: _generate(model, inputs))
    full = inputs["attention_mask"].bool().all(dim=1)
    gap = (padded.scores[0][full] - forward[full]).abs().max().item()
    if gap > 1e-4:
        pytest.skip(f"peft's prefix-tuned generate() disagrees with its own forward pass on {VERSIONS} "
                    f"(max logit difference {gap:.3g} at the first step): no reference to compare with")
    alone = _peft_or_skip(lambda: _generate(model, _without_left_padding(inputs, row, padding)))
    width = inputs["input_ids"].shape[1]
    if not torch.equal(padded.sequences[row, width:], alone.sequences[0, width - padding:]):
        pytest.skip(f"peft's prefix-tuned generate() on {VERSIONS} generates other tokens for a left-padded row "
                    "than for the same row without padding: no reference to compare with")


PEFT_PREFIX_CASES = [
    (arch, head, task, reparameterize)
    for arch, head, task in [
        ("bert", "seq", TaskType.SEQ_CLS),
        ("roberta", "seq", TaskType.SEQ_CLS),
        ("bert", "token", TaskType.TOKEN_CLS),
        ("gpt2", "lm", TaskType.CAUSAL_LM),
        ("llama", "lm", TaskType.CAUSAL_LM),
    ]
    for reparameterize in (False, True)
    # with grouped queries peft's reparameterisation embeds in the kv width, memtune's in d: no common weights
    if not (arch == "llama" and reparameterize)
]


@pytest.mark.parametrize("shift", [False, True], ids=["explicit-positions", "shift_positions"])
@pytest.mark.parametrize("arch,head,task,reparameterize", PEFT_PREFIX_CASES)
def test_prefix_equals_peft_prefix_tuning(arch, head, task, reparameterize, shift):
    """Same prefix tensors, same logits. peft passes the prefix as past_key_values, so the model gives the
    real tokens positions l, l+1, ... (and peft ignores position_ids); memtune's prefix keeps the model's
    positions unless ``shift_positions=True``. Without it, memtune's model is given the shifted positions
    explicitly; with it, the model makes them itself."""
    length = 5
    base = tiny_model(arch, head)
    config = memtune.PrefixConfig(prefix_length=length, reparameterize=reparameterize, shift_positions=shift)
    ours = memtune.attach(copy.deepcopy(base), config)
    method = memtune.methods_of(ours)["prefix"]
    theirs = get_peft_model(
        copy.deepcopy(base),
        PrefixTuningConfig(task_type=task, num_virtual_tokens=length, prefix_projection=reparameterize, encoder_hidden_size=32),
    )
    encoder = theirs.prompt_encoder["default"]
    with torch.no_grad():
        if reparameterize:
            for p in method.parameters():
                p.normal_(0, 0.3)
            encoder.embedding.weight.copy_(method.embedding.weight)
            encoder.transform[0].load_state_dict(method.down.state_dict())
            encoder.transform[2].load_state_dict(method.up.state_dict())
        else:
            encoder.embedding.weight.copy_(method.prefix.permute(1, 0, 2).reshape(length, -1))  # (l, L * 2d)
    inputs = batch(arch, pad="right")
    offset = 2 if arch == "roberta" else 0  # RoBERTa positions start after its padding index
    positions = torch.arange(length, length + 7).expand(2, -1) + offset
    with torch.no_grad():
        expected = _peft_or_skip(lambda: theirs(**inputs).logits)
        got = ours(**inputs).logits if shift else ours(**inputs, position_ids=positions).logits
    keep = inputs["attention_mask"].bool() if got.dim() == 3 else slice(None)
    torch.testing.assert_close(got[keep], expected[keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_shifted_prefix_generates_like_peft_prefix_tuning(arch):
    """Greedy generation, left-padded, with the cache: memtune's shifted prefix and peft's give the same tokens."""
    length = 5
    base = tiny_model(arch)
    ours = memtune.attach(copy.deepcopy(base), memtune.PrefixConfig(prefix_length=length, reparameterize=False, shift_positions=True))
    method = memtune.methods_of(ours)["prefix"]
    theirs = get_peft_model(
        copy.deepcopy(base), PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=length, prefix_projection=False)
    )
    with torch.no_grad():
        method.prefix.normal_(0, 1.0)
        theirs.prompt_encoder["default"].embedding.weight.copy_(method.prefix.permute(1, 0, 2).reshape(length, -1))
    inputs = batch(arch, pad="left")
    width = inputs["input_ids"].shape[1]
    # memtune on its own: left padding changes nothing (row 0 has 3 padding tokens)
    alone = _generate(ours, _without_left_padding(inputs, 0, 3))
    assert torch.equal(_generate(ours, inputs).sequences[0, width:], alone.sequences[0, width - 3:])
    _skip_unless_peft_generates_as_a_reference(theirs, inputs, row=0, padding=3)
    got, expected = _generate(ours, inputs), _generate(theirs, inputs)
    assert torch.equal(got.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(got.scores), torch.stack(expected.scores), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "mpnet", "llama"])
def test_gated_prefix_equals_a_prefix_scaled_by_its_gates(arch):
    """With constant gates (zero weights), the gated prefix is the plain prefix with keys x g_k, values x g_v."""
    base = tiny_model(arch)
    gated = memtune.attach(copy.deepcopy(base), memtune.PrefixConfig(prefix_length=3, gate=True, reparameterize=False))
    plain = memtune.attach(copy.deepcopy(base), memtune.PrefixConfig(prefix_length=3, reparameterize=False))
    method = memtune.methods_of(gated)["prefix"]
    with torch.no_grad():
        for gate in method.gates.values():
            gate.weight.zero_()
            gate.bias.copy_(torch.tensor([0.7, -1.2]))
        g_key, g_value = torch.sigmoid(torch.tensor(0.7)), torch.sigmoid(torch.tensor(-1.2))
        width = method.prefix.shape[-1] // 2
        scaled = torch.cat([method.prefix[..., :width] * g_key, method.prefix[..., width:] * g_value], dim=-1)
        memtune.methods_of(plain)["prefix"].prefix.copy_(scaled)
    inputs = batch(arch, pad="right" if arch in ENCODERS else "left")
    torch.testing.assert_close(logits(gated, inputs), logits(plain, inputs), rtol=1e-5, atol=1e-5)
    assert method._gate_values == {}  # nothing kept after the forward


# --- composition and bad input ---------------------------------------------------------------------


def test_composition_attaches_several_methods_and_rejects_conflicts():
    model = memtune.attach(tiny_model("bert"), [memtune.LoraConfig(rank=2), memtune.AdapterConfig(bottleneck=4), memtune.MemoryConfig(slot_dim=4)])
    assert set(memtune.methods_of(model)) == {"lora", "adapter", "memory"}
    memtune.detach(model)
    with pytest.raises(MemtuneError, match="both put a 'lora' method on layer 1"):
        memtune.attach(tiny_model("bert"), [memtune.LoraConfig(layers=[0, 1]), memtune.LoraConfig(layers=[1, 2])])
    fresh = tiny_model("bert")
    with pytest.raises(MemtuneError, match="both train the backbone parameter"):
        memtune.attach(fresh, [memtune.FullConfig(), memtune.BitFitConfig()])
    assert not hasattr(fresh, "memtune") and all(p.requires_grad for p in fresh.parameters())
    # disjoint LoRA configs get separate peft adapters, both active, and detach cleanly
    model = memtune.attach(tiny_model("bert"), [memtune.LoraConfig(layers=[0]), memtune.LoraConfig(layers=[2], rank=2)])
    assert len(model.peft_config) == 2
    inputs = batch("bert")
    for key in ("lora", "lora_1"):
        before = logits(model, inputs)
        with torch.no_grad():
            for pair in memtune.methods_of(model)[key].pairs.values():
                pair["B"].weight.normal_()
        assert not torch.allclose(logits(model, inputs), before), key  # each config takes part
    memtune.detach(model)
    assert not hasattr(model, "peft_config")


def test_a_users_own_peft_lora_stays_active_and_survives_detach():
    from peft import inject_adapter_in_model

    model = tiny_model("bert")
    inject_adapter_in_model(PeftLoraConfig(r=2, target_modules=["query"]), model, adapter_name="mine")
    query = model.bert.encoder.layer[0].attention.self.query
    with torch.no_grad():
        query.lora_B["mine"].weight.normal_()
    inputs = batch("bert")
    users = logits(model, inputs)
    memtune.attach(model, memtune.LoraConfig(rank=2))  # wraps value, adds an adapter to the user's query layer
    assert set(query.active_adapters) == {"mine", memtune.methods_of(model)["lora"].adapter}
    torch.testing.assert_close(logits(model, inputs), users)  # memtune's B is zero: the user's LoRA still acts
    memtune.detach(model)
    assert query.active_adapters == ["mine"] and list(query.lora_A) == ["mine"]
    assert list(model.peft_config) == ["mine"]
    torch.testing.assert_close(logits(model, inputs), users, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["lora", "unipelt", "mam"])
def test_save_pretrained_works_while_attached(name, tmp_path):
    """LoRA's matrices are registered once (in peft's layers), so HF checkpoints have no shared tensors."""
    model = memtune.attach(tiny_model("bert"), memtune.recipe(name, budget=8))
    model.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").exists()


def test_lora_dropout_follows_the_models_eval_mode():
    model = memtune.attach(tiny_model("bert"), memtune.LoraConfig(rank=4, dropout=0.5))  # tiny_model is in eval mode
    with torch.no_grad():
        for pair in memtune.methods_of(model)["lora"].pairs.values():
            pair["B"].weight.normal_()
    inputs = batch("bert")
    torch.testing.assert_close(logits(model, inputs), logits(model, inputs), rtol=0, atol=0)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(**inputs).logits, model(**inputs).logits)


def test_gated_prefix_refuses_cached_decoding_and_generates_without_cache():
    model = memtune.attach(tiny_model("gpt2"), memtune.recipe("unipelt", budget=8))
    inputs = batch("gpt2", batch_size=1)
    with pytest.raises(MemtuneError, match="generate with use_cache=False"):
        model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=True)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=False)
    assert out.shape == (1, 10)


@pytest.mark.parametrize(
    "make,error,message",
    [
        (lambda: memtune.recipe("adaptr"), ConfigError, "known recipes: ft, bitfit, adapter, lora"),
        (lambda: memtune.recipe("adapter", budget=2.5), ConfigError, "budget must be a positive integer"),
        (lambda: memtune.AdapterConfig(bottleneck=0), ConfigError, "bottleneck"),
        (lambda: memtune.AdapterConfig(placement="inside"), ConfigError, "placement must be one of"),
        (lambda: memtune.AdapterConfig(activation="swish"), ConfigError, "activation must be one of"),
        (lambda: memtune.LoraConfig(targets=["output"]), ConfigError, "targets must be a non-empty list"),
        (lambda: memtune.LoraConfig(scaling=0), ConfigError, "scaling must be a positive number"),
        (lambda: memtune.attach(tiny_model("llama"), memtune.recipe("bitfit")), ConfigError, "no bias terms"),
        (lambda: memtune.attach(tiny_model("gpt2"), memtune.LoraConfig(targets=["key"])), ArchitectureError, "no key projection"),
        (lambda: memtune.attach(tiny_model("bert"), memtune.LoraConfig(layers=[7])), ConfigError, "layers \\[7\\] do not exist"),
    ],
)
def test_bad_input_gets_a_clear_message(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_failed_attach_leaves_the_model_untouched():
    model = tiny_model("llama")
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ConfigError):
        memtune.attach(model, [memtune.LoraConfig(rank=2), memtune.BitFitConfig()])
    assert not hasattr(model, "memtune") and not hasattr(model, "peft_config")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


@pytest.mark.parametrize("name", ["lora", "unipelt", "mam"])
def test_deepcopy_of_an_attached_model_is_independent(name):
    model = memtune.attach(tiny_model("bert"), memtune.recipe(name, budget=8))
    inputs = batch("bert")
    model.train()
    _loss(model, inputs).backward()  # a forward with gradients leaves nothing on the modules
    model.zero_grad()
    model.eval()
    clone = copy.deepcopy(model)
    torch.testing.assert_close(logits(clone, inputs), logits(model, inputs))
    _train_step(clone, inputs)
    assert not torch.allclose(logits(clone, inputs), logits(model, inputs))
    memtune.detach(clone)
    assert hasattr(model, "memtune")


@pytest.mark.parametrize("name", ["lora", "mam", "unipelt"])
def test_methods_follow_a_bf16_backbone(name):
    model = memtune.attach(tiny_model("bert").to(torch.bfloat16), memtune.recipe(name, budget=8))
    assert {p.dtype for p in method_parameters(model)} == {torch.bfloat16}
    assert logits(model, batch("bert")).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["mam", "unipelt"])
def test_activation_checkpointing_gives_the_same_gradients(name):
    """The parallel adapter keeps the FFN input between two hooks; recomputation must replay it."""
    grads = []
    for checkpointing in (False, True):
        model = memtune.attach(tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), memtune.recipe(name, budget=8))
        with torch.no_grad():
            for p in method_parameters(model):
                p.normal_(0, 0.2)
        if checkpointing:
            enable_activation_checkpointing(model)
        model.train()
        _loss(model, batch("bert")).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)

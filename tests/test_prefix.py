"""MT-M (prefix): the attention seam against explicit attention, past-key-values references, masks and caches."""
import copy

import pytest
import torch
from transformers import DynamicCache

import memtune
from memtune.errors import ConfigError, MemtuneError
from memtune.attention import _register, one_query_attention, prefix_mask
from conftest import DECODERS, ENCODERS, batch, logits, tiny_model


class FakeAttention(torch.nn.Module):
    """Stands for a model's attention module: the interface only reads is_causal and the prefix mark."""

    def __init__(self, causal):
        super().__init__()
        self.is_causal = causal
        self.num_key_value_groups = 2


class FixedPrefix:
    def __init__(self, k, v):
        self.k, self.v = k, v

    def key_values(self, j):
        return self.k, self.v


def explicit_attention(q, k, v, allowed, scaling):
    """softmax(q k^T * scaling + mask) v, with grouped keys repeated to the query heads."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = (q @ k.transpose(-1, -2)) * scaling
    return (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("inner", ["sdpa", "eager"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("q_len", [5, 1])
def test_registered_attention_equals_explicit(inner, causal, padded, q_len):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama import modeling_llama  # an eager_attention_forward with GQA

    torch.manual_seed(0)
    B, H, Hkv, kv_len, hd, l = 2, 4, 2, 5, 8, 3
    q = torch.randn(B, H, q_len, hd)
    k, v = torch.randn(B, Hkv, kv_len, hd), torch.randn(B, Hkv, kv_len, hd)
    pk, pv = torch.randn(Hkv, l, hd), torch.randn(Hkv, l, hd)
    module = FakeAttention(causal)
    type(module).__module__ = modeling_llama.__name__  # where the eager function is looked up
    module._memtune_prefix = (FixedPrefix(pk, pv), 0)
    allowed = torch.ones(B, 1, q_len, kv_len, dtype=torch.bool)
    if causal:
        allowed &= torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
    if padded:
        allowed[0, :, :, :2] = False  # left padding of row 0
    mask = None
    if padded or (causal and inner == "eager"):
        mask = allowed if inner == "sdpa" else torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    fn = ALL_ATTENTION_FUNCTIONS[_register(inner)]
    out, _ = fn(module, q, k, v, mask, scaling=hd**-0.5, dropout=0.0)
    full_allowed = torch.cat([torch.ones(B, 1, q_len, l, dtype=torch.bool), allowed], -1)
    expected = explicit_attention(q, torch.cat([pk.expand(B, -1, -1, -1), k], 2), torch.cat([pv.expand(B, -1, -1, -1), v], 2), full_allowed, hd**-0.5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "bool", "additive", "per-head"])
def test_one_query_attention_equals_attention_over_concatenated_keys(groups, gated, mask_kind):
    """The decoding-step fast path (no concatenation of the cache) against explicit attention over [prefix; keys]."""
    torch.manual_seed(2)
    B, Hkv, T, hd, l = 3, 2, 7, 8, 4
    H = Hkv * groups
    q, k, v = torch.randn(B, H, 1, hd), torch.randn(B, Hkv, T, hd), torch.randn(B, Hkv, T, hd)
    pk, pv = (torch.randn(B, Hkv, l, hd), torch.randn(B, Hkv, l, hd)) if gated else (torch.randn(Hkv, l, hd), torch.randn(Hkv, l, hd))
    allowed = torch.ones(B, H if mask_kind == "per-head" else 1, 1, T, dtype=torch.bool)
    allowed[0, ..., :3] = False  # left padding of row 0
    if mask_kind == "per-head":
        allowed[1, 0, :, 2] = False  # one head of row 1 hides one key
    mask = {None: None, "bool": allowed, "per-head": allowed}.get(mask_kind)
    if mask_kind == "additive":
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    out = one_query_attention(q, k, v, pk, pv, mask, 0.3)
    full_k = torch.cat([pk.expand(B, -1, -1, -1), k], 2)
    full_v = torch.cat([pv.expand(B, -1, -1, -1), v], 2)
    visible = torch.cat([torch.ones(B, allowed.shape[1], 1, l, dtype=torch.bool), allowed if mask_kind else torch.ones_like(allowed)], -1)
    torch.testing.assert_close(out, explicit_attention(q, full_k, full_v, visible, 0.3), rtol=1e-5, atol=1e-6)


def test_prefixed_attention_is_eq9_mixture():
    """Eq. (9): attention over [prefix; context] = (1 - lambda) * original + lambda * attention over the prefix."""
    torch.manual_seed(1)
    q, K, V = torch.randn(1, 6), torch.randn(4, 6), torch.randn(4, 6)
    KP, VP = torch.randn(3, 6), torch.randn(3, 6)
    full = torch.softmax(q @ torch.cat([KP, K]).T, -1) @ torch.cat([VP, V])
    kappa, chi = torch.exp(q @ KP.T).sum(), torch.exp(q @ K.T).sum()
    lam = kappa / (kappa + chi)
    mixture = (1 - lam) * torch.softmax(q @ K.T, -1) @ V + lam * torch.softmax(q @ KP.T, -1) @ VP
    torch.testing.assert_close(full, mixture)


def test_prefix_mask_causal_follows_sdpa_is_causal_and_shows_the_prefix():
    # keys outnumber queries with no mask only when prefilling an empty static cache: top-left, like is_causal
    mask = prefix_mask(None, q_len=2, kv_len=4, prefix_len=3, causal=True, additive_dtype=None)
    expected = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)
    assert prefix_mask(None, 1, 4, 3, True, None) is None
    assert prefix_mask(None, 4, 4, 3, False, None) is None


def _prefix_cache(model, method):
    """The prefix as an explicit past_key_values cache: transformers' own path, independent of memtune's seam."""
    cache = DynamicCache(config=model.config)
    for j, layer in enumerate(method.layer_indices):
        k, v = method.key_values(j)
        cache.update(k.unsqueeze(0).detach(), v.unsqueeze(0).detach(), layer)
    return cache


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("inner", ["sdpa", "eager"])
def test_decoder_prefix_equals_past_key_values(arch, inner, shift):
    """The prefix is a cache of l tokens that never moves the real tokens' positions, or (``shift_positions``)
    moves them as a real cache does: then the reference takes the positions the model derives from the cache."""
    model = tiny_model(arch, attn_implementation=inner)
    model.config._attn_implementation = inner
    memtune.attach(model, memtune.PrefixConfig(prefix_length=4, shift_positions=shift))
    inputs = batch(arch, batch_size=1, length=6)
    ours = logits(model, inputs)
    method = memtune.methods_of(model)["prefix"]
    cache = _prefix_cache(model, method)
    memtune.detach(model)
    with torch.no_grad():
        reference = model(
            input_ids=inputs["input_ids"],
            attention_mask=torch.ones(1, 4 + 6, dtype=torch.long),
            position_ids=None if shift else torch.arange(6)[None],
            past_key_values=cache,
        ).logits
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ENCODERS)
def test_encoder_prefix_changes_output_and_inner_paths_agree(arch):
    model = tiny_model(arch)
    inputs = batch(arch, pad="right")
    plain = logits(model, inputs)
    memtune.attach(model, memtune.PrefixConfig(prefix_length=4))
    with_prefix = logits(model, inputs)
    assert not torch.allclose(plain, with_prefix)
    if arch != "mpnet":  # MPNet has a single (own) attention path
        inner = model.config._attn_implementation
        for config in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values():
            config._attn_implementation = "memtune_eager" if inner == "memtune_sdpa" else "memtune_sdpa"
        torch.testing.assert_close(logits(model, inputs), with_prefix, rtol=1e-5, atol=1e-5)


def test_mpnet_projection_seam_equals_explicit_attention():
    """MPNet computes attention itself; check its prefixed self-attention against an explicit formula."""
    model = tiny_model("mpnet")
    memtune.attach(model, memtune.PrefixConfig(prefix_length=3, layers=[0]))
    attention = model.mpnet.encoder.layer[0].attention.attn
    method = memtune.methods_of(model)["prefix"]
    torch.manual_seed(0)
    B, T, d, H = 2, 5, 32, 4
    hidden = torch.randn(B, T, d)
    allowed = torch.ones(B, 1, T, T, dtype=torch.bool)
    allowed[0, ..., -2:] = False
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    bias = torch.randn(B, H, T, T)
    with torch.no_grad():
        ours = attention(hidden, mask, bias)[0]
        pk, pv = method.key_values(0)  # (H, l, hd)
        split = lambda x: x.view(B, -1, H, d // H).transpose(1, 2)  # noqa: E731 (B, H, T, hd)
        linear = lambda m: torch.nn.functional.linear(hidden, m.weight, m.bias)  # noqa: E731 (bypasses hooks)
        q, k, v = split(linear(attention.q)), split(linear(attention.k)), split(linear(attention.v))
        k = torch.cat([pk.expand(B, -1, -1, -1), k], 2)
        v = torch.cat([pv.expand(B, -1, -1, -1), v], 2)
        scores = q @ k.transpose(-1, -2) / (d // H) ** 0.5 + torch.nn.functional.pad(bias + mask, (3, 0))
        expected = attention.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ENCODERS)
def test_right_padding_does_not_leak(arch):
    """A padded row gives the same logits as the same tokens alone without padding."""
    model = tiny_model(arch)
    memtune.attach(model, memtune.recipe("mt-mf", budget=8))
    torch.nn.init.normal_(memtune.methods_of(model)["memory"].blocks["0"].out.weight)
    inputs = batch(arch, pad="right")
    padded = logits(model, inputs)[0]
    alone = logits(model, {k: v[:1, :-3] for k, v in inputs.items()})[0]
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5)


def _generate(model, inputs, use_cache):
    return model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=use_cache, pad_token_id=0)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("inner", ["sdpa", "eager"])
def test_generation_with_cache_equals_without(arch, inner, shift):
    model = tiny_model(arch, attn_implementation=inner)
    model.config._attn_implementation = inner
    memtune.attach(model, memtune.recipe("mt-mf", budget=8, shift_prefix_positions=shift))
    torch.nn.init.normal_(memtune.methods_of(model)["memory"].blocks["1"].out.weight, std=0.5)
    inputs = batch(arch, pad="left")
    cached, uncached = _generate(model, inputs, True), _generate(model, inputs, False)
    assert torch.equal(cached, uncached)
    # left padding is masked: the padded row generates what it generates alone
    alone = _generate(model, {k: v[:1, 3:] for k, v in inputs.items()}, True)
    assert torch.equal(cached[0, 3:], alone[0])


def test_stored_prefix_gives_identical_outputs():
    model = tiny_model("bert")
    memtune.attach(model, memtune.PrefixConfig(prefix_length=4))
    inputs = batch("bert")
    before = logits(model, inputs)
    method = memtune.methods_of(model)["prefix"]
    method.prepare_stored()
    assert not method.reparameterized and tuple(method.prefix.shape) == (3, 4, 2 * 32)
    torch.testing.assert_close(logits(model, inputs), before, rtol=1e-6, atol=1e-6)


def test_prefix_dropout_only_in_training():
    model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    memtune.attach(model, memtune.PrefixConfig(prefix_length=4, dropout=0.5))
    inputs = batch("bert")
    assert torch.equal(logits(model, inputs), logits(model, inputs))
    model.train()
    assert not torch.equal(logits(model, inputs), logits(model, inputs))


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("arch", DECODERS)
def test_static_cache_generation_equals_dynamic(arch, shift):
    model = tiny_model(arch)
    memtune.attach(model, memtune.recipe("mt-mf", budget=8, shift_prefix_positions=shift))
    inputs = batch(arch, batch_size=1)
    run = lambda **kw: model.generate(  # noqa: E731
        **inputs, max_new_tokens=4, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True, **kw
    )
    dynamic, static = run(), run(cache_implementation="static")
    assert torch.equal(dynamic.sequences, static.sequences)
    torch.testing.assert_close(torch.stack(static.scores), torch.stack(dynamic.scores), rtol=1e-4, atol=1e-5)


def _explicit_shifted_positions(arch, inputs, length):
    """The positions a model gives its tokens after ``length`` cached ones, written out per architecture."""
    mask = inputs["attention_mask"]
    if arch in ("roberta", "mpnet"):  # from padding_idx + 1, padding tokens at padding_idx (= 1)
        return (mask.cumsum(1) + length) * mask + 1
    return torch.arange(length, length + mask.shape[1]).expand_as(mask)


@pytest.mark.parametrize("arch", ENCODERS + DECODERS)
def test_shift_positions_equals_giving_the_shifted_positions(arch):
    base = tiny_model(arch)
    inputs = batch(arch, pad="right" if arch in ENCODERS else None)
    kept = memtune.attach(copy.deepcopy(base), memtune.PrefixConfig(prefix_length=3, reparameterize=False))
    shifted = memtune.attach(
        copy.deepcopy(base), memtune.PrefixConfig(prefix_length=3, reparameterize=False, shift_positions=True)
    )
    memtune.methods_of(shifted)["prefix"].prefix.data.copy_(memtune.methods_of(kept)["prefix"].prefix)
    with torch.no_grad():
        expected = kept(**inputs, position_ids=_explicit_shifted_positions(arch, inputs, 3)).logits
    got = logits(shifted, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, logits(kept, inputs), atol=1e-4)  # the shift does change the output
    memtune.detach(shifted)
    torch.testing.assert_close(logits(shifted, inputs), logits(base, inputs), rtol=0, atol=0)


def test_shift_positions_is_refused_twice_and_leaves_the_model_untouched():
    model = tiny_model("bert")
    inputs = batch("bert")
    before = logits(model, inputs)
    configs = [
        memtune.PrefixConfig(prefix_length=2, layers=[0], shift_positions=True),
        memtune.PrefixConfig(prefix_length=2, layers=[1], shift_positions=True),
    ]
    with pytest.raises(ConfigError, match="two prefixes shift this model's positions"):
        memtune.attach(model, configs)
    torch.testing.assert_close(logits(model, inputs), before, rtol=0, atol=0)
    memtune.attach(model, [configs[0], memtune.PrefixConfig(prefix_length=2, layers=[1])])  # one shift is fine


def test_shift_positions_past_the_position_table_names_the_limit():
    model = memtune.attach(tiny_model("bert"), memtune.PrefixConfig(prefix_length=8, shift_positions=True))
    with pytest.raises(MemtuneError, match=r"at most 56 tokens, or PrefixConfig\(shift_positions=False\)"):
        logits(model, batch("bert", length=60))
    logits(model, batch("bert", length=56))  # 56 + 8 = the 64 positions


def test_shift_positions_survives_save_and_load(tmp_path):
    model = memtune.attach(tiny_model("gpt2"), memtune.PrefixConfig(prefix_length=3, shift_positions=True))
    inputs = batch("gpt2")
    memtune.save(model, tmp_path / "ckpt")
    loaded = memtune.load(tiny_model("gpt2"), tmp_path / "ckpt")
    assert memtune.methods_of(loaded)["prefix"].config.shift_positions
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), rtol=1e-6, atol=1e-6)

"""MT-F: MemoryBlock against a direct implementation of Eq. (8), and the no-op at attach."""
import pytest
import torch

import memtune
from conftest import ARCHS, batch, logits, tiny_model


def eq8(H, M, W_query, W_key, W_value, W_o):
    """Memory-Tuning Eq. (8) written with explicit matrices: dH = W_o^T softmax(H W_q (M W_k)^T) M W_v."""
    Q = H @ W_query  # (n, s)
    K = M @ W_key  # (k, s)
    V = M @ W_value  # (k, s)
    return torch.softmax(Q @ K.T, dim=-1) @ V @ W_o  # (n, d)


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_memory_block_matches_eq8():
    block = memtune.MemoryBlock(d_model=24, num_slots=7, slot_dim=5)
    randomize(block)
    H = torch.randn(2, 9, 24)
    # nn.Linear stores W as (out, in): x @ W.T
    expected = eq8(H, block.memory, block.query.weight.T, block.key.weight.T, block.value.weight.T, block.out.weight.T)
    torch.testing.assert_close(block(H), expected, rtol=1e-5, atol=1e-6)


def test_memory_block_score_scaling_and_scores():
    block = memtune.MemoryBlock(16, 4, 8, scale_scores=True)
    randomize(block, seed=3)
    H = torch.randn(3, 16)
    Q, K = block.query(H), block.key(block.memory)
    expected_scores = torch.softmax(Q @ K.T / 8**0.5, -1)
    torch.testing.assert_close(block.scores(H), expected_scores)
    torch.testing.assert_close(block(H), block.out(expected_scores @ block.value(block.memory)))


def test_authors_variant_has_biases_and_norms():
    block = memtune.MemoryBlock(16, 4, 8, bias=True, layer_norms=True)
    names = {n for n, _ in block.named_parameters()}
    assert {"query.bias", "out.bias", "input_norm.weight", "query_norm.weight", "output_norm.weight"} <= names
    assert torch.count_nonzero(block(torch.randn(2, 16))) == 0  # out starts at zero: still a no-op


def test_fresh_block_is_exact_noop():
    block = memtune.MemoryBlock(16, 4, 8)
    assert torch.count_nonzero(block(torch.randn(5, 16))) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_attach_memory_is_noop(arch):
    model = tiny_model(arch)
    inputs = batch(arch, pad="right" if arch in ("bert", "roberta", "mpnet") else "left")
    before = logits(model, inputs)
    memtune.attach(model, memtune.recipe("mt-f", budget=8))
    assert torch.equal(logits(model, inputs), before)


@pytest.mark.parametrize("arch", ARCHS)
def test_memory_update_lands_on_ffn_output(arch):
    """With a non-zero W_o the FFN output of a hooked layer becomes H + dH(H) (Eq. 7, a = b = 1)."""
    model = tiny_model(arch)
    spec = memtune.arch.arch_for(model)
    site = memtune.arch.submodule(memtune.arch.blocks(model, spec)[1], spec.ffn_output, "ffn")
    inputs = batch(arch)

    def ffn_output():
        seen = []
        handle = site.register_forward_hook(lambda m, i, o: seen.append(o))  # runs after memtune's hook
        with torch.no_grad():
            model(**inputs)
        handle.remove()
        return seen[0]

    plain = ffn_output()
    memtune.attach(model, memtune.MemoryConfig(num_slots=4, slot_dim=8, layers=[1]))
    block = memtune.methods_of(model)["memory"].blocks["1"]
    randomize(block)
    with torch.no_grad():
        expected = plain + block(plain)
    torch.testing.assert_close(ffn_output(), expected)


def _authors_dh(h, memory, wq, bq, wk, bk, wv, bv, wo, bo, eps):
    """The authors' block written out by hand (float64): dH = up(LN3(softmax(u K^T) V)),
    u = LN2(down(LN1(h))), K = k_net(M), V = v_net(M); LayerNorms at their initial weight 1, bias 0."""

    def layer_norm(x):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps)

    u = layer_norm(layer_norm(h) @ wq.T + bq)
    keys, values = memory @ wk.T + bk, memory @ wv.T + bv
    return layer_norm(torch.softmax(u @ keys.T, -1) @ values) @ wo.T + bo


@pytest.mark.parametrize("grad", [True, False], ids=["training-path", "inference-path"])
def test_authors_variant_equals_the_authors_formula_with_their_eps_and_init(grad):
    torch.manual_seed(3)
    config = memtune.MemoryConfig.authors(slot_dim=8, num_slots=5)
    assert (config.bias, config.layer_norms, config.layer_norm_eps, config.init, config.train_layer_norms) == (
        True, True, 1e-12, "authors", True)  # fmt: skip
    block = memtune.MemoryBlock(32, 5, 8, bias=True, layer_norms=True, layer_norm_eps=1e-12, init="authors").double()
    for linear in (block.query, block.key, block.value, block.out):  # the authors' init: N(0, 0.01), zero bias
        assert torch.count_nonzero(linear.bias) == 0 and 0.005 < float(linear.weight.detach().std()) < 0.015
    h = torch.randn(3, 6, 32, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        ours = block(h)
    params = [block.memory] + [t for lin in (block.query, block.key, block.value, block.out) for t in (lin.weight, lin.bias)]
    expected = _authors_dh(h, *[p.detach() for p in params], eps=1e-12)
    assert torch.count_nonzero(expected) > 0  # not a no-op at attach
    torch.testing.assert_close(ours.detach(), expected, rtol=1e-10, atol=1e-14)
    # the eps matters at this init: PyTorch's 1e-5 shrinks dH many times over
    assert expected.abs().max() > 5 * _authors_dh(h, *[p.detach() for p in params], eps=1e-5).abs().max()


def test_authors_recipes_and_bad_init_values():
    (memory,) = memtune.recipe("mt-f-authors").configs
    assert memory == memtune.MemoryConfig.authors(slot_dim=32)
    prefix, memory = memtune.recipe("mt-mf-authors").configs
    assert (prefix.prefix_length, prefix.dropout, memory.slot_dim, memory.init) == (16, 0.1, 16, "authors")
    with pytest.raises(memtune.ConfigError, match="init must be one of"):
        memtune.MemoryConfig(init="xavier")
    with pytest.raises(memtune.ConfigError, match="layer_norm_eps"):
        memtune.MemoryConfig(layer_norm_eps=0)


def test_authors_init_gives_every_parameter_a_gradient_at_the_first_step():
    model = tiny_model("bert")
    memtune.attach(model, memtune.MemoryConfig.authors(slot_dim=4, num_slots=6))
    model(**batch("bert")).logits.sum().backward()
    block = memtune.methods_of(model)["memory"].blocks["0"]
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name

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
    spec = memtune.ARCHITECTURES[model.config.model_type]
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

"""The inference fast path: input-independent tensors (the memory's K and V, a reparameterised prefix) are
computed once while gradients are off, and equal the plain path in every state the model can be in."""
from __future__ import annotations

import copy

import pytest
import torch

import memtune
from memtune.methods.constants import ConstantCache
from memtune.methods.memory import MemoryBlock
from conftest import batch, tiny_model


def test_the_cache_recomputes_when_a_source_changes_and_never_caches_with_gradients_on():
    calls = []
    w = torch.ones(3)
    cache = ConstantCache()

    def compute():
        calls.append(1)
        return w * 2

    with torch.no_grad():
        first = cache.get([w], compute)
        assert torch.equal(first, torch.full((3,), 2.0)) and cache.get([w], compute) is first
        assert len(calls) == 1  # the second call used the cached value
        w.add_(1.0)  # an in-place update (an optimiser step): the version counter moves
        assert torch.equal(cache.get([w], compute), torch.full((3,), 4.0)) and len(calls) == 2
        w.data = torch.zeros(3)  # new storage
        assert torch.equal(cache.get([w], compute), torch.zeros(3)) and len(calls) == 3
    cache.get([w], compute)
    cache.get([w], compute)
    assert len(calls) == 5  # gradients on: computed every time
    assert copy.deepcopy(cache)._stamp is None


def _random_block(**options) -> MemoryBlock:
    torch.manual_seed(0)
    block = MemoryBlock(16, 6, 4, **options)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5)
    return block


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [{}, {"bias": True, "scale_scores": True}, {"bias": True, "layer_norms": True, "scale_scores": True}],
    ids=["paper", "bias-scaled", "authors-norms"],
)
def test_memory_block_fast_path_equals_the_plain_path_through_training_loading_and_moves(options):
    block, h = _random_block(**options), torch.randn(2, 5, 16)
    cache = block._folded if block.foldable else block._constants  # folded products without inner norms
    assert block.foldable == (not options.get("layer_norms", False))
    plain = lambda: block(h).detach()  # noqa: E731 - gradients on: the plain path
    with torch.no_grad():
        fast = block(h)
        assert _close(fast, plain()) and cache._stamp is not None  # cached
        assert torch.equal(block(h), fast)  # from the cache
    optimizer = torch.optim.SGD(block.parameters(), lr=0.5)
    block(h).pow(2).sum().backward()
    optimizer.step()  # after further training
    with torch.no_grad():
        assert _close(block(h), plain())
    other = _random_block(**options)
    other.load_state_dict({k: v + 1.0 for k, v in block.state_dict().items()})
    block.load_state_dict(other.state_dict())  # after a load
    with torch.no_grad():
        assert _close(block(h), plain()) and torch.equal(block.scores(h), block.scores(h.clone()))
    block.double()  # after a dtype move
    with torch.no_grad():
        fast = block(h.double())
    assert fast.dtype == torch.float64 and torch.allclose(fast, block(h.double()).detach(), rtol=1e-12, atol=1e-12)


def test_folded_memory_is_eq8_written_out():
    """The folded inference form against Eq. (8) computed by hand from the block's weights."""
    block, h = _random_block(bias=True, scale_scores=True), torch.randn(3, 16)
    m, wq, bq = block.memory, block.query.weight, block.query.bias
    k = m @ block.key.weight.T + block.key.bias
    v = m @ block.value.weight.T + block.value.bias
    q = h @ wq.T + bq
    expected = torch.softmax(q @ k.T / 2.0, -1) @ v @ block.out.weight.T + block.out.bias  # s = 4: 1/sqrt(s) = 1/2
    with torch.no_grad():
        assert _close(block(h), expected.detach())


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("recipe", ["mt-f", "prefix", "mt-mf"])
def test_eval_logits_with_the_fast_path_equal_the_plain_path(arch, recipe):
    model = memtune.attach(tiny_model(arch), memtune.recipe(recipe, budget=8))
    with torch.no_grad():
        for p in memtune.tuning.method_parameters(model):
            p.normal_(0, 0.3)
    model.eval()
    inputs = batch(arch)
    plain = model(**inputs).logits.detach()  # gradients on: nothing cached
    with torch.no_grad():
        fast = model(**inputs).logits
        again = model(**inputs).logits  # from the cache
    assert torch.allclose(fast, plain, atol=1e-6, rtol=1e-5) and torch.equal(fast, again)
    model(**inputs).logits.sum().backward()
    torch.optim.SGD(memtune.tuning.method_parameters(model), lr=0.1).step()  # after further training
    plain = model(**inputs).logits.detach()
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, plain, atol=1e-6, rtol=1e-5)


def test_the_fold_is_taken_only_where_it_pays_and_both_inference_forms_equal_the_plain_path():
    from memtune.methods.memory import FOLD_ROWS

    minilm = MemoryBlock(384, 50, 32)  # folding adds FLOPs (2dk > 2sd + 2ks): folded for few rows only
    assert minilm.fold_pays(torch.zeros(32, 1, 384)) and not minilm.fold_pays(torch.zeros(32, 128, 384))
    wide = MemoryBlock(16, 6, 16)  # dk <= s (d + k): the fold saves FLOPs at any size
    assert wide.fold_pays(torch.zeros(FOLD_ROWS + 1, 16))
    block = _random_block()  # d = 16, k = 6, s = 4: folded up to FOLD_ROWS rows, plain beyond
    for rows in (3, FOLD_ROWS + 44):
        h = torch.randn(rows, 16)
        plain = block(h).detach()
        with torch.no_grad():
            assert block.fold_pays(h) == (rows <= FOLD_ROWS) and _close(block(h), plain)

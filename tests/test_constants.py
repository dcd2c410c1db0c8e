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


@pytest.mark.parametrize("options", [{}, {"bias": True, "layer_norms": True, "scale_scores": True}])
def test_memory_block_fast_path_equals_the_plain_path_through_training_loading_and_moves(options):
    block, h = _random_block(**options), torch.randn(2, 5, 16)
    plain = lambda: block(h).detach()  # noqa: E731 - gradients on: the plain path
    with torch.no_grad():
        assert torch.equal(block(h), plain())
        assert block._constants._stamp is not None  # cached
    optimizer = torch.optim.SGD(block.parameters(), lr=0.5)
    block(h).pow(2).sum().backward()
    optimizer.step()  # after further training
    with torch.no_grad():
        assert torch.equal(block(h), plain())
    other = _random_block(**options)
    other.load_state_dict({k: v + 1.0 for k, v in block.state_dict().items()})
    block.load_state_dict(other.state_dict())  # after a load
    with torch.no_grad():
        assert torch.equal(block(h), plain()) and torch.equal(block.scores(h), block.scores(h.clone()))
    block.double()  # after a dtype move
    with torch.no_grad():
        assert block(h.double()).dtype == torch.float64 and torch.equal(block(h.double()), block.double()(h.double()).detach())


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

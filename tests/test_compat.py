"""memtune.compat: keyword names that differ between transformers releases."""
from __future__ import annotations

import pytest
from transformers import DynamicCache

from memtune.compat import cache_from, cached_length


@pytest.mark.parametrize("name", ["cache", "past_key_values", "past_key_value"])
def test_the_cache_is_found_under_each_name_transformers_has_used(name):
    cache = DynamicCache()
    assert cache_from({name: cache, "use_cache": True}) is cache


def test_the_newest_name_wins_and_none_is_no_cache():
    new, old = DynamicCache(), DynamicCache()
    assert cache_from({"past_key_values": old, "cache": new}) is new
    assert cache_from({"cache": None, "past_key_values": old}) is old
    assert cache_from({"hidden_states": 1}) is None


def test_cached_length_reads_a_cache_and_treats_anything_else_as_empty():
    import torch

    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), layer_idx=0)
    assert cached_length(cache) == 4
    assert cached_length(None) == 0 and cached_length(((torch.zeros(1),),)) == 0


def test_loading_asks_for_no_hub_kernels_only_when_the_kernels_package_is_missing(monkeypatch):
    import transformers.utils

    from memtune.compat import loading_kwargs

    monkeypatch.setattr(transformers.utils, "is_kernels_available", lambda: False)
    assert loading_kwargs({"num_labels": 3}) == {"num_labels": 3, "use_kernels": False}
    assert loading_kwargs({"use_kernels": True}) == {"use_kernels": True}  # the caller's choice stands
    monkeypatch.setattr(transformers.utils, "is_kernels_available", lambda: True)
    assert loading_kwargs({"num_labels": 3}) == {"num_labels": 3}

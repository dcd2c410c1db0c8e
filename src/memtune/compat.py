"""The one place that knows keyword names which differ between the transformers releases memtune supports.

transformers renames arguments between minor releases and keeps the old name for a while behind a
deprecation shim (5.24 renamed the KV cache ``past_key_values`` -> ``cache`` in every forward, layers
and attention modules included; ``past_key_value`` was the per-layer name before 4.56). memtune reads
such arguments only through the functions here, so the next rename is one line.
"""
from __future__ import annotations

from typing import Any, Mapping

CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")  # newest first


def cache_from(kwargs: Mapping[str, Any]) -> Any:
    """The KV cache a forward was called with, under whichever name this transformers passes it; None if none."""
    for name in CACHE_KWARGS:
        value = kwargs.get(name)
        if value is not None:
            return value
    return None


def cached_length(cache: Any, layer_idx: int = 0) -> int:
    """How many tokens ``cache`` already holds for layer ``layer_idx`` (0 for no cache or a legacy tuple)."""
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return int(cache.get_seq_length(layer_idx))


def enable_activation_checkpointing(model: Any, use_reentrant: bool = False) -> None:
    """Recompute activations in the backward pass: ``activation_checkpointing_enable`` in the newer 5.x
    releases, ``gradient_checkpointing_enable`` (with ``gradient_checkpointing_kwargs``) before."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})


def loading_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that load on every supported release.

    transformers 5.25 turns hub kernels on by default and then refuses to load any model when the
    ``kernels`` package (>= 0.19.1, which the package registry does not serve) is missing; before 5.25
    the default was off. Without ``kernels``, memtune asks for the old default; an explicit
    ``use_kernels`` is passed through as given."""
    if "use_kernels" in kwargs:
        return dict(kwargs)
    from transformers.utils import is_kernels_available

    return dict(kwargs) if is_kernels_available() else {**kwargs, "use_kernels": False}

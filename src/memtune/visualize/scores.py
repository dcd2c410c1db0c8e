"""The attention over the external memories of one layer, observed while a tuned model runs (the paper's
Section IV-D): for the FFN memory the softmax of Eq. (8) over its k slots; for the attention memory (a
prefix) the second softmax of Eq. (9), over the l prefix positions alone, averaged over the heads.

Nothing is changed in the model: a forward pre-hook reads each memory block's input, and a probe on the
attention module (``attention.PROBE_ATTR``) reads the query and the prefix keys; both are removed after.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn

from ..attention import PREFIX_ATTR, PROBE_ATTR
from ..errors import MemtuneError
from ..methods.memory import MemoryMethod
from ..methods.prefix import PrefixMethod
from ..tuning import state_of

PANEL_NAMES = {"prefix": "attention memory (prefix, Eq. 9)", "ffn": "FFN memory (Eq. 8)"}


@dataclass(frozen=True)
class Memory:
    """One external memory of one layer: ``kind`` "prefix" (MT-M) or "ffn" (MT-F); ``module`` is what is
    observed (the attention module carrying the prefix, or the FFN memory block)."""

    kind: str
    layer: int
    module: nn.Module
    size: int  # l prefix positions or k slots: the dimension of each observed score vector

    @property
    def name(self) -> str:
        return f"{PANEL_NAMES[self.kind]}, layer {self.layer}"


def memories(model: nn.Module, layer: int) -> list[Memory]:
    """The external memories of ``layer`` (negative counts from the last layer), prefix first."""
    state = state_of(model)
    tuned = sorted({i for m in state.methods.values() if isinstance(m, (PrefixMethod, MemoryMethod)) for i in m.layer_indices})
    if not tuned:
        raise MemtuneError(
            f"the model has no external memory to look at (methods: {', '.join(state.methods)}); "
            f"visualize needs MT-M (prefix), MT-F (memory) or MT-MF"
        )
    n_layers = state.dims.layers
    index = layer + n_layers if layer < 0 else layer
    found = []
    for method in state.methods.values():
        if isinstance(method, PrefixMethod) and index in method.layer_indices:
            j = method.layer_indices.index(index)
            site = next((m for m in model.modules() if getattr(m, PREFIX_ATTR, None) == (method, j)), None)
            if site is None:
                raise MemtuneError(f"the prefix of layer {index} is not installed through the attention interface "
                                   f"({type(model).__name__}); visualize cannot observe it")  # fmt: skip
            found.append(Memory("prefix", index, site, method.length))
        if isinstance(method, MemoryMethod) and index in method.layer_indices:
            found.append(Memory("ffn", index, method.blocks[str(index)], method.config.num_slots))
    if not found:
        raise MemtuneError(f"layer {layer} ({index} of 0..{n_layers - 1}) has no external memory; tuned layers: {tuned}")
    return sorted(found, key=lambda m: m.kind != "prefix")


def prefix_scores(query: torch.Tensor, prefix_key: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """softmax(q K_P^T) over the prefix positions (Eq. 9's second term), averaged over heads: (B, T, l).

    ``query`` (B, H, T, hd); ``prefix_key`` (H_kv, l, hd) or (B, H_kv, l, hd) (grouped heads share one)."""
    heads, kv_heads = query.shape[1], prefix_key.shape[-3]
    key = prefix_key.repeat_interleave(heads // kv_heads, dim=-3)  # (..., H, l, hd)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2).to(query.dtype)) * scale  # (B, H, T, l)
    return scores.softmax(dim=-1).mean(dim=1)


@contextlib.contextmanager
def observing(found: list[Memory]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """While inside, every forward pass appends each memory's scores, (B, T, size), to ``store[kind]``."""
    store: dict[str, list[torch.Tensor]] = {m.kind: [] for m in found}
    handles: list[Any] = []
    for memory in found:
        if memory.kind == "ffn":
            block = memory.module

            def read_block(module, args, block=block):
                store["ffn"].append(block.scores(args[0]).detach().float().cpu())

            handles.append(block.register_forward_pre_hook(read_block))
        else:

            def read_prefix(query, prefix_key, scaling):
                store["prefix"].append(prefix_scores(query, prefix_key, scaling).detach().float().cpu())

            setattr(memory.module, PROBE_ATTR, read_prefix)
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()
        for memory in found:
            if memory.kind == "prefix":
                delattr(memory.module, PROBE_ATTR)

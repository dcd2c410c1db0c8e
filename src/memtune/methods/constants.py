"""Input-independent tensors computed once for inference, recomputed the moment their inputs change.

The memory's keys and values (K = M W_key, V = M W_value) and a reparameterised prefix do not depend on
the input: during training they must be recomputed every step (their graph carries the gradient), but
with gradients off (evaluation, ``generate()``) each decoding step would otherwise redo them in every
layer. ``ConstantCache`` keeps them while nothing they are computed from has changed: its stamp is each
source tensor's storage, version counter (bumped by every in-place update: an optimiser step,
``load_state_dict``, ``copy_``), device, dtype and shape. With gradients on it never caches (the plain path).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def _stamp(sources: Sequence[torch.Tensor | None]) -> tuple:
    return tuple(
        None if t is None else (t.data_ptr(), t._version, t.device, t.dtype, tuple(t.shape)) for t in sources
    )


class ConstantCache:
    """One cached value computed from ``sources``; ``get`` returns it, recomputing when a source changed."""

    def __init__(self) -> None:
        self._stamp: tuple | None = None
        self._value: object = None

    def get(self, sources: Sequence[torch.Tensor | None], compute: Callable[[], object]) -> object:
        if torch.is_grad_enabled():  # training: the value must carry its graph
            self.clear()
            return compute()
        stamp = _stamp(sources)
        if stamp != self._stamp:
            self._value, self._stamp = compute(), stamp
        return self._value

    def clear(self) -> None:
        self._stamp, self._value = None, None

    def __deepcopy__(self, memo: dict) -> "ConstantCache":  # a copied model recomputes from its own tensors
        return ConstantCache()

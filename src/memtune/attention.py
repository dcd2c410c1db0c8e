"""Seams through which prefixes (MT-M) reach a model's self-attention, without copying model code.

``interface``: transformers 5 models call ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``.
memtune registers ``memtune_sdpa`` / ``memtune_eager`` (with the matching mask functions) that prepend
the prefix keys/values of the calling module, if it has one, and then call the original function. The
prefix is added after the KV-cache update and after rotary embeddings, so it never enters the cache and
takes no positions.

``projection``: for models that compute attention themselves (MPNet): l zero rows are prepended to the
attention's input, the key/value projections' outputs for those rows are replaced by the prefix, the
additive mask and position bias are widened with zeros, and the l extra query rows are dropped from
the output.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .arch import ArchSpec, submodule
from .errors import ArchitectureError

PROBE_ATTR = "_memtune_prefix_probe"  # set by visualize.scores: called with (query, prefix keys, scaling)
PREFIX_ATTR = "_memtune_prefix"  # (PrefixMethod, tuned-layer index j) on a self-attention module
SUPPORTED_INNER = ("sdpa", "eager")
_REGISTERED: set[str] = set()


def prefix_mask(
    mask: torch.Tensor | None, q_len: int, kv_len: int, prefix_len: int, causal: bool, additive_dtype: torch.dtype | None
) -> torch.Tensor | None:
    """The attention mask for keys [prefix; keys]: every query sees the whole prefix.

    ``mask`` is the model's mask for the original keys (bool: True = attend; float: additive) or None.
    With None and a causal layer, transformers meant SDPA's ``is_causal`` for the original keys (aligned
    top-left: query i sees key j iff j <= i; keys only outnumber queries then when prefilling an empty
    static cache). That mask is built explicitly for the original keys, and the prefix columns are put
    in front: SDPA's own ``is_causal`` over [prefix; keys] would hide the prefix from early queries.
    ``additive_dtype`` converts a built bool mask to an additive one (for eager attention).
    """
    if mask is None:
        if not causal or q_len == 1:
            return None  # every key visible
        mask = torch.ones(q_len, kv_len, dtype=torch.bool).tril()[None, None]  # (1, 1, q, kv)
        if additive_dtype is not None:
            mask = torch.zeros(mask.shape, dtype=additive_dtype).masked_fill(~mask, torch.finfo(additive_dtype).min)
    visible = True if mask.dtype == torch.bool else 0.0
    prefix = torch.full((*mask.shape[:-1], prefix_len), visible, dtype=mask.dtype, device=mask.device)
    return torch.cat([prefix, mask], dim=-1)  # (..., q, l + kv)


def one_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    prefix_key: torch.Tensor,
    prefix_value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """SDPA over keys [prefix; key] for one query token (a cached decoding step), without concatenating
    the keys: the prefix's and the keys' scores are normalised together, and the two value sums added.

    Concatenating copies the whole cache in every layer at every step (the dominant cost of a prefix
    in decoding); scoring the two parts apart reads it once, as SDPA does. Query heads are grouped over
    the key/value heads (GQA) instead of repeating the keys. ``query``: (B, H, 1, hd); ``key``/``value``:
    (B, H_kv, T, hd); prefix: (H_kv, l, hd) or (B, H_kv, l, hd); ``mask`` bool (True = attend) or additive,
    broadcastable to (B, H, 1, T). Returns (B, 1, H, hd), as transformers' attention functions do.
    """
    batch, heads, _, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    q = query.reshape(batch, kv_heads, groups, head_dim) * (head_dim**-0.5 if scaling is None else scaling)
    prefix_scores = torch.matmul(q, prefix_key.to(q.dtype).transpose(-1, -2))  # (B, H_kv, g, l)
    scores = torch.matmul(q, key.transpose(-1, -2))  # (B, H_kv, g, T)
    if mask is not None:
        if mask.shape[1] == heads and groups > 1:  # a per-head mask, grouped like the query
            mask = mask.reshape(mask.shape[0], kv_heads, groups, mask.shape[-1])
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    length = prefix_scores.shape[-1]
    probs = torch.cat([prefix_scores, scores], dim=-1).softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs[..., :length], prefix_value.to(q.dtype)) + torch.matmul(probs[..., length:], value)
    return out.reshape(batch, 1, heads, value.shape[-1])  # (B, H_kv, g, hd_v) -> (B, 1, H, hd_v): the same memory order


def _one_query_fast_path(inner: str, query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> bool:
    """Whether a call can take :func:`one_query_attention`: SDPA's plain semantics (no dropout, bias,
    soft-capping, sinks or paged cache), one query token, query heads a multiple of the key heads."""
    return (
        inner == "sdpa"
        and query.shape[2] == 1
        and query.shape[1] % key.shape[1] == 0
        and not kwargs.get("dropout")
        and all(kwargs.get(name) is None for name in ("position_bias", "softcap", "s_aux", "sinks", "cache"))
    )


def _eager_function(module: nn.Module) -> Callable:
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise ArchitectureError(
            f"{type(module).__module__} defines no eager_attention_forward; load the model with attn_implementation='sdpa'"
        )
    return fn


def _make_attention(inner: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, **kwargs):
        site = getattr(module, PREFIX_ATTR, None)
        if site is not None:
            method, j = site
            prefix_key, prefix_value = method.key_values(j)  # (H_kv, l, hd) each, or (B, H_kv, l, hd) gated
            probe = getattr(module, PROBE_ATTR, None)
            if probe is not None:  # memtune visualize: the prefix part of Eq. (9), observed
                probe(query, prefix_key, kwargs.get("scaling"))
            if _one_query_fast_path(inner, query, key, kwargs):
                mask = None if attention_mask is None else attention_mask.to(query.device)
                return one_query_attention(query, key, value, prefix_key, prefix_value, mask, kwargs.get("scaling")), None
            batch = key.shape[0]
            causal = kwargs.get("is_causal")
            causal = getattr(module, "is_causal", True) if causal is None else causal
            attention_mask = prefix_mask(
                attention_mask,
                query.shape[2],
                key.shape[2],
                prefix_key.shape[-2],
                bool(causal),
                query.dtype if inner == "eager" else None,
            )
            if attention_mask is not None:
                attention_mask = attention_mask.to(query.device)
            bias = kwargs.get("position_bias")  # T5's relative position bias (B|1, H, q, T): none for the prefix
            if isinstance(bias, torch.Tensor) and bias.shape[-1] == key.shape[2]:
                kwargs = {**kwargs, "position_bias": F.pad(bias, (prefix_key.shape[-2], 0))}
            key = torch.cat([prefix_key.to(key.dtype).expand(batch, -1, -1, -1), key], dim=2)  # (B, H_kv, l+T, hd)
            value = torch.cat([prefix_value.to(value.dtype).expand(batch, -1, -1, -1), value], dim=2)
        fn = _eager_function(module) if inner == "eager" else ALL_ATTENTION_FUNCTIONS[inner]
        return fn(module, query, key, value, attention_mask, **kwargs)

    attention.__name__ = f"memtune_{inner}_attention"
    return attention


def _register(inner: str) -> str:
    """Register ``memtune_<inner>`` (attention + mask function) once; return its name."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    name = f"memtune_{inner}"
    if name not in _REGISTERED:
        AttentionInterface.register(name, _make_attention(inner))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
        _REGISTERED.add(name)
    return name


def _configs(model: nn.Module) -> list[Any]:
    from transformers import PretrainedConfig

    seen: dict[int, Any] = {id(model.config): model.config}
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            seen.setdefault(id(config), config)
    return list(seen.values())


class SetAttr:
    """Sets ``obj.name = value`` now; ``remove()`` puts back what was there. An object, not a closure,
    so that ``copy.deepcopy`` of a model maps it onto the copy's modules and configs."""

    _ABSENT = object()

    def __init__(self, obj: Any, name: str, value: Any):
        self.obj, self.name, self.before = obj, name, getattr(obj, name, self._ABSENT)
        setattr(obj, name, value)

    def remove(self) -> None:
        if self.before is self._ABSENT:
            delattr(self.obj, self.name)
        else:
            setattr(self.obj, self.name, self.before)


def use_prefix_attention(model: nn.Module) -> list[SetAttr]:
    """Route the model's attention through memtune's registered function; the handles restore it."""
    current = model.config._attn_implementation or "eager"
    if current.startswith("memtune_"):
        return []  # another prefix method already switched it
    if current not in SUPPORTED_INNER:
        raise ArchitectureError(
            f"memtune prefixes work with attn_implementation 'sdpa' or 'eager'; this model uses {current!r}. "
            f"Load it with from_pretrained(..., attn_implementation='sdpa')."
        )
    name = _register(current)
    configs = [c for c in _configs(model) if (c._attn_implementation or "eager") == current]
    return [SetAttr(config, "_attn_implementation", name) for config in configs]


def install_interface_prefix(attention: nn.Module, method: nn.Module, j: int) -> SetAttr:
    """Mark ``attention`` so the registered function prepends ``method``'s layer-j prefix."""
    if hasattr(attention, PREFIX_ATTR):
        raise ArchitectureError(f"{type(attention).__name__} already carries a memtune prefix")
    return SetAttr(attention, PREFIX_ATTR, (method, j))


def _widen(t: Any, length: int, seq_len: int) -> Any:
    """Pad a 4-D additive mask / position bias with ``length`` visible rows and columns in front."""
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        return t
    visible = True if t.dtype == torch.bool else 0
    if t.shape[-1] == seq_len:
        t = F.pad(t, (length, 0), value=visible)
    if t.shape[-2] == seq_len:
        t = F.pad(t, (0, 0, length, 0), value=visible)
    return t


def install_projection_prefix(attention: nn.Module, arch: ArchSpec, method: nn.Module, j: int) -> list[Any]:
    """The ``projection`` seam (see the module docstring) for one self-attention module."""
    length = method.length
    key_proj = submodule(attention, arch.key_proj, "the key projection")
    value_proj = submodule(attention, arch.value_proj, "the value projection")

    def widen_inputs(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seq_len = hidden.shape[1]
        padded = torch.cat([hidden.new_zeros(hidden.shape[0], length, hidden.shape[2]), hidden], dim=1)
        args = tuple(_widen(a, length, seq_len) for a in args[1:])
        kwargs = {k: _widen(v, length, seq_len) for k, v in kwargs.items() if k != "hidden_states"}
        return (padded, *args), kwargs

    def replace_rows(index: int):
        def hook(module, inputs, output):
            prefix = method.key_values(j)[index]  # (H, l, hd), or (B, H, l, hd) when gated
            prefix = prefix.transpose(-3, -2).flatten(-2).to(output.dtype)  # (l, H*hd) or (B, l, H*hd)
            return torch.cat([prefix.expand(output.shape[0], -1, -1), output[:, length:]], dim=1)

        return hook

    def drop_prefix_rows(module, args, kwargs, output):
        if isinstance(output, torch.Tensor):
            return output[:, length:]
        first, *rest = output
        rest = [r[:, :, length:] if isinstance(r, torch.Tensor) and r.dim() == 4 else r for r in rest]
        return (first[:, length:], *rest)

    return [
        attention.register_forward_pre_hook(widen_inputs, with_kwargs=True),
        key_proj.register_forward_hook(replace_rows(0)),
        value_proj.register_forward_hook(replace_rows(1)),
        attention.register_forward_hook(drop_prefix_rows, with_kwargs=True),
    ]

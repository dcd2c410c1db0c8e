"""The one place that knows where a model's modules are: inferred from its structure, with a table of
overrides keyed by ``config.model_type`` for the layouts inference cannot read.

Every method asks this module where a transformer block's feed-forward output, self-attention and
projections are; nothing else in memtune names a model's modules.

Inference (:func:`infer_arch`) reads what transformers' models share:

- the layer stack: the shallowest ``ModuleList`` of ``num_hidden_layers`` blocks of one class that hold a
  self-attention;
- the self-attention: the module of the block (not a cross-attention) whose children are the query, key
  and value projections (``q_proj``/``query``/``q``/``q_lin``/...) or one fused projection
  (``c_attn``, ``query_key_value``, ``qkv_proj``, ``Wqkv``); the prefix seam is ``interface`` when its
  ``forward`` calls transformers' attention interface, none otherwise (memories, adapters and LoRA still work);
- the FFN: BERT's ``intermediate`` / ``output`` pair (output before add & norm: ``output.dropout``), else
  the shallowest module named ``mlp``/``ffn``/``feed_forward``/``DenseReluDense`` or whose class is an
  MLP / FFN / FeedForward holding two or more weight matrices, else OPT's ``fc1`` / ``fc2``;
- positions (for ``PrefixConfig(shift_positions=True)`` only): a ``rotary_emb`` module, else a plain
  ``nn.Embedding`` named ``position_embeddings``/``wpe``.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, dataclass, fields

import torch.nn as nn

from .errors import ArchitectureError


PREFIX_SEAMS = ("interface", "projection", "none")


@dataclass(frozen=True)
class ArchSpec:
    """Where the methods hook into one architecture.

    Paths are dotted attribute paths: ``layers`` from ``model.base_model``; the others from one
    transformer block (an element of ``layers``).
    """

    layers: str
    """ModuleList of transformer blocks, e.g. ``encoder.layer``."""
    ffn_output: str
    """Module whose output is the FFN output H, after its dropout and before the residual add
    (and, for post-norm models, before the add & norm). Memory-tuning Eq. (7) updates this H."""
    self_attention: str
    """Self-attention module (never a cross-attention one). Prefixes are prepended to its keys and values."""
    ffn_input: str
    """Module whose *input* is the FFN's input (the attention block's output), for parallel adapters."""
    query_proj: str
    """Query projection inside ``self_attention`` (LoRA's default target with ``value_proj``)."""
    value_proj: str
    """Value projection inside ``self_attention``."""
    key_proj: str | None = None
    """Key projection inside ``self_attention``; only needed for the ``projection`` prefix seam."""
    prefix_seam: str = "interface"
    """``interface``: the model calls transformers' attention interface, where memtune prepends the
    prefix. ``projection``: the model computes attention itself; the prefix is prepended to the
    outputs of ``key_proj``/``value_proj`` and the additive mask / position bias are widened.
    ``none``: no seam is known; prefix methods are refused with a message, the others work."""
    norm: str = "post"
    """``post`` (BERT-style add & norm after each sub-block) or ``pre`` (GPT-2 / Llama)."""
    positions: str | None = None
    """Module, from ``model.base_model``, that is called with the position ids: an ``nn.Embedding`` of
    absolute positions (its input), or a rotary embedding called as ``(x, position_ids)``. Only
    ``PrefixConfig(shift_positions=True)`` needs it."""

    def __post_init__(self):
        if self.prefix_seam not in PREFIX_SEAMS:
            raise ArchitectureError(f"ArchSpec.prefix_seam must be one of {', '.join(PREFIX_SEAMS)}, got {self.prefix_seam!r}")
        if self.prefix_seam == "projection" and not self.key_proj:
            raise ArchitectureError("ArchSpec with prefix_seam='projection' needs key_proj and value_proj")
        if self.norm not in ("post", "pre"):
            raise ArchitectureError(f"ArchSpec.norm must be 'post' or 'pre', got {self.norm!r}")


ARCHITECTURES: dict[str, ArchSpec] = {
    # MPNet computes attention itself (no attention interface): the prefix enters through its projections.
    "mpnet": ArchSpec(
        layers="encoder.layer",
        ffn_output="output.dropout",
        self_attention="attention.attn",
        ffn_input="intermediate",
        query_proj="q",
        value_proj="v",
        key_proj="k",
        prefix_seam="projection",
        positions="embeddings.position_embeddings",
    ),
}
"""Overrides by ``config.model_type``, for layouts :func:`infer_arch` cannot read; every other model's
ArchSpec is inferred."""


def register_architecture(model_type: str, spec: ArchSpec) -> None:
    """Teach memtune a new ``config.model_type`` (or override a known one)."""
    if not isinstance(spec, ArchSpec):
        raise ArchitectureError(f"register_architecture needs an ArchSpec, got {type(spec).__name__}")
    ARCHITECTURES[model_type] = spec


def arch_for(model: nn.Module, arch: ArchSpec | None = None) -> ArchSpec:
    """The ArchSpec for ``model``: the one given, else the table's for its ``model_type``, else inferred."""
    if arch is not None:
        if not isinstance(arch, ArchSpec):
            raise ArchitectureError(f"arch must be a memtune.ArchSpec, got {type(arch).__name__}")
        return arch
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    return infer_arch(model)


_QUERY = ("q_proj", "query", "q", "q_lin", "query_proj", "wq")
_KEY = ("k_proj", "key", "k", "k_lin", "key_proj", "wk")
_VALUE = ("v_proj", "value", "v", "v_lin", "value_proj", "wv")
_FUSED = ("c_attn", "query_key_value", "qkv_proj", "Wqkv", "qkv")
_CROSS = ("cross", "encdec", "encoder_attn")
_FFN_NAMES = ("mlp", "ffn", "feed_forward", "DenseReluDense")
_FFN_CLASS = re.compile(r"(MLP|FFN|FeedForward|DenseActDense|DenseGatedActDense|SparseMoeBlock)$")
_INTERFACE_NAMES = {"ALL_ATTENTION_FUNCTIONS", "get_interface"}


def infer_arch(model: nn.Module) -> ArchSpec:
    """Read an ArchSpec off ``model``'s structure (see the module docstring), or say what could not be found."""
    base = getattr(model, "base_model", model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        layers = _layer_stack(base, _layer_count(model))
        block = submodule(base, layers, "the list of transformer layers")[0]
        attention, (query, key, value) = _self_attention(block)
        ffn_output, ffn_input, norm = _feed_forward(block, attention)
    except ArchitectureError as e:
        names = ", ".join(f.name for f in fields(ArchSpec) if f.default is MISSING)
        raise ArchitectureError(
            f"memtune could not read the layout of {type(model).__name__} (model_type {model_type!r}): {e} Point the "
            f"methods at its modules with memtune.attach(model, config, arch=memtune.ArchSpec({names}, ...)) or "
            f"memtune.register_architecture({model_type!r}, ArchSpec(...))."
        ) from None
    interface = _uses_attention_interface(submodule(block, attention, "the self-attention"))
    return ArchSpec(
        layers=layers,
        ffn_output=ffn_output,
        self_attention=attention,
        ffn_input=ffn_input,
        query_proj=query,
        value_proj=value,
        key_proj=key,
        prefix_seam="interface" if interface else "none",
        norm=norm,
        positions=_positions(base),
    )


def _layer_count(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ArchitectureError("its config gives no number of layers (num_hidden_layers).")


def _layer_stack(base: nn.Module, count: int) -> str:
    stacks = [
        name
        for name, module in base.named_modules()
        if name and isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1
        and _has_self_attention(module[0])
    ]  # fmt: skip
    stacks = [s for s in stacks if not any(s.startswith(other + ".") for other in stacks)]  # not the lists inside a block
    tops = sorted({s.split(".")[0] for s in stacks})
    if len(tops) > 1:
        raise ArchitectureError(
            f"it has stacks of blocks under {', '.join(tops)} ({', '.join(stacks)}): an encoder-decoder? memtune tunes one "
            f"stack; say which in ArchSpec(layers=...), or load the encoder or decoder alone."
        )
    candidates = [s for s in stacks if len(submodule(base, s, "a list of layers")) == count]
    if not candidates:
        raise ArchitectureError(f"no list of {count} identical blocks with a self-attention was found.")
    depth = min(name.count(".") for name in candidates)
    shallowest = [name for name in candidates if name.count(".") == depth]
    if len(shallowest) > 1:
        raise ArchitectureError(
            f"it has several stacks of {count} layers ({', '.join(shallowest)}): an encoder-decoder? memtune tunes "
            f"one stack; say which in ArchSpec(layers=...)."
        )
    return shallowest[0]


def _projections(module: nn.Module) -> tuple[str, str | None, str] | None:
    """(query, key, value) child names of an attention module; (fused, None, fused) for a fused projection."""
    children = {name for name, child in module.named_children() if _is_weight_module(child)}
    for q, k, v in zip(_QUERY, _KEY, _VALUE):
        if {q, k, v} <= children:
            return q, k, v
    fused = [name for name in _FUSED if name in children]
    return (fused[0], None, fused[0]) if fused else None


def _is_weight_module(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return weight is not None and getattr(weight, "dim", lambda: 0)() == 2 and not isinstance(module, nn.Embedding)


def _is_cross(name: str) -> bool:
    return any(marker in name.lower() for marker in _CROSS)


def _has_self_attention(block: nn.Module) -> bool:
    return any(name and not _is_cross(name) and _projections(m) for name, m in block.named_modules())


def _self_attention(block: nn.Module) -> tuple[str, tuple[str, str | None, str]]:
    found = [(name, proj) for name, m in block.named_modules() if name and not _is_cross(name) and (proj := _projections(m))]
    if not found:
        raise ArchitectureError(f"no self-attention (query/key/value projections) was found in {type(block).__name__}.")
    if len(found) > 1:
        raise ArchitectureError(
            f"{type(block).__name__} holds several attention modules ({', '.join(n for n, _ in found)}); say which is "
            f"the self-attention in ArchSpec(self_attention=...)."
        )
    return found[0]


def _weight_matrices(module: nn.Module) -> int:
    return sum(1 for p in module.parameters() if p.dim() >= 2)


def _feed_forward(block: nn.Module, attention: str) -> tuple[str, str, str]:
    """(ffn_output, ffn_input, norm) of one block."""
    children = dict(block.named_children())
    if "intermediate" in children and isinstance(getattr(children.get("output"), "dropout", None), nn.Dropout):
        return "output.dropout", "intermediate", "post"  # BERT's FFN: dense + dropout, then add & norm
    norm = "post" if "output_layer_norm" in children else "pre"  # DistilBERT norms after each sub-block
    for name, module in block.named_modules():
        inside_or_around = name == attention or name.startswith(attention + ".") or attention.startswith(name + ".")
        if not name or inside_or_around or _weight_matrices(module) < 2:  # nothing holding the attention is the FFN
            continue
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):  # never called: a hook on it would never fire
            continue
        if name.split(".")[-1] in _FFN_NAMES or _FFN_CLASS.search(type(module).__name__):
            if "residual" in inspect.signature(module.forward).parameters:
                raise ArchitectureError(
                    f"the feed-forward module '{name}' ({type(module).__name__}) adds the residual itself, so its output "
                    f"is not the FFN output H; point ArchSpec(ffn_output=...) at the module before the residual add."
                )
            return name, name, norm
    if {"fc1", "fc2"} <= set(children):
        return "fc2", "fc1", norm  # OPT: the FFN's two linears sit on the block itself
    raise ArchitectureError(f"no feed-forward module (mlp, ffn, intermediate/output, fc1/fc2) was found in {type(block).__name__}.")


def _uses_attention_interface(attention: nn.Module) -> bool:
    """Whether the module's forward looks its attention function up in transformers' attention interface."""
    code = getattr(type(attention).forward, "__code__", None)
    return bool(code is not None and _INTERFACE_NAMES & set(code.co_names))


def _positions(base: nn.Module) -> str | None:
    """The module called with position ids: a rotary embedding, else a plain table of absolute positions."""
    modules = list(base.named_modules())
    for name, module in modules:
        if name.split(".")[-1] == "rotary_emb" and name.count(".") <= 1:
            return name
    for name, module in modules:
        if type(module) is nn.Embedding and name.split(".")[-1] in ("position_embeddings", "wpe"):
            return name
    return None


def submodule(root: nn.Module, path: str, what: str) -> nn.Module:
    """``root.<path>``, or an ArchitectureError that says which part of the path is missing."""
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise ArchitectureError(
                f"{type(root).__name__} has no module '{path}' ({what}): '{part}' is missing under "
                f"{type(module).__name__}. Pass an ArchSpec whose paths match this model."
            )
        module = getattr(module, part)
    if not isinstance(module, nn.Module):
        raise ArchitectureError(f"'{path}' ({what}) in {type(root).__name__} is not a module")
    return module


def blocks(model: nn.Module, spec: ArchSpec) -> list[nn.Module]:
    """The transformer blocks of ``model``, in order."""
    layers = submodule(model.base_model, spec.layers, "the list of transformer layers")
    if not isinstance(layers, (nn.ModuleList, nn.Sequential)):
        raise ArchitectureError(f"'{spec.layers}' is a {type(layers).__name__}, not a ModuleList of layers")
    return list(layers)


@dataclass(frozen=True)
class Dims:
    """The dimensions methods and parameter formulas need (the paper's d, L, heads)."""

    hidden: int  # d
    layers: int  # L
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def kv_dim(self) -> int:
        """Width of one layer's keys (= d for multi-head attention, smaller with grouped queries)."""
        return self.kv_heads * self.head_dim


def dims_of(model: nn.Module, spec: ArchSpec) -> Dims:
    config = model.config
    heads = int(config.num_attention_heads)
    hidden = int(config.hidden_size)
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or hidden // heads
    return Dims(
        hidden=hidden,
        layers=len(blocks(model, spec)),
        heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(head_dim),
        vocab=int(getattr(config, "vocab_size", 0) or 0),
    )

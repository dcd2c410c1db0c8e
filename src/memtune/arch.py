"""The one place that knows architecture-specific module names, keyed by ``config.model_type``.

Every method asks this module where a transformer block's feed-forward output, self-attention and
projections are; nothing else in memtune names a model's modules.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch.nn as nn

from .errors import ArchitectureError


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
    outputs of ``key_proj``/``value_proj`` and the additive mask / position bias are widened."""
    norm: str = "post"
    """``post`` (BERT-style add & norm after each sub-block) or ``pre`` (GPT-2 / Llama)."""
    positions: str | None = None
    """Module, from ``model.base_model``, that is called with the position ids: an ``nn.Embedding`` of
    absolute positions (its input), or a rotary embedding called as ``(x, position_ids)``. Only
    ``PrefixConfig(shift_positions=True)`` needs it."""

    def __post_init__(self):
        if self.prefix_seam not in ("interface", "projection"):
            raise ArchitectureError(f"ArchSpec.prefix_seam must be 'interface' or 'projection', got {self.prefix_seam!r}")
        if self.prefix_seam == "projection" and not self.key_proj:
            raise ArchitectureError("ArchSpec with prefix_seam='projection' needs key_proj and value_proj")
        if self.norm not in ("post", "pre"):
            raise ArchitectureError(f"ArchSpec.norm must be 'post' or 'pre', got {self.norm!r}")


_BERT_LIKE = ArchSpec(
    layers="encoder.layer",
    ffn_output="output.dropout",
    self_attention="attention.self",
    ffn_input="intermediate",
    query_proj="query",
    value_proj="value",
    key_proj="key",
    positions="embeddings.position_embeddings",
)
_LLAMA_LIKE = ArchSpec(
    layers="layers",
    ffn_output="mlp",
    self_attention="self_attn",
    ffn_input="mlp",
    query_proj="q_proj",
    value_proj="v_proj",
    key_proj="k_proj",
    norm="pre",
    positions="rotary_emb",
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
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
    "gpt2": ArchSpec(
        layers="h",
        ffn_output="mlp",
        self_attention="attn",
        ffn_input="mlp",
        query_proj="c_attn",  # fused q/k/v Conv1D
        value_proj="c_attn",
        norm="pre",
        positions="wpe",
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
}


def register_architecture(model_type: str, spec: ArchSpec) -> None:
    """Teach memtune a new ``config.model_type`` (or override a known one)."""
    if not isinstance(spec, ArchSpec):
        raise ArchitectureError(f"register_architecture needs an ArchSpec, got {type(spec).__name__}")
    ARCHITECTURES[model_type] = spec


def arch_for(model: nn.Module, arch: ArchSpec | None = None) -> ArchSpec:
    """The ArchSpec for ``model``: the one given, else the registered one for its ``model_type``."""
    if arch is not None:
        if not isinstance(arch, ArchSpec):
            raise ArchitectureError(f"arch must be a memtune.ArchSpec, got {type(arch).__name__}")
        return arch
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    names = ", ".join(f.name for f in fields(ArchSpec) if f.default is not None)
    raise ArchitectureError(
        f"memtune does not know the architecture {model_type!r}. Supported: {', '.join(sorted(ARCHITECTURES))}. "
        f"Point the methods at its modules explicitly with memtune.attach(model, config, "
        f"arch=memtune.ArchSpec({names}, ...)) or memtune.register_architecture({model_type!r}, ArchSpec(...))."
    )


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
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return Dims(
        hidden=hidden,
        layers=len(blocks(model, spec)),
        heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(head_dim),
        vocab=int(getattr(config, "vocab_size", 0) or 0),
    )

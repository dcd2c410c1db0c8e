"""MT-M: prefix tuning seen as memory on attention (Memory-Tuning Sec. III-B, Eq. 9).

P-tuning v2 with reparameterisation: Embedding(l, d) -> Linear(d, m) -> tanh -> Linear(m, 2 L d) gives
per-layer, per-head key and value prefixes prepended in every self-attention layer. After training
the reparameterisation is dropped and only the l x 2 x L x d prefix is stored.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch import ArchSpec, Dims, blocks, submodule
from ..attention import install_interface_prefix, install_projection_prefix, use_prefix_attention
from ..compat import cache_from, cached_length
from ..errors import ArchitectureError, ConfigError, MemtuneError
from .base import HookHandles, MethodConfig, TunedMethod, help_field, positive_int, probability, register_method
from .constants import ConstantCache


@register_method
@dataclass
class PrefixConfig(MethodConfig):
    """MT-M / prefix tuning: l virtual key/value pairs prepended in each self-attention layer."""

    method = "prefix"
    prefix_length: int = help_field(32, "Prefix length l (paper: 32 for prefix tuning, 16 in MT-MF and MAM).")
    hidden: int | None = help_field(None, "Hidden size m of the reparameterisation network; None = d (paper).")
    reparameterize: bool = help_field(True, "Train through Embedding -> Linear -> tanh -> Linear (P-tuning v2).")
    dropout: float = help_field(0.0, "Dropout on the prefix keys/values while training (authors' code: 0.1).")
    gate: bool = help_field(
        False, "UniPELT: scale each example's prefix keys and values by learned gates (mean over its tokens)."
    )
    shift_positions: bool = help_field(
        False,
        "Give the real tokens positions l, l+1, ... as P-tuning v2, peft and the paper's code do (they pass the "
        "prefix as past_key_values); False keeps the model's own positions 0, 1, ... Position ids passed to the "
        "model are shifted too: pass the ones the model would make itself.",
    )

    def __post_init__(self):
        super().__post_init__()
        positive_int(self.prefix_length, "PrefixConfig.prefix_length (l)")
        if self.hidden is not None:
            positive_int(self.hidden, "PrefixConfig.hidden (m)")
        probability(self.dropout, "PrefixConfig.dropout")

    def formula_symbols(self, hidden: int) -> dict[str, int]:
        return {"l": self.prefix_length, "m": self.hidden or hidden}

    def build(self, model: nn.Module, arch: ArchSpec, dims: Dims) -> "PrefixMethod":
        if arch.prefix_seam == "none":
            raise ArchitectureError(
                f"{type(model).__name__}'s attention does not go through transformers' attention interface, so memtune "
                f"has no seam to prepend a prefix (model_type {getattr(model.config, 'model_type', None)!r}). Memory "
                f"(mt-f), adapters, LoRA and BitFit work on it; for a prefix, load a model whose attention uses the "
                f"interface or give an ArchSpec with prefix_seam='projection' and its key_proj/value_proj."
            )
        return PrefixMethod(self, dims)


class PrefixMethod(TunedMethod):
    """The prefix keys/values of the chosen layers, reparameterised while training."""

    def __init__(self, config: PrefixConfig, dims: Dims):
        super().__init__(config)
        self.layer_indices = config.layer_indices(dims)
        self.length = config.prefix_length
        self.kv_heads, self.head_dim = dims.kv_heads, dims.head_dim
        self.width = 2 * dims.kv_dim  # one layer's key and value, concatenated
        n_layers = len(self.layer_indices)
        if config.reparameterize:
            hidden = config.hidden or dims.hidden
            self.embedding = nn.Embedding(self.length, dims.hidden)  # (l, d)
            self.down = nn.Linear(dims.hidden, hidden)  # d -> m
            self.up = nn.Linear(hidden, n_layers * self.width)  # m -> 2 L d
        else:
            self.prefix = nn.Parameter(torch.randn(n_layers, self.length, self.width))  # (L, l, 2 d)
        if config.gate:  # UniPELT's G_P: one key gate and one value gate per layer, from the layer's input
            self.gates = nn.ModuleDict({str(j): nn.Linear(dims.hidden, 2) for j in range(n_layers)})
        self._gate_values: dict[int, torch.Tensor] = {}
        self._constants = ConstantCache()  # the reparameterised prefix, for inference

    @property
    def reparameterized(self) -> bool:
        return hasattr(self, "embedding")

    def layer_prefix(self, j: int) -> torch.Tensor:
        """The j-th tuned layer's keys and values, flat: (l, 2 d_kv), layout [key | value] x heads."""
        if not self.reparameterized:
            return self.prefix[j]
        if not torch.is_grad_enabled():  # inference: every layer's prefix computed once (ConstantCache)
            sources = (self.embedding.weight, self.down.weight, self.down.bias, self.up.weight, self.up.bias)
            return self._constants.get(sources, self._all_layer_prefixes)[j]
        hidden = torch.tanh(self.down(self.embedding.weight))  # (l, m)
        rows = slice(j * self.width, (j + 1) * self.width)
        return F.linear(hidden, self.up.weight[rows], self.up.bias[rows])  # (l, 2 d_kv)

    def _all_layer_prefixes(self) -> torch.Tensor:
        """(L, l, 2 d_kv): the reparameterisation network's output for every tuned layer at once."""
        hidden = torch.tanh(self.down(self.embedding.weight))  # (l, m)
        return self.up(hidden).view(self.length, len(self.layer_indices), self.width).transpose(0, 1)

    def key_values(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer j's prefix keys and values, each (kv_heads, l, head_dim); (B, kv_heads, l, head_dim) gated."""
        kv = F.dropout(self.layer_prefix(j), self.config.dropout, self.training)
        kv = kv.view(self.length, 2, self.kv_heads, self.head_dim).permute(1, 2, 0, 3)  # (2, H_kv, l, hd)
        if not self.config.gate:
            return kv[0], kv[1]
        gates = self._gate_values[j]  # (B, 2)
        return kv[0] * gates[:, 0, None, None, None], kv[1] * gates[:, 1, None, None, None]  # (B, H_kv, l, hd)

    def remember_gates(self, j: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on layer j's attention: G_P = mean over tokens of sigmoid(x W_g + b_g), (B, 2).

        As in AdapterHub's UniPELT, the mean runs over every position of the input, padding included. It
        depends on the whole input, so cached decoding (which sees only the new tokens) is refused."""
        if cached_length(cache_from(kwargs), getattr(module, "layer_idx", 0) or 0) > 0:
            raise MemtuneError(
                "a gated prefix (UniPELT) averages its gate over the whole input, which cached decoding does not "
                "see; generate with use_cache=False"
            )
        hidden = args[0] if args else kwargs["hidden_states"]  # (B, T, d)
        self._gate_values[j] = torch.sigmoid(self.gates[str(j)](hidden)).mean(dim=1)

    def forget_gates(self, j: int, module: nn.Module, args: tuple, output: object) -> None:
        """Forward hook: drop the gate values once the layer is done (no graph kept between steps)."""
        self._gate_values.pop(j, None)

    def full_prefix(self) -> torch.Tensor:
        """All tuned layers' prefixes, (L, l, 2 d_kv): the stored form."""
        return torch.stack([self.layer_prefix(j) for j in range(len(self.layer_indices))])

    def prepare_stored(self) -> None:
        """Replace the reparameterisation network by the prefix it currently computes."""
        if self.reparameterized:
            with torch.no_grad():
                prefix = self.full_prefix().detach().clone()
            del self.embedding, self.down, self.up
            self.prefix = nn.Parameter(prefix)

    def stored_state(self) -> dict[str, torch.Tensor]:
        gates = {f"gates.{k}": v for k, v in self.gates.state_dict().items()} if self.config.gate else {}
        return {"prefix": self.full_prefix().detach(), **gates}

    def install(self, model: nn.Module, arch: ArchSpec, handles: HookHandles) -> None:
        layers = blocks(model, arch)
        attentions = [submodule(layers[i], arch.self_attention, "the self-attention") for i in self.layer_indices]
        if self.config.gate:  # first, so that the gates see the layer's own input
            for j, attention in enumerate(attentions):
                handles.add(attention.register_forward_pre_hook(partial(self.remember_gates, j), with_kwargs=True))
                handles.add(attention.register_forward_hook(partial(self.forget_gates, j)))
        if self.config.shift_positions:
            handles.add(install_position_shift(model, arch, self.length))
        if arch.prefix_seam == "projection":
            for j, attention in enumerate(attentions):
                handles.extend(install_projection_prefix(attention, arch, self, j))
            return
        handles.extend(use_prefix_attention(model))
        for j, attention in enumerate(attentions):
            handles.add(install_interface_prefix(attention, self, j))


def shifted_positions(position_ids: torch.Tensor, length: int, padding_idx: int | None = None) -> torch.Tensor:
    """Positions as a model gives them with ``length`` cached tokens in front: ``+ length``, except the
    padding index, which RoBERTa-style embeddings give to padding tokens whatever the cache holds."""
    if padding_idx is None:
        return position_ids + length
    return torch.where(position_ids == padding_idx, position_ids, position_ids + length)


_SHIFTED = "_memtune_position_shift"  # set on the position module while a prefix shifts its input


class _PositionShift:
    """The pre-hook that shifts a position module's input by the prefix length, and its removal."""

    def __init__(self, module: nn.Module, length: int):
        self.module, self.length = module, length
        self.handle = module.register_forward_pre_hook(self, with_kwargs=True)
        setattr(module, _SHIFTED, length)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if "position_ids" in kwargs:
            kwargs = {**kwargs, "position_ids": shifted_positions(kwargs["position_ids"], self.length)}
            return args, kwargs
        if isinstance(module, nn.Embedding):  # absolute positions: the input is the ids
            ids = shifted_positions(args[0], self.length, module.padding_idx)
            if not torch.compiler.is_compiling() and ids.numel() and int(ids.max()) >= module.num_embeddings:
                raise MemtuneError(
                    f"with its positions shifted by the prefix length l = {self.length}, the input reaches position "
                    f"{int(ids.max())}, past the model's {module.num_embeddings} position embeddings; use inputs of at "
                    f"most {table_length(module) - self.length} tokens, or PrefixConfig(shift_positions=False)"
                )
            return (ids, *args[1:]), kwargs
        return (args[0], shifted_positions(args[1], self.length), *args[2:]), kwargs  # rotary: (x, position_ids)

    def remove(self) -> None:
        self.handle.remove()
        if hasattr(self.module, _SHIFTED):
            delattr(self.module, _SHIFTED)


def table_length(module: nn.Module) -> int | None:
    """How many token positions an absolute position table holds (RoBERTa's start after its padding
    index); None for rotary embeddings, which have no table."""
    if not isinstance(module, nn.Embedding):
        return None
    return module.num_embeddings - (0 if module.padding_idx is None else module.padding_idx + 1)


def position_module(model: nn.Module, arch: ArchSpec) -> nn.Module:
    if not arch.positions:
        raise ConfigError(
            "PrefixConfig(shift_positions=True) needs to know which module takes the position ids; this architecture's "
            "ArchSpec has no 'positions' path (set ArchSpec(positions=...), or use shift_positions=False)"
        )
    return submodule(model.base_model, arch.positions, "the module called with the position ids")


def install_position_shift(model: nn.Module, arch: ArchSpec, length: int) -> _PositionShift:
    """Shift the positions the model gives its real tokens by ``length`` (refused twice on one model)."""
    module = position_module(model, arch)
    if hasattr(module, _SHIFTED):
        raise ConfigError(
            f"two prefixes shift this model's positions (by {getattr(module, _SHIFTED)} and {length}); "
            "set shift_positions=True on one PrefixConfig only"
        )
    return _PositionShift(module, length)

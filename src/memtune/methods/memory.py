"""MT-F: a learned memory attended by each layer's FFN output (Memory-Tuning, Qi et al. 2024, Sec. III-A).

    Q = H W_query,  K = M W_key,  V = M W_value                     (Eq. 8)
    dH = W_o^T softmax(Q K^T) V            (no 1/sqrt(s) scaling: footnote 2)
    H <- H + dH                            (Eq. 7 with a = b = 1, H the FFN output)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch import ArchSpec, Dims, blocks, submodule
from ..errors import ConfigError
from .base import HookHandles, MethodConfig, TunedMethod, at_most, help_field, positive_int, register_method, shown
from .constants import ConstantCache


MEMORY_INITS = ("zero-out", "authors")
SMALLEST_EPS = torch.finfo(torch.float32).tiny  # a smaller eps rounds to 0 in float32 (LayerNorm of one value: 0/0)


FOLD_ROWS = 256  # up to this many rows per call, the folded form's fewer calls win whatever its FLOPs


class MemoryBlock(nn.Module):
    """One layer's memory: ``forward(h)`` returns dH of Eq. (8).

    Args:
        d_model: hidden size d of the transformer.
        num_slots: number of memory slots k.
        slot_dim: size s of each slot (the bottleneck; the paper's d_m).
        bias: give W_query, W_key, W_value, W_o biases (the authors' code does; Eq. 8 does not).
        layer_norms: the authors' code variant: LayerNorms on h, on Q and on the attention result.
        scale_scores: divide scores by sqrt(s) (Eq. 8 does not: footnote 2).
        init_std: std of the normal initialisation of the memory M (0.02 in the authors' code).
        layer_norm_eps: eps of the three LayerNorms (``layer_norms``): PyTorch's 1e-5 by default, the
            authors' 1e-12 (BERT's) for their variant. At their initial weights the input of the last norm
            has a variance near 1e-8, so the two values give very different dH.
        init: ``"zero-out"`` (default): W_o starts at zero and W_query/W_key/W_value keep PyTorch's
            default, so a fresh block returns dH = 0 and attaching it is an exact no-op.
            ``"authors"``: all four projection weights drawn from N(0, 0.01), biases zero, as the
            authors' code does: not a no-op at attach, but every parameter gets a gradient from step one.
    """

    def __init__(
        self,
        d_model: int,
        num_slots: int,
        slot_dim: int,
        *,
        bias: bool = False,
        layer_norms: bool = False,
        scale_scores: bool = False,
        init_std: float = 0.02,
        layer_norm_eps: float = 1e-5,
        init: str = "zero-out",
    ):
        super().__init__()
        if init not in MEMORY_INITS:
            raise ConfigError(f"MemoryBlock init must be one of {', '.join(MEMORY_INITS)}, got {init!r}")
        positive_int(d_model, "d_model")
        positive_int(num_slots, "num_slots")
        positive_int(slot_dim, "slot_dim")
        self.scale = 1.0 / math.sqrt(slot_dim) if scale_scores else 1.0
        self.memory = nn.Parameter(torch.randn(num_slots, slot_dim) * init_std)  # M: (k, s)
        self.query = nn.Linear(d_model, slot_dim, bias=bias)  # W_query: d -> s
        self.key = nn.Linear(slot_dim, slot_dim, bias=bias)  # W_key: s -> s
        self.value = nn.Linear(slot_dim, slot_dim, bias=bias)  # W_value: s -> s
        self.out = nn.Linear(slot_dim, d_model, bias=bias)  # W_o: s -> d
        projections = (self.query, self.key, self.value, self.out) if init == "authors" else (self.out,)
        for linear in projections:
            if init == "authors":
                nn.init.normal_(linear.weight, 0.0, 0.01)
            else:
                nn.init.zeros_(linear.weight)
            if bias:
                nn.init.zeros_(linear.bias)
        norm = (lambda n: nn.LayerNorm(n, eps=layer_norm_eps)) if layer_norms else (lambda _: nn.Identity())
        self.input_norm = norm(d_model)  # LN1 of the authors' code
        self.query_norm = norm(slot_dim)  # LN2
        self.output_norm = norm(slot_dim)  # LN3
        self._constants = ConstantCache()  # K and V for inference
        self._folded = ConstantCache()  # the folded products for inference

    def key_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) = (M W_key, M W_value), each (k, s): input-independent, so computed once while gradients are
        off and the weights unchanged (``ConstantCache``), every call while training."""
        sources = (self.memory, self.key.weight, self.key.bias, self.value.weight, self.value.bias)
        return self._constants.get(sources, lambda: (self.key(self.memory), self.value(self.memory)))

    @property
    def foldable(self) -> bool:
        """No LayerNorm between W_query and K or between V and W_o: the products fold (``folded``)."""
        return isinstance(self.query_norm, nn.Identity) and isinstance(self.output_norm, nn.Identity)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Eq. (8) with its input-independent products multiplied out, for inference:

            scores = H (W_query^T K^T) + b_query K^T = H A^T + a,   A = K W_query: (k, d)
            dH = softmax(scores) (V W_o^T) + b_o = softmax(scores) C^T + b_o,   C = W_o V^T: (d, k)

        two matrix products per token instead of four. Computed once while gradients are off and the
        weights unchanged (``ConstantCache``)."""
        sources = (self.memory, self.query.weight, self.query.bias, self.key.weight, self.key.bias,
                   self.value.weight, self.value.bias, self.out.weight)  # fmt: skip

        def compute():
            k, v = self.key_values()  # (k, s) each
            score_weight = torch.matmul(k, self.query.weight) * self.scale  # (k, d)
            score_bias = None if self.query.bias is None else torch.matmul(k, self.query.bias) * self.scale  # (k,)
            return score_weight, score_bias, torch.matmul(self.out.weight, v.transpose(0, 1))  # C: (d, k)

        return self._folded.get(sources, compute)

    def fold_pays(self, h: torch.Tensor) -> bool:
        """Whether the folded form is the faster one for ``h``. Folding trades four small products (2sd + 2ks
        multiply-adds per token, k slots of size s) for two of d x k (2dk): fewer FLOPs only when
        dk <= s(d + k). For a few rows (decoding: one token per input) the saved calls count more than the
        FLOPs. Measured here for d = 384, k = 50, s = 32: folded 20% slower on 32 x 128 tokens, 40% faster on
        32 x 1."""
        d, (k, s) = self.out.out_features, self.memory.shape
        return d * k <= s * (d + k) or h.numel() // d <= FOLD_ROWS

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and self.foldable and self.fold_pays(h):  # inference fast path (tested equal to the plain one)
            score_weight, score_bias, out_weight = self.folded()
            scores = F.linear(self.input_norm(h), score_weight, score_bias)  # (..., n, k)
            return F.linear(scores.softmax(dim=-1), out_weight, self.out.bias)  # dH: (..., n, d)
        q = self.query_norm(self.query(self.input_norm(h)))  # (..., n, s)
        k, v = self.key_values()  # (k, s) each
        scores = torch.matmul(q, k.transpose(0, 1))  # (..., n, k)
        if self.scale != 1.0:
            scores = scores * self.scale
        return self.out(self.output_norm(torch.matmul(scores.softmax(dim=-1), v)))  # dH: (..., n, d)

    def update_ffn_output(self, module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
        """Forward hook on the FFN output module: H <- H + dH (Eq. 7, a = b = 1).

        A bound method, not a closure, so that ``copy.deepcopy`` of a model hooks the copy's block."""
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"memtune: the FFN output module {type(module).__name__} returned {type(output).__name__}, not a "
                f"tensor; point ArchSpec.ffn_output at a module that returns the FFN hidden states"
            )
        return output + self(output)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """softmax(Q K^T): how each token attends to the k slots (..., n, k), for visualisation."""
        q = self.query_norm(self.query(self.input_norm(h)))
        return (torch.matmul(q, self.key_values()[0].transpose(0, 1)) * self.scale).softmax(-1)


@register_method
@dataclass
class MemoryConfig(MethodConfig):
    """MT-F: memory on the FFN output of each layer (Eq. 7-8)."""

    method = "memory"
    num_slots: int = help_field(50, "Number of memory slots k (paper: 50).")
    slot_dim: int = help_field(32, "Size s of each slot, the bottleneck (paper: 32 for MT-F, 16 in MT-MF).")
    bias: bool = help_field(False, "Biases on W_query/W_key/W_value/W_o (authors' code: True; Eq. 8: False).")
    layer_norms: bool = help_field(False, "Authors' code variant: three extra LayerNorms inside each block.")
    scale_scores: bool = help_field(False, "Scale scores by 1/sqrt(s) (Eq. 8 does not, footnote 2).")
    init_std: float = help_field(0.02, "Std of the normal initialisation of the memory slots.")
    layer_norm_eps: float = help_field(1e-5, "Eps of the inner LayerNorms (layer_norms=True); the authors use 1e-12.")
    init: str = help_field(
        "zero-out", "'zero-out': W_o = 0, an exact no-op at attach; 'authors': all projections N(0, 0.01), zero biases."
    )
    train_layer_norms: bool = help_field(
        False, "Also train every LayerNorm of the backbone, as the authors' code does (counted as tuned and stored)."
    )

    def __post_init__(self):
        super().__post_init__()
        positive_int(self.num_slots, "MemoryConfig.num_slots (k)")
        positive_int(self.slot_dim, "MemoryConfig.slot_dim (s)")
        # kind and finiteness: check_field_types. A larger std overflows float32 in K = M W_key or in the
        # inner LayerNorms, and the zero-out no-op becomes 0 * inf = nan.
        at_most(self.init_std, 1.0, "MemoryConfig.init_std", "the paper's code uses 0.02")
        if not SMALLEST_EPS <= self.layer_norm_eps < 1:
            raise ConfigError(
                f"MemoryConfig.layer_norm_eps must be a number in [{SMALLEST_EPS:.3g}, 1) (a smaller eps is 0 in float32, "
                f"and a LayerNorm over one slot divides 0 by 0), got {shown(self.layer_norm_eps)}"
            )
        if self.init not in MEMORY_INITS:
            raise ConfigError(f"MemoryConfig.init must be one of {', '.join(repr(i) for i in MEMORY_INITS)}, got {shown(self.init)}")

    @classmethod
    def authors(cls, **overrides: Any) -> "MemoryConfig":
        """The authors' code in full (qiwang1996/Memory-Tuning): biases, three inner LayerNorms with eps
        1e-12, all projections drawn from N(0, 0.01), every backbone LayerNorm trained. Any field can be
        overridden, e.g. ``MemoryConfig.authors(slot_dim=16)``."""
        settings = dict(bias=True, layer_norms=True, layer_norm_eps=1e-12, init="authors", train_layer_norms=True)
        return cls(**{**settings, **overrides})

    def check_model(self, dims: Dims) -> None:
        super().check_model(dims)
        if self.slot_dim > dims.hidden:
            raise ConfigError(
                f"MemoryConfig.slot_dim s={self.slot_dim} exceeds the model's hidden size d={dims.hidden}: the memory "
                f"is a bottleneck (s <= d; the paper uses s = 16 or 32). Lower slot_dim."
            )

    def formula_symbols(self, hidden: int) -> dict[str, int]:
        return {"s": self.slot_dim, "k": self.num_slots}

    def build(self, model: nn.Module, arch: ArchSpec, dims: Dims) -> "MemoryMethod":
        return MemoryMethod(self, dims)


class MemoryMethod(TunedMethod):
    """MemoryBlocks on the FFN outputs of the chosen layers."""

    def __init__(self, config: MemoryConfig, dims: Dims):
        super().__init__(config)
        self.layer_indices = config.layer_indices(dims)
        self.blocks = nn.ModuleDict(
            {
                str(i): MemoryBlock(
                    dims.hidden,
                    config.num_slots,
                    config.slot_dim,
                    bias=config.bias,
                    layer_norms=config.layer_norms,
                    scale_scores=config.scale_scores,
                    init_std=config.init_std,
                    layer_norm_eps=config.layer_norm_eps,
                    init=config.init,
                )
                for i in self.layer_indices
            }
        )

    def install(self, model: nn.Module, arch: ArchSpec, handles: HookHandles) -> None:
        layers = blocks(model, arch)
        for i in self.layer_indices:
            site = submodule(layers[i], arch.ffn_output, "the FFN output")
            handles.add(site.register_forward_hook(self.blocks[str(i)].update_ffn_output))

    def backbone_trainable(self, model: nn.Module, backbone: list[tuple[str, nn.Parameter]]) -> list[str]:
        if not self.config.train_layer_norms:
            return []
        norms = {id(p) for m in model.base_model.modules() if _is_layer_norm(m) for p in m.parameters(recurse=False)}
        return [name for name, p in backbone if id(p) in norms]


def _is_layer_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))

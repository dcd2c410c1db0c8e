"""Bottleneck adapters on the FFN: sequential (Pfeiffer) and scaled parallel (MAM's FFN part).

    dH = s * f(x W_down) W_up                                   (Memory-Tuning Eq. 4; He et al. 2022)
    sequential:  x = H (the FFN output),   H <- H + dH
    parallel:    x = the FFN's input,      H <- H + dH          (scale s = 4 in MAM)

The up-projection starts at zero, so attaching an adapter is an exact no-op. With ``gate`` (UniPELT,
Mao et al. 2022), dH is multiplied by a per-token gate sigmoid(x W_g + b_g).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..arch import ArchSpec, Dims, blocks, submodule
from ..errors import ConfigError
from .base import HookHandles, MethodConfig, TunedMethod, at_most, help_field, positive_int, register_method, shown

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
PLACEMENTS = ("sequential", "parallel")
MAX_SCALE = 1000.0  # far above MAM's 4; a scale beyond the model's float range makes the no-op at attach 0 * inf = nan


def bottleneck(x: torch.Tensor, down: nn.Module, activation: nn.Module, up: nn.Module) -> torch.Tensor:
    """f(x W_down) W_up of Eq. (4). x: (..., n, d) -> (..., n, d) through (..., n, r)."""
    return up(activation(down(x)))


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


class AdapterBlock(nn.Module):
    """One layer's adapter: ``forward(x)`` returns dH."""

    def __init__(self, d_model: int, bottleneck_dim: int, *, activation: str, scale: float, bias: bool, gate: bool):
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck_dim, bias=bias)  # W_down: d -> r
        self.activation = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck_dim, d_model, bias=bias)  # W_up: r -> d, zero: a no-op at attach
        nn.init.zeros_(self.up.weight)
        if bias:
            nn.init.zeros_(self.up.bias)
        self.scale = scale
        self.gate = nn.Linear(d_model, 1) if gate else None  # UniPELT's G_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.scale * bottleneck(x, self.down, self.activation, self.up)
        if self.gate is not None:
            delta = delta * torch.sigmoid(self.gate(x))  # (..., n, 1)
        return delta

    # Hooks are bound methods (not closures) so that copy.deepcopy of a model hooks the copy's block.
    def add_sequential(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the FFN output: H <- H + dH(H)."""
        return output + self(output)

    def add_parallel(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on an FFN module that is both input and output site (GPT-2/Llama ``mlp``)."""
        return output + self(_first_input(args, kwargs))

    def remember_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the FFN's first module: keep its input for ``add_remembered``."""
        self._ffn_input = _first_input(args, kwargs)

    def add_remembered(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the FFN output: H <- H + dH(FFN input), the input kept by ``remember_input``."""
        x = self.__dict__.pop("_ffn_input", None)
        if x is None:
            raise RuntimeError(
                f"memtune: the parallel adapter's FFN output module ({type(module).__name__}) ran without its FFN "
                f"input module running first; check ArchSpec.ffn_input / ffn_output for this model"
            )
        return output + self(x)


@register_method
@dataclass
class AdapterConfig(MethodConfig):
    """A bottleneck adapter per layer on the FFN: Pfeiffer (sequential) or scaled parallel (MAM)."""

    method = "adapter"
    bottleneck: int = help_field(32, "Bottleneck size r (paper: 32 for Adapter, 16 in MAM).")
    placement: str = help_field(
        "sequential", "'sequential': reads and updates the FFN output (Pfeiffer); 'parallel': reads the FFN input."
    )
    scale: float = help_field(1.0, "Scale s of the adapter's output (MAM's scaled parallel adapter: 4).")
    activation: str = help_field("relu", f"Nonlinearity f: one of {', '.join(ACTIVATIONS)}.")
    bias: bool = help_field(True, "Biases on W_down and W_up.")
    gate: bool = help_field(False, "UniPELT: multiply dH by a learned per-token gate sigmoid(x W_g + b_g).")

    def __post_init__(self):
        super().__post_init__()
        positive_int(self.bottleneck, "AdapterConfig.bottleneck (r)")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"AdapterConfig.placement must be one of {PLACEMENTS}, got {shown(self.placement)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"AdapterConfig.activation must be one of {', '.join(ACTIVATIONS)}, got {shown(self.activation)}")
        at_most(self.scale, MAX_SCALE, "AdapterConfig.scale", "MAM uses 4")  # kind and finiteness: check_field_types

    def formula_symbols(self, hidden: int) -> dict[str, int]:
        return {"r": self.bottleneck}

    def build(self, model: nn.Module, arch: ArchSpec, dims: Dims) -> "AdapterMethod":
        return AdapterMethod(self, dims)


class AdapterMethod(TunedMethod):
    """AdapterBlocks on the FFNs of the chosen layers."""

    def __init__(self, config: AdapterConfig, dims: Dims):
        super().__init__(config)
        self.layer_indices = config.layer_indices(dims)
        self.blocks = nn.ModuleDict(
            {
                str(i): AdapterBlock(
                    dims.hidden,
                    config.bottleneck,
                    activation=config.activation,
                    scale=float(config.scale),
                    bias=config.bias,
                    gate=config.gate,
                )
                for i in self.layer_indices
            }
        )

    def install(self, model: nn.Module, arch: ArchSpec, handles: HookHandles) -> None:
        layers = blocks(model, arch)
        for i in self.layer_indices:
            block = self.blocks[str(i)]
            output_site = submodule(layers[i], arch.ffn_output, "the FFN output")
            if self.config.placement == "sequential":
                handles.add(output_site.register_forward_hook(block.add_sequential))
            elif arch.ffn_input == arch.ffn_output:
                handles.add(output_site.register_forward_hook(block.add_parallel, with_kwargs=True))
            else:
                input_site = submodule(layers[i], arch.ffn_input, "the FFN input")
                handles.add(input_site.register_forward_pre_hook(block.remember_input, with_kwargs=True))
                handles.add(output_site.register_forward_hook(block.add_remembered))

"""Methods that train a subset of the backbone's own parameters: full fine-tuning and BitFit.

- Full fine-tuning: every parameter of the pretrained model trains (the paper's top baseline, lr 2e-5).
- BitFit (Ben Zaken et al., ACL 2022): only the bias terms train.

Both add no parameters; they are counted (and saved) through ``backbone_trainable``. With ``layers``,
only the parameters inside those transformer blocks train.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..arch import ArchSpec, Dims, blocks
from ..errors import ConfigError
from .base import HookHandles, MethodConfig, TunedMethod, register_method


def is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


class BackboneSubset(TunedMethod):
    """Trains the backbone parameters that ``select`` accepts (within the chosen layers, if any)."""

    mergeable = True  # the trained tensors are the backbone's own: nothing to fold in

    def __init__(self, config: MethodConfig, dims: Dims, select: Callable[[str], bool], what: str):
        super().__init__(config)
        self.layer_indices = None if config.layers is None else config.layer_indices(dims)
        self.select, self.what = select, what
        self.arch: ArchSpec | None = None

    def install(self, model: nn.Module, arch: ArchSpec, handles: HookHandles) -> None:
        self.arch = arch  # nothing to hook: training the backbone's own tensors changes no forward

    def backbone_trainable(self, model: nn.Module, backbone: list[tuple[str, nn.Parameter]]) -> list[str]:
        named = list(backbone)
        if self.layer_indices is not None:
            layers = blocks(model, self.arch)
            inside = {id(p) for i in self.layer_indices for p in layers[i].parameters()}
            named = [(n, p) for n, p in named if id(p) in inside]
        names = [n for n, _ in named if self.select(n)]
        if not names:
            raise ConfigError(
                f"{self.config.method}: the model has no {self.what} to train"
                + (f" in layers {self.layer_indices}" if self.layer_indices is not None else "")
                + f" ({type(model).__name__} has no such parameters); choose another method"
            )
        return names

    def merge(self) -> None:
        pass


@register_method
@dataclass
class FullConfig(MethodConfig):
    """Full fine-tuning: every backbone parameter (of the chosen layers) trains."""

    method = "full"

    def build(self, model: nn.Module, arch: ArchSpec, dims: Dims) -> BackboneSubset:
        return BackboneSubset(self, dims, lambda name: True, "parameters")


@register_method
@dataclass
class BitFitConfig(MethodConfig):
    """BitFit: only the backbone's bias terms (of the chosen layers) train."""

    method = "bitfit"

    def build(self, model: nn.Module, arch: ArchSpec, dims: Dims) -> BackboneSubset:
        return BackboneSubset(self, dims, is_bias, "bias terms")

"""LoRA (Hu et al. 2022) on the attention projections, through peft's own LoRA layers.

    h <- h + s * x W_down W_up                                   (Memory-Tuning Eq. 6)

peft injects its ``lora.Linear`` wrappers (``inject_adapter_in_model``); memtune chooses the targets
from the architecture table, owns the LoRA matrices for counting, saving and loading, and removes the
wrappers on detach. W_up (peft's ``lora_B``) starts at zero, so attaching is an exact no-op. With
``gate`` (UniPELT), the update is multiplied by a per-token gate sigmoid(x W_g + b_g); since LoRA has no
bias, gating the input of ``lora_A`` is the same as gating the update, so peft's forward is kept as is.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
import torch
import torch.nn as nn

from ..arch import ArchSpec, Dims, blocks, submodule
from ..errors import ArchitectureError, ConfigError
from .base import HookHandles, MethodConfig, TunedMethod, help_field, positive_int, probability, register_method

ROLES = ("query", "key", "value")


def _proj_path(arch: ArchSpec, role: str) -> str:
    path = {"query": arch.query_proj, "key": arch.key_proj, "value": arch.value_proj}[role]
    if not path:
        raise ArchitectureError(f"this architecture's ArchSpec names no {role} projection; LoRA cannot target it")
    return f"{arch.self_attention}.{path}"


class LoraGate(nn.Module):
    """UniPELT's G_L for one wrapped projection: a forward hook on peft's ``lora_dropout`` module."""

    def __init__(self, in_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def gate_input(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * torch.sigmoid(self.linear(inputs[0]))  # (..., n, 1) per token


class Unwrap:
    """Removable handle: puts a wrapped module's ``base_layer`` back and forgets the peft adapter."""

    def __init__(self, model: nn.Module, wrappers: list[tuple[nn.Module, str, nn.Module]], adapter: str, created: bool):
        self.model, self.wrappers, self.adapter, self.created = model, wrappers, adapter, created
        self.keep_merged = False

    def remove(self) -> None:
        for parent, name, wrapper in reversed(self.wrappers):
            if getattr(wrapper, "merged", False) and not self.keep_merged:
                wrapper.unmerge()
            setattr(parent, name, wrapper.base_layer)
        configs = getattr(self.model, "peft_config", None)
        if isinstance(configs, dict):
            configs.pop(self.adapter, None)
            if self.created and not configs:
                del self.model.peft_config


@register_method
@dataclass
class LoraConfig(MethodConfig):
    """LoRA on the query and value projections of the chosen layers (peft's implementation)."""

    method = "lora"
    rank: int = help_field(16, "Rank r of W_down W_up (paper: 16, aligned with an r = 32 adapter).")
    scaling: float = help_field(1.0, "The scalar s of Eq. (6) (peft's lora_alpha / r).")
    dropout: float = help_field(0.0, "Dropout on the LoRA branch's input.")
    targets: list[str] = help_field(("query", "value"), f"Projections to adapt, from {ROLES} (paper: query, value).")
    gate: bool = help_field(False, "UniPELT: multiply the update by a learned per-token gate sigmoid(x W_g + b_g).")

    def __post_init__(self):
        super().__post_init__()
        positive_int(self.rank, "LoraConfig.rank (r)")
        probability(self.dropout, "LoraConfig.dropout")
        if not isinstance(self.scaling, (int, float)) or isinstance(self.scaling, bool) or self.scaling <= 0:
            raise ConfigError(f"LoraConfig.scaling must be a positive number, got {self.scaling!r}")
        targets = [self.targets] if isinstance(self.targets, str) else list(self.targets or [])
        bad = [t for t in targets if t not in ROLES]
        if not targets or bad:
            raise ConfigError(f"LoraConfig.targets must be a non-empty list from {ROLES}, got {self.targets!r}")
        self.targets = list(dict.fromkeys(targets))

    def build(self, model: nn.Module, arch: ArchSpec, dims: Dims) -> "LoraMethod":
        return LoraMethod(self, dims)


class LoraMethod(TunedMethod):
    """peft LoRA layers on the chosen projections; ``lora`` holds their A/B matrices under stable names."""

    def __init__(self, config: LoraConfig, dims: Dims):
        super().__init__(config)
        self.layer_indices = config.layer_indices(dims)
        self.lora = nn.ModuleDict()  # "<layer>_<role>" -> ModuleDict(A=lora_A, B=lora_B), filled by install
        self.gates = nn.ModuleDict()
        self.adapter: str | None = None
        self._unwrap: Unwrap | None = None

    @property
    def mergeable(self) -> bool:  # type: ignore[override]
        return not self.config.gate

    def targets(self, model: nn.Module, arch: ArchSpec) -> dict[str, str]:
        """``{"<layer>_<role>": full module name}``, one entry per distinct module (GPT-2 fuses q, k, v)."""
        names = {id(m): n for n, m in model.named_modules()}
        layers = blocks(model, arch)
        found: dict[str, str] = {}
        for i in self.layer_indices:
            for role in self.config.targets:
                module = submodule(layers[i], _proj_path(arch, role), f"the {role} projection")
                if names[id(module)] not in found.values():
                    found[f"{i}_{role}"] = names[id(module)]
        return found

    def install(self, model: nn.Module, arch: ArchSpec, handles: HookHandles) -> None:
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model

        targets = self.targets(model, arch)
        modules = [model.get_submodule(n) for n in targets.values()]
        if not all(isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D" for m in modules):
            kinds = sorted({type(m).__name__ for m in modules})
            raise ArchitectureError(f"LoRA targets must be Linear (or GPT-2 Conv1D) layers, found {kinds}")
        created = not hasattr(model, "peft_config")
        taken = set(getattr(model, "peft_config", {}) or {})
        self.adapter = next(f"memtune{n}" for n in range(len(taken) + 1) if f"memtune{n}" not in taken)
        peft_config = PeftLoraConfig(
            r=self.config.rank,
            lora_alpha=self.config.scaling * self.config.rank,
            lora_dropout=self.config.dropout,
            target_modules=list(targets.values()),
            fan_in_fan_out=type(modules[0]).__name__ == "Conv1D",
            bias="none",
        )
        with warnings.catch_warnings():
            if all(name.startswith("memtune") for name in taken):  # only memtune's own adapters are there
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(peft_config, model, adapter_name=self.adapter)
        wrappers = []
        for key, name in targets.items():
            parent_name, _, child = name.rpartition(".")
            wrapper = model.get_submodule(name)
            wrappers.append((model.get_submodule(parent_name), child, wrapper))
            self.lora[key] = nn.ModuleDict({"A": wrapper.lora_A[self.adapter], "B": wrapper.lora_B[self.adapter]})
        self._unwrap = Unwrap(model, wrappers, self.adapter, created)
        handles.add(self._unwrap)
        if self.config.gate:
            for key, (_, _, wrapper) in zip(targets, wrappers):
                gate = LoraGate(wrapper.lora_A[self.adapter].in_features)
                weight = wrapper.lora_A[self.adapter].weight
                self.gates[key] = gate.to(device=weight.device, dtype=weight.dtype)
                handles.add(wrapper.lora_dropout[self.adapter].register_forward_hook(self.gates[key].gate_input))

    def merge(self) -> None:
        """W <- W + s W_down W_up in every wrapped projection (peft's merge); detach then keeps it."""
        if self.config.gate:
            raise ConfigError("a gated (UniPELT) LoRA depends on each token and cannot be merged into the weights")
        for _, _, wrapper in self._unwrap.wrappers:
            wrapper.merge(adapter_names=[self.adapter])
        self._unwrap.keep_merged = True

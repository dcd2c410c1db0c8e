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
from typing import Iterator
import torch
import torch.nn as nn

from ..arch import ArchSpec, Dims, blocks, submodule
from ..errors import ArchitectureError, ConfigError
from .base import (HookHandles, MethodConfig, TunedMethod, at_most, help_field, positive_int, probability, register_method,
                   shown)

ROLES = ("query", "key", "value")
MAX_SCALING = 1000.0  # far above usual alpha / r; beyond the model's float range the no-op becomes 0 * inf = nan


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


class LoraHandle:
    """Removable handle for one LoRA config: takes memtune's peft adapter out of every target again.

    A target memtune wrapped is unwrapped (its ``base_layer`` put back); a target that already was a peft
    layer (the user's own LoRA) only loses memtune's adapter. Other peft layers' active adapters are put
    back as they were. Safe after a partial injection: targets without the adapter are left alone."""

    def __init__(self, model: nn.Module, adapter: str, targets: dict[str, str], created_config: bool):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.model, self.adapter, self.targets, self.created_config = model, adapter, targets, created_config
        self.active_before = [
            (module, list(module.active_adapters)) for module in model.modules() if isinstance(module, BaseTunerLayer)
        ]
        self.wrapped_before = {name for name in targets.values() if isinstance(model.get_submodule(name), BaseTunerLayer)}
        self.keep_merged = False

    def restore_active(self, ours: list[nn.Module]) -> None:
        """peft activates only the newest adapter in every layer; keep the others active as they were."""
        for module, active in self.active_before:
            module.set_adapter(active + ([self.adapter] if any(module is m for m in ours) else []))

    def remove(self) -> None:
        for name in self.targets.values():
            module = self.model.get_submodule(name)
            if self.adapter not in getattr(module, "lora_A", {}):
                continue
            if getattr(module, "merged", False) and not self.keep_merged:
                module.unmerge()
            if name in self.wrapped_before:
                module.delete_adapter(self.adapter)
            else:
                parent, _, child = name.rpartition(".")
                setattr(self.model.get_submodule(parent) if parent else self.model, child, module.get_base_layer())
        for module, active in self.active_before:
            module.set_adapter(active)
        configs = getattr(self.model, "peft_config", None)
        if isinstance(configs, dict):
            configs.pop(self.adapter, None)
            if self.created_config and not configs:
                del self.model.peft_config


@register_method
@dataclass
class LoraConfig(MethodConfig):
    """LoRA on the query and value projections of the chosen layers (peft's implementation)."""

    method = "lora"
    rank: int = help_field(16, "Rank r of W_down W_up (paper: 16, aligned with an r = 32 adapter).")
    scaling: float = help_field(1.0, "The scalar s of Eq. (6) (peft's lora_alpha / r).")
    dropout: float = help_field(0.0, "Dropout on the LoRA branch's input.")
    targets: list[str] = help_field(
        ("query", "value"),
        f"Projections to adapt, from {ROLES} (paper: query, value). GPT-2 fuses them in c_attn, adapted as one.",
    )
    gate: bool = help_field(False, "UniPELT: multiply the update by a learned per-token gate sigmoid(x W_g + b_g).")

    def __post_init__(self):
        super().__post_init__()
        positive_int(self.rank, "LoraConfig.rank (r)")
        probability(self.dropout, "LoraConfig.dropout")
        at_most(self.scaling, MAX_SCALING, "LoraConfig.scaling", "peft's lora_alpha / r, usually 1 to 4")
        if not isinstance(self.targets, (str, list, tuple)):
            raise ConfigError(f"LoraConfig.targets must be a non-empty list from {ROLES}, got {shown(self.targets)}")
        targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        bad = [t for t in targets if t not in ROLES]
        if not targets or bad:
            raise ConfigError(f"LoraConfig.targets must be a non-empty list from {ROLES}, got {shown(self.targets)}")
        self.targets = list(dict.fromkeys(targets))

    def formula_symbols(self, hidden: int) -> dict[str, int]:
        return {"r": self.rank}

    def check_model(self, dims: Dims) -> None:
        super().check_model(dims)
        if self.rank > dims.hidden:
            raise ConfigError(
                f"LoraConfig.rank r={self.rank} exceeds the model's hidden size d={dims.hidden}: W_down W_up cannot "
                f"have a rank above min(d_in, d_out). Lower the rank (the budget: LoRA's r is budget / 2)."
            )

    def build(self, model: nn.Module, arch: ArchSpec, dims: Dims) -> "LoraMethod":
        return LoraMethod(self, dims)


class LoraMethod(TunedMethod):
    """peft LoRA layers on the chosen projections. Their A/B matrices stay registered in peft's layers only
    (a second registration would make them shared tensors, which ``save_pretrained`` refuses); memtune
    reaches them through ``pairs`` and names them ``lora.<layer>_<role>.A|B.weight``."""

    def __init__(self, config: LoraConfig, dims: Dims):
        super().__init__(config)
        self.layer_indices = config.layer_indices(dims)
        self.gates = nn.ModuleDict()
        self.pairs: dict[str, dict[str, nn.Linear]] = {}  # "<layer>_<role>" -> {"A": lora_A, "B": lora_B}
        self.adapter: str | None = None
        self._handle: LoraHandle | None = None

    @property
    def mergeable(self) -> bool:  # type: ignore[override]
        return not self.config.gate

    def own_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for key, pair in self.pairs.items():
            for part, linear in pair.items():
                yield f"lora.{key}.{part}.weight", linear.weight
        for name, p in self.gates.named_parameters():
            yield f"gates.{name}", p

    def stored_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.own_parameters()}

    def load_stored(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.own_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise RuntimeError(f"LoRA tensors do not match: missing {missing[:4]}, unexpected {unexpected[:4]}")
        with torch.no_grad():
            for name, p in own.items():
                if tuple(state[name].shape) != tuple(p.shape):
                    raise RuntimeError(f"LoRA tensor {name} has shape {tuple(state[name].shape)}, expected {tuple(p.shape)}")
                p.copy_(state[name])

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
        bases = [_base_layer(model.get_submodule(n)) for n in targets.values()]
        if not all(isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D" for m in bases):
            kinds = sorted({type(m).__name__ for m in bases})
            raise ArchitectureError(f"LoRA targets must be Linear (or GPT-2 Conv1D) layers, found {kinds}")
        taken = set(getattr(model, "peft_config", {}) or {})
        self.adapter = next(f"memtune{n}" for n in range(len(taken) + 1) if f"memtune{n}" not in taken)
        self._handle = LoraHandle(model, self.adapter, targets, created_config=not hasattr(model, "peft_config"))
        handles.add(self._handle)  # before injecting: a failure half-way is undone too
        peft_config = PeftLoraConfig(
            r=self.config.rank,
            lora_alpha=self.config.scaling * self.config.rank,
            lora_dropout=self.config.dropout,
            target_modules=list(targets.values()),
            fan_in_fan_out=type(bases[0]).__name__ == "Conv1D",
            bias="none",
        )
        with warnings.catch_warnings():
            if all(name.startswith("memtune") for name in taken):  # only memtune's own adapters are there
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(peft_config, model, adapter_name=self.adapter)
        wrappers = {key: model.get_submodule(name) for key, name in targets.items()}
        self._handle.restore_active(list(wrappers.values()))
        for key, wrapper in wrappers.items():
            training = wrapper.get_base_layer().training  # new modules start in train mode; follow the model's
            for part in (wrapper.lora_A, wrapper.lora_B, wrapper.lora_dropout):
                part[self.adapter].train(training)
            if targets[key] not in self._handle.wrapped_before:
                wrapper.training = training
            self.pairs[key] = {"A": wrapper.lora_A[self.adapter], "B": wrapper.lora_B[self.adapter]}
        if self.config.gate:
            for key, wrapper in wrappers.items():
                weight = wrapper.lora_A[self.adapter].weight
                gate = LoraGate(wrapper.lora_A[self.adapter].in_features).to(device=weight.device, dtype=weight.dtype)
                gate.train(wrapper.get_base_layer().training)
                self.gates[key] = gate
                handles.add(wrapper.lora_dropout[self.adapter].register_forward_hook(gate.gate_input))

    def merge(self) -> None:
        """W <- W + s W_down W_up in every wrapped projection (peft's merge); detach then keeps it."""
        if self.config.gate:
            raise ConfigError("a gated (UniPELT) LoRA depends on each token and cannot be merged into the weights")
        for name in self._handle.targets.values():
            self._handle.model.get_submodule(name).merge(adapter_names=[self.adapter])
        self._handle.keep_merged = True


def _base_layer(module: nn.Module) -> nn.Module:
    """The plain layer under any peft wrapper."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module

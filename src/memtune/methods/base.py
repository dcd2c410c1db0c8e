"""What every tuning method shares: a validated config dataclass and a module that installs itself.

A method is a pair:
- a ``MethodConfig`` dataclass (hyperparameters with help text, validated in ``__post_init__``);
- a ``TunedMethod`` module that holds the method's parameters and installs hooks into the model.
``attach`` builds the module from the config; everything else (counting, saving, detaching) only uses
the ``TunedMethod`` interface below.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch
import torch.nn as nn

from ..arch import ArchSpec, Dims
from ..errors import ConfigError
from ..settings import finite_float, shown

METHODS: dict[str, type["MethodConfig"]] = {}


def register_method(cls: type["MethodConfig"]) -> type["MethodConfig"]:
    """Class decorator: make a MethodConfig known by its ``method`` name (used by save/load)."""
    METHODS[cls.method] = cls
    return cls


MAX_SIZE = 2**40
"""The largest size (slots, slot size, bottleneck, rank, prefix length, budget) a config accepts: far more
than any machine holds (attach's size check refuses far less), yet small enough that every tensor a method
describes while that check counts it on the meta device stays below torch's 2**63 elements."""


def positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {shown(value)}")
    if value > MAX_SIZE:
        raise ConfigError(f"{name} must be at most 2**40 = {MAX_SIZE:,} (no machine holds that many parameters), "
                          f"got {shown(value)}")  # fmt: skip


def probability(value: Any, name: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {shown(value)}")


def at_most(value: float, limit: float, name: str, why: str) -> None:
    """Refuse a positive number above ``limit`` (kind and finiteness: check_field_types)."""
    if not 0 < value <= limit:
        raise ConfigError(f"{name} must be a positive number at most {limit:g} ({why}), got {shown(value)}")


def check_field_types(config: Any) -> None:
    """Refuse values of the wrong kind before anything reads them: an on/off field that is not True or False
    (``bias='no'`` would switch biases on), a number field that is not a finite number (nan, inf, '1'),
    a text field that is not a string. Field kinds come from the dataclass annotations; a whole number given
    to a number field is stored as a float (one too large for a float is refused as not finite)."""
    import typing

    hints = typing.get_type_hints(type(config))
    name = type(config).__name__
    for f in dataclasses.fields(config):
        kind, value = hints.get(f.name), getattr(config, f.name)
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{name}.{f.name} must be True or False, got {shown(value)}")
        if kind is float:
            number = finite_float(value)
            if number is None:
                raise ConfigError(f"{name}.{f.name} must be a finite number, got {shown(value)}")
            setattr(config, f.name, number)
        if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{name}.{f.name} must be an integer, got {shown(value)}")
        if kind is str and not isinstance(value, str):
            raise ConfigError(f"{name}.{f.name} must be a string, got {shown(value)}")


def help_field(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    return field(default=default, metadata={"help": help})


@dataclass
class MethodConfig:
    """Base of every method's configuration."""

    method: ClassVar[str] = ""
    layers: list[int] | None = help_field(None, "Indices of the transformer layers to tune; None = every layer.")

    def __post_init__(self):
        check_field_types(self)
        if self.layers is not None:
            if not isinstance(self.layers, (list, tuple)) or not self.layers:
                raise ConfigError(f"layers must be a non-empty list of layer indices or None, got {shown(self.layers)}")
            for i in self.layers:
                if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                    raise ConfigError(f"layers must hold non-negative integers, got {shown(self.layers)}")
            if len(set(self.layers)) != len(self.layers):
                raise ConfigError(f"layers lists a layer twice: {shown(self.layers)}")
            self.layers = sorted(self.layers)

    def layer_indices(self, dims: Dims) -> list[int]:
        if self.layers is None:
            return list(range(dims.layers))
        bad = [i for i in self.layers if i >= dims.layers]
        if bad:
            raise ConfigError(f"{self.method}: layers {shown(bad)} do not exist; the model has {dims.layers} layers (0..{dims.layers - 1})")
        return list(self.layers)

    def check_model(self, dims: Dims) -> None:
        """Reject values that are meaningless for this model (called by attach before anything changes)."""
        self.layer_indices(dims)

    def build(self, model: nn.Module, arch: ArchSpec, dims: Dims) -> "TunedMethod":
        raise NotImplementedError

    def formula_symbols(self, hidden: int) -> dict[str, int]:
        """This config's values of the paper's Table II symbols (l, m, s, k, r) on a model of width ``hidden``."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "MethodConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a method config must be a dict with a 'method' key, got {shown(data)}")
        data = dict(data)
        name = data.pop("method", None)
        if not isinstance(name, str) or name not in METHODS:
            raise ConfigError(f"unknown method {shown(name)}; known methods: {', '.join(sorted(METHODS))}")
        cls = METHODS[name]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [shown(k) for k in data if k not in known]  # keys of any kind: shown, not sorted as they are
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) [{', '.join(sorted(unknown))}]; fields: {sorted(known)}")
        return cls(**data)


class TunedMethod(nn.Module):
    """A method's parameters plus the hooks that put them into a model."""

    mergeable: bool = False
    """True if ``merge()`` can fold the method into the backbone weights (LoRA, BitFit, full fine-tuning)."""

    def __init__(self, config: MethodConfig):
        super().__init__()
        self.config = config

    def install(self, model: nn.Module, arch: ArchSpec, handles: "HookHandles") -> None:
        """Hook the method into ``model``, adding to ``handles`` a removable handle per change as it goes."""
        raise NotImplementedError

    def own_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The method's own parameters (registered here, or inside the model for LoRA), with stable names."""
        return self.named_parameters()

    def backbone_trainable(self, model: nn.Module, backbone: list[tuple[str, nn.Parameter]]) -> list[str]:
        """Names of backbone parameters this method trains besides its own (e.g. LayerNorms); ``backbone`` is
        the pretrained model's own (name, parameter) pairs, named from ``model``."""
        return []

    def stored_state(self) -> dict[str, torch.Tensor]:
        """The tensors a trained method needs at inference (what 'stored' counts and save writes)."""
        return {k: v for k, v in self.state_dict().items()}

    def prepare_stored(self) -> None:
        """Switch to the stored form before ``load_stored`` (e.g. drop a reparameterisation)."""

    def load_stored(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state, strict=True)

    def merge(self) -> None:
        """Fold the method into the backbone weights, so that removing its hooks keeps its effect."""
        raise ConfigError(f"the {self.config.method!r} method cannot be merged into the backbone weights")


class HookHandles:
    """Collects removable handles; ``remove()`` undoes them in reverse order."""

    def __init__(self):
        self._handles: list[Any] = []

    def add(self, handle: Any) -> None:
        self._handles.append(handle)

    def extend(self, handles: list[Any]) -> None:
        self._handles.extend(handles)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


@dataclass
class Recipe:
    """A named, budgeted list of method configs; ``attach`` accepts it wherever it accepts configs.

    ``learning_rate`` is the paper's setting for the method (2e-5 for full fine-tuning, 1e-4 otherwise)."""

    name: str
    budget: int
    configs: list[MethodConfig] = field(default_factory=list)
    learning_rate: float = 1e-4

    def __post_init__(self):
        if not isinstance(self.configs, (list, tuple)) or not all(isinstance(c, MethodConfig) for c in self.configs):
            raise ConfigError(f"Recipe.configs must be a list of method configs (e.g. MemoryConfig()), got {shown(self.configs)}")
        self.configs = list(self.configs)

    def __iter__(self):
        return iter(self.configs)

    def __len__(self):
        return len(self.configs)

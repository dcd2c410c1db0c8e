"""Named recipes: the paper's methods as lists of method configs, scaled by one parameter budget.

The budget is the paper's alignment knob (Sec. IV-A, "Parameter Alignment"): prefix length l, memory
slot size s (and, for baselines, bottleneck r) are set to it; a composite splits it (l + s = budget).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError
from .base import MethodConfig, positive_int
from .memory import MemoryConfig
from .prefix import PrefixConfig


@dataclass
class Recipe:
    """A named, budgeted list of method configs; ``attach`` accepts it wherever it accepts configs."""

    name: str
    budget: int
    configs: list[MethodConfig] = field(default_factory=list)

    def __iter__(self):
        return iter(self.configs)

    def __len__(self):
        return len(self.configs)


def _split(budget: int) -> tuple[int, int]:
    if budget < 2:
        raise ConfigError(f"a composite recipe splits its budget in two, so it needs budget >= 2, got {budget}")
    return budget // 2, budget - budget // 2


RECIPES: dict[str, tuple[str, Callable[[int], list[MethodConfig]]]] = {
    "mt-f": ("memory on every FFN output: s = budget, k = 50", lambda b: [MemoryConfig(slot_dim=b)]),
    "mt-m": ("prefix tuning as memory on attention: l = budget, m = d", lambda b: [PrefixConfig(prefix_length=b)]),
    "prefix": ("P-tuning v2 prefix (same as mt-m): l = budget, m = d", lambda b: [PrefixConfig(prefix_length=b)]),
    "mt-mf": (
        "prefix + memory: l = s = budget / 2, k = 50",
        lambda b: [PrefixConfig(prefix_length=_split(b)[0]), MemoryConfig(slot_dim=_split(b)[1])],
    ),
}


def recipe(name: str, budget: int = 32) -> Recipe:
    """The configs of a named method at a parameter budget (default 32, the paper's setting).

    >>> recipe("mt-mf").configs   # l = 16 prefix + s = 16, k = 50 memory
    """
    if not isinstance(name, str):
        raise ConfigError(f"recipe name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    positive_int(budget, "budget")
    return Recipe(key, budget, RECIPES[key][1](budget))

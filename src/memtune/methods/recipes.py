"""Named recipes: the paper's methods as lists of method configs, scaled by one parameter budget.

The budget is the paper's alignment knob (Sec. IV-A, "Parameter Alignment"): prefix length l, memory
slot size s and adapter bottleneck r are set to it; LoRA's rank is half of it (4drL = 2drL at r = 32);
a composite splits it (l + s = budget for MT-MF, l + r for MAM); full fine-tuning and BitFit ignore it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from ..errors import ConfigError
from .base import MethodConfig, Recipe, positive_int, shown
from .adapter import AdapterConfig
from .backbone import BitFitConfig, FullConfig
from .lora import LoraConfig
from .memory import MemoryConfig
from .prefix import PrefixConfig


def _split(budget: int, what: str = "a composite recipe splits its budget in two") -> tuple[int, int]:
    if budget < 2:
        raise ConfigError(f"{what}, so it needs budget >= 2, got {budget}")
    return budget // 2, budget - budget // 2


def _mam(budget: int) -> list[MethodConfig]:
    """MAM (He et al. 2022): l + r = budget with l = r up to 32; beyond, l = 8 and r = budget (paper Sec. IV-D)."""
    length, bottleneck = _split(budget) if budget <= 32 else (8, budget)
    return [PrefixConfig(prefix_length=length), AdapterConfig(bottleneck=bottleneck, placement="parallel", scale=4.0)]


def _unipelt(budget: int) -> list[MethodConfig]:
    """UniPELT (Mao et al. 2022): gated prefix l = 10, adapter r = 16, LoRA r = 8 at 32, scaled with the budget.

    The adapter's r = 16 aligns it with the other methods' budget; AdapterHub's UniPELT config uses a
    reduction factor of 16 instead (r = d / 16, 48 for BERT-base). Adapter and LoRA gates are per token here
    (AdapterHub averages them over the sequence), which keeps them independent of padding and of the cache."""
    length, bottleneck, rank = (max(1, (n * budget + 16) // 32) for n in (10, 16, 8))  # rounded half up
    return [
        PrefixConfig(prefix_length=length, gate=True),
        AdapterConfig(bottleneck=bottleneck, gate=True),
        LoraConfig(rank=rank, gate=True),
    ]


@dataclass(frozen=True)
class RecipeSpec:
    display: str  # the name tables print
    help: str
    build: Callable[[int], list[MethodConfig]]
    learning_rate: float = 1e-4
    uses_budget: bool = True


RECIPES: dict[str, RecipeSpec] = {
    "ft": RecipeSpec("FT", "full fine-tuning: every backbone parameter (budget unused)", lambda b: [FullConfig()], 2e-5, False),
    "bitfit": RecipeSpec("BitFit", "BitFit: every bias of the backbone (budget unused)", lambda b: [BitFitConfig()], 1e-4, False),
    "adapter": RecipeSpec(
        "Adapter",
        "Pfeiffer adapter on every FFN output, ReLU, residual: r = budget", lambda b: [AdapterConfig(bottleneck=b)]
    ),
    "lora": RecipeSpec("LoRA", "LoRA (peft) on query and value: r = budget / 2", lambda b: [LoraConfig(rank=_split(b, "lora's rank is budget / 2")[0])]),
    "prefix": RecipeSpec("Prefix", "P-tuning v2 prefix (same as mt-m): l = budget, m = d", lambda b: [PrefixConfig(prefix_length=b)]),
    "mam": RecipeSpec("MAM", "MAM: prefix + scaled parallel adapter (s = 4): l + r = budget, l = r up to 32, else l = 8, r = budget", _mam),
    "unipelt": RecipeSpec("UniPELT", "UniPELT: gated prefix + adapter + LoRA: l, r, r_LoRA = 10, 16, 8 x budget / 32", _unipelt),
    "mt-f": RecipeSpec("MT-F", "memory on every FFN output: s = budget, k = 50", lambda b: [MemoryConfig(slot_dim=b)]),
    "mt-m": RecipeSpec("MT-M", "prefix tuning as memory on attention: l = budget, m = d", lambda b: [PrefixConfig(prefix_length=b)]),
    "mt-mf": RecipeSpec(
        "MT-MF",
        "prefix + memory: l = s = budget / 2, k = 50",
        lambda b: [PrefixConfig(prefix_length=_split(b)[0]), MemoryConfig(slot_dim=_split(b)[1])],
    ),
    "mt-f-authors": RecipeSpec(
        "MT-F (authors)",
        "mt-f as the authors' code computes it: MemoryConfig.authors() (biases, inner LayerNorms with eps 1e-12, "
        "N(0, 0.01) projections, backbone LayerNorms trained): s = budget, k = 50",
        lambda b: [MemoryConfig.authors(slot_dim=b)],
    ),
    "mt-mf-authors": RecipeSpec(
        "MT-MF (authors)",
        "mt-mf as the authors' code computes it: prefix with dropout 0.1 + MemoryConfig.authors(): l = s = budget / 2",
        lambda b: [PrefixConfig(prefix_length=_split(b)[0], dropout=0.1), MemoryConfig.authors(slot_dim=_split(b)[1])],
    ),
}


def recipe(name: str, budget: int = 32, *, shift_prefix_positions: bool = False) -> Recipe:
    """The configs of a named method at a parameter budget (default 32, the paper's setting).

    ``shift_prefix_positions`` sets ``PrefixConfig.shift_positions`` on the recipe's prefix, if it has one:
    the real tokens then take positions l, l+1, ... as in P-tuning v2 and the paper's code.

    >>> recipe("mt-mf").configs   # l = 16 prefix + s = 16, k = 50 memory
    """
    if not isinstance(name, str):
        raise ConfigError(f"recipe name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in RECIPES:
        raise ConfigError(f"unknown recipe {shown(name)}; known recipes: {', '.join(RECIPES)}")
    positive_int(budget, "budget")
    if not isinstance(shift_prefix_positions, bool):
        raise ConfigError(f"recipe shift_prefix_positions must be True or False, got {shown(shift_prefix_positions)}")
    spec = RECIPES[key]
    configs = spec.build(budget)
    if shift_prefix_positions:
        configs = [replace(c, shift_positions=True) if isinstance(c, PrefixConfig) else c for c in configs]
    return Recipe(key, budget, configs, spec.learning_rate)

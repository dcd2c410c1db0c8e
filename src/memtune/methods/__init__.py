"""Tuning methods: one module per method (config dataclass + module that installs itself) and recipes."""
from .base import METHODS, MethodConfig, TunedMethod, register_method
from .memory import MemoryBlock, MemoryConfig
from .prefix import PrefixConfig
from .recipes import RECIPES, Recipe, recipe

__all__ = [
    "METHODS",
    "MethodConfig",
    "TunedMethod",
    "register_method",
    "MemoryBlock",
    "MemoryConfig",
    "PrefixConfig",
    "RECIPES",
    "Recipe",
    "recipe",
]

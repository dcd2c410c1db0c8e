"""Tuning methods: one module per method (config dataclass + module that installs itself) and recipes."""
from .adapter import AdapterConfig
from .backbone import BitFitConfig, FullConfig
from .base import METHODS, MethodConfig, TunedMethod, register_method
from .lora import LoraConfig
from .memory import MemoryBlock, MemoryConfig
from .prefix import PrefixConfig
from .recipes import RECIPES, Recipe, recipe

__all__ = [
    "METHODS",
    "MethodConfig",
    "TunedMethod",
    "register_method",
    "AdapterConfig",
    "BitFitConfig",
    "FullConfig",
    "LoraConfig",
    "MemoryBlock",
    "MemoryConfig",
    "PrefixConfig",
    "RECIPES",
    "Recipe",
    "recipe",
]

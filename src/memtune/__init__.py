"""memtune: memory-tuning (MT-F, MT-M, MT-MF) and its baselines for any Hugging Face transformer.

    model = memtune.attach(model, memtune.recipe("mt-mf"))
    memtune.parameter_report(model)
    memtune.save(model, "out/run"); memtune.load(fresh_model, "out/run")
    memtune.detach(model)                # or memtune.merge_and_unload(model) for LoRA / BitFit / FT
"""
from .arch import ARCHITECTURES, ArchSpec, register_architecture
from .errors import ArchitectureError, CheckpointError, ConfigError, MemtuneError
from .io import load, save
from .methods import (
    AdapterConfig,
    BitFitConfig,
    FullConfig,
    LoraConfig,
    MemoryBlock,
    MemoryConfig,
    MethodConfig,
    PrefixConfig,
    Recipe,
    recipe,
)
from .params import parameter_report
from .tuning import attach, detach, merge_and_unload, methods_of
from .version import __version__

__all__ = [
    "attach",
    "detach",
    "merge_and_unload",
    "recipe",
    "Recipe",
    "MemoryConfig",
    "PrefixConfig",
    "AdapterConfig",
    "LoraConfig",
    "BitFitConfig",
    "FullConfig",
    "MethodConfig",
    "MemoryBlock",
    "parameter_report",
    "save",
    "load",
    "methods_of",
    "ArchSpec",
    "ARCHITECTURES",
    "register_architecture",
    "MemtuneError",
    "ConfigError",
    "ArchitectureError",
    "CheckpointError",
    "__version__",
]

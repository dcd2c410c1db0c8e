"""memtune: memory-tuning (MT-F, MT-M, MT-MF) and its baselines for any Hugging Face transformer.

    model = memtune.attach(model, memtune.recipe("mt-mf"))
    memtune.parameter_report(model)
    memtune.save(model, "out/run"); memtune.load(fresh_model, "out/run")
    memtune.export_peft(model, "out/peft")  # peft's format, for PeftModel.from_pretrained
    memtune.detach(model)                # or memtune.merge_and_unload(model) for LoRA / BitFit / FT
"""
from importlib import import_module
from typing import TYPE_CHECKING

from .errors import ArchitectureError, CheckpointError, ConfigError, MemtuneError
from .version import __version__

# The API is imported on first use (PEP 562), so that ``import memtune`` (and ``memtune --help``) does not
# import torch and transformers before they are needed.
_LAZY = {
    "ARCHITECTURES": ".arch",
    "ArchSpec": ".arch",
    "infer_arch": ".arch",
    "register_architecture": ".arch",
    "load": ".io",
    "save": ".io",
    "AdapterConfig": ".methods",
    "BitFitConfig": ".methods",
    "FullConfig": ".methods",
    "LoraConfig": ".methods",
    "MemoryBlock": ".methods",
    "MemoryConfig": ".methods",
    "MethodConfig": ".methods",
    "PrefixConfig": ".methods",
    "Recipe": ".methods",
    "recipe": ".methods",
    "parameter_report": ".params",
    "export_peft": ".peft_format",
    "load_peft": ".peft_format",
    "attach": ".tuning",
    "detach": ".tuning",
    "merge_and_unload": ".tuning",
    "methods_of": ".tuning",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'memtune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .arch import ARCHITECTURES, ArchSpec, infer_arch, register_architecture
    from .io import load, save
    from .methods import (AdapterConfig, BitFitConfig, FullConfig, LoraConfig, MemoryBlock, MemoryConfig,
                          MethodConfig, PrefixConfig, Recipe, recipe)
    from .params import parameter_report
    from .peft_format import export_peft, load_peft
    from .tuning import attach, detach, merge_and_unload, methods_of

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
    "export_peft",
    "load_peft",
    "methods_of",
    "ArchSpec",
    "ARCHITECTURES",
    "infer_arch",
    "register_architecture",
    "MemtuneError",
    "ConfigError",
    "ArchitectureError",
    "CheckpointError",
    "__version__",
]

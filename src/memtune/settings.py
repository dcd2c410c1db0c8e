"""Training settings: one run's hyperparameters and the profiles that set them (no torch import, so that
the command line can build its flags from these fields).

Each field carries its command-line flag and help (``flags()``); ``memtune compare`` offers every field
as an override.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .errors import ConfigError


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flag(kind: type, help: str, *, default: Any = MISSING, flag: str | None = None) -> Any:  # noqa: A002
    return field(default=default, metadata={"type": kind, "help": help, "flag": flag})


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of one run (Table I's for the ``paper`` profile)."""

    epochs: int = _flag(int, "override the profile's epochs")
    batch_size: int = _flag(int, "override the per-process batch size")
    learning_rate: float = _flag(float, "override the learning rate (all methods)", flag="--lr")
    max_length: int = _flag(int, "override the input length in tokens")
    patience: int = _flag(int, "override early-stopping patience (epochs)", default=5)
    weight_decay: float = _flag(float, "override the weight decay (default: 0)", default=0.0)
    warmup_ratio: float = _flag(float, "override the linear warm-up, a fraction of the steps (default: 0)", default=0.0)
    eval_batch_size: int = _flag(int, "override the evaluation batch size (default: 64)", default=64)
    max_train_steps: int | None = _flag(int, "stop each run after this many optimiser steps", default=None, flag="--max-steps")
    valid_size: int | None = _flag(
        int,
        "early-stop on at most this many validation examples (a fixed sample, the same for every run; e.g. to keep "
        "E2E's 547-input dev set from dominating a CPU run)",
        default=None,
    )
    optimizer: str = _flag(str, "override the optimiser: a TrainingArguments.optim value (default: adamw_torch)", default="adamw_torch")

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_length", "patience", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"training setting {name} must be a positive integer, got {value!r}")
        if not _finite(self.learning_rate) or not self.learning_rate > 0:
            raise ConfigError(f"training setting learning_rate must be a positive finite number, got {self.learning_rate!r}")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"training setting weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not _finite(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"training setting warmup_ratio must be in [0, 1) (a fraction of the steps), got {self.warmup_ratio!r}")
        from transformers.training_args import OptimizerNames

        optimizers = [o.value for o in OptimizerNames]
        if self.optimizer not in optimizers:
            raise ConfigError(f"training setting optimizer {self.optimizer!r} is not one of transformers' {', '.join(optimizers)}")
        for name in ("max_train_steps", "valid_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"training setting {name} must be a positive integer or None, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES = ("paper", "cpu")
CPU_PROFILE = dict(epochs=5, batch_size=16, max_length=128, patience=2, lr_factor=10.0)


def settings_for(task: Any, recipe: Any, profile: str, large: bool = False, **overrides: Any) -> TrainSettings:
    """The settings of ``profile`` for a task and recipe, then ``overrides`` (None values are ignored).

    paper: Table I (epochs, input length, batch size of the BERT-base or -large row), lr 2e-5 for full
        fine-tuning and 1e-4 otherwise, early stopping after 5 epochs without improvement.
    cpu: at most 5 epochs, batch 16, inputs of at most 128 tokens, patience 2, and 10x the paper's
        learning rate so that few epochs still move the small methods (a smoke-scale profile, not the paper's).
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown training profile {profile!r}; known profiles: {', '.join(PROFILES)}")
    if profile == "paper":
        values = dict(
            epochs=task.epochs,
            batch_size=task.batch_size_large if large else task.batch_size,
            learning_rate=recipe.learning_rate,
            max_length=task.max_length,
        )
    else:
        values = dict(
            epochs=min(task.epochs, CPU_PROFILE["epochs"]),
            batch_size=CPU_PROFILE["batch_size"],
            learning_rate=recipe.learning_rate * CPU_PROFILE["lr_factor"],
            max_length=min(task.max_length, CPU_PROFILE["max_length"]),
            patience=CPU_PROFILE["patience"],
        )
    known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown training setting(s) {unknown}; settings: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainSettings(**values)


def flags() -> list[tuple[str, str, type, str]]:
    """(field name, command-line flag, type, help) for every training setting."""
    return [
        (f.name, f.metadata["flag"] or "--" + f.name.replace("_", "-"), f.metadata["type"], f.metadata["help"])
        for f in fields(TrainSettings)
    ]

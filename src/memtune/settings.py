"""Training settings: one run's hyperparameters and the profiles that set them (no torch import, so that
the command line can build its flags from these fields).

Each field carries its command-line flag and help (``flags()``); ``memtune compare`` offers every field
as an override.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from decimal import Decimal
from typing import Any

from .errors import ConfigError


def finite_float(value: Any) -> float | None:
    """``value`` as a float if it is a finite number (an int or a float, not a bool), else None; an int too
    large for a float is not finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters. An integer of more than 30 digits is
    shown rounded (1.000e+400): Python refuses to print one of more than 4300 digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return format(Decimal(value), ".3e")  # Decimal converts without the digit limit
    try:
        text = repr(value)
    except ValueError:  # a container holding such an integer
        return f"a {type(value).__name__} holding an integer too long to print"
    return text if len(text) <= limit else text[: limit - 3] + "..."


MAX_COUNT = 10**9
"""The largest count a setting takes (epochs, batch sizes, lengths, steps, seeds, budgets, training-set sizes):
far beyond any run, and a bound that keeps a typo of extra digits from starting one."""


def count(value: Any, name: str, optional: bool = False, limit: int = MAX_COUNT) -> None:
    """Refuse anything but an integer from 1 to ``limit`` (or None when ``optional``); ``name`` leads the message."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        allowed = f"a positive integer (at most {limit:,})" + (" or None" if optional else "")
        raise ConfigError(f"{name} must be {allowed}, got {shown(value)}")


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
            count(getattr(self, name), f"training setting {name}")
        rules = {  # number settings: (holds, what is allowed); whole numbers are stored as floats
            "learning_rate": (lambda x: x > 0, "a positive finite number"),
            "weight_decay": (lambda x: x >= 0, "a finite number >= 0"),
            "warmup_ratio": (lambda x: 0 <= x < 1, "in [0, 1) (a fraction of the steps)"),
        }
        for name, (holds, allowed) in rules.items():
            value = finite_float(getattr(self, name))
            if value is None or not holds(value):
                raise ConfigError(f"training setting {name} must be {allowed}, got {shown(getattr(self, name))}")
            object.__setattr__(self, name, value)  # frozen: set once, here
        from transformers.training_args import OptimizerNames

        optimizers = [o.value for o in OptimizerNames]
        if self.optimizer not in optimizers:
            raise ConfigError(f"training setting optimizer {shown(self.optimizer)} is not one of transformers' {', '.join(optimizers)}")
        for name in ("max_train_steps", "valid_size"):
            count(getattr(self, name), f"training setting {name}", optional=True)

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

"""Exceptions raised by memtune. All are ``ValueError`` subclasses, so bad input is one ``except`` away."""


class MemtuneError(ValueError):
    """A request memtune cannot carry out; the message names the problem and the fix."""


class ConfigError(MemtuneError):
    """A method configuration with a meaningless value (e.g. zero memory slots)."""


class ArchitectureError(MemtuneError):
    """The model's architecture is unknown to memtune, or lacks a module a method needs."""


class CheckpointError(MemtuneError):
    """A saved memtune checkpoint is missing, corrupt, from a newer format or for another base model."""


class TrainingDiverged(MemtuneError):
    """Training met a non-finite loss, gradient or parameter; the message names the run and the step."""

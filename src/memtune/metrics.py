"""The paper's metrics: accuracy, binary F1 (MRPC) and micro entity-level F1 (NER, seqeval)."""
from __future__ import annotations

from typing import Callable, Sequence

from .errors import ConfigError


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of exact matches, in percent."""
    _same_length(predictions, labels)
    return 100.0 * sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels)


def binary_f1(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class, in percent (GLUE's MRPC metric)."""
    _same_length(predictions, labels)
    tp = sum(1 for p, y in zip(predictions, labels) if p == positive and y == positive)
    predicted = sum(1 for p in predictions if p == positive)
    actual = sum(1 for y in labels if y == positive)
    return 200.0 * tp / (predicted + actual) if predicted + actual else 0.0


def entity_f1(predictions: Sequence[Sequence[str]], labels: Sequence[Sequence[str]]) -> float:
    """Micro-averaged entity-level F1 over BIO tag sequences (seqeval's default mode), in percent."""
    from seqeval.metrics import f1_score

    _same_length(predictions, labels)
    for p, y in zip(predictions, labels):
        if len(p) != len(y):
            raise ValueError(f"a predicted tag sequence has {len(p)} tags for {len(y)} tokens")
    return 100.0 * f1_score([list(y) for y in labels], [list(p) for p in predictions])


def _same_length(predictions: Sequence, labels: Sequence) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no examples to score")


METRICS: dict[str, Callable] = {"accuracy": accuracy, "f1": binary_f1, "entity_f1": entity_f1}


def metric(name: str) -> Callable:
    if name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return METRICS[name]

"""Training one attached model on one task with the Hugging Face Trainer.

- Early stopping on the validation metric, evaluated every epoch; the best trainable tensors are kept in
  memory and restored at the end (no checkpoint files, so nothing to clean up).
- Seeds: ``seed`` fixes the head/method initialisation (set before the model is built, by the caller),
  the data order and dropout; the Trainer's ``data_seed`` follows it.
- Distributed: run the same script under ``torchrun`` / ``accelerate launch``; the Trainer wraps the
  model in DDP and shards each global batch (``batch_size`` is per process).
- Divergence: a non-finite gradient (before each optimiser step) or trainable parameter (at each epoch's
  end) raises :class:`errors.TrainingDiverged` naming the run and the step; nothing diverged is scored.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import ConfigError
from .metrics import metric as metric_fn
from .settings import CPU_PROFILE, PROFILES, TrainSettings, settings_for  # noqa: F401 - re-exported

IGNORE = -100  # label id the loss and the metrics skip (special tokens, later sub-tokens, padding)


# --- encoding ----------------------------------------------------------------------------------------


def encode(examples: list[Any], tokenizer: Any, kind: str, max_length: int) -> list[dict[str, Any]]:
    """Tokenise examples into features; token tasks label the first sub-token of each word; generation
    tasks give one feature per (source, reference) pair, the prompt masked (pairs longer than
    ``max_length`` are left out, never cut: see :func:`decoding.training_features`)."""
    if kind == "generation":
        from .decoding import training_features
        from .tasks.data import pairs

        return [f for f in (training_features(tokenizer, s, r, max_length) for s, r in pairs(examples)) if f is not None]
    if kind == "sentence":
        return [_encode_sentence(e, tokenizer, max_length) for e in examples]
    return [_encode_words(e, tokenizer, max_length) for e in examples]


def _encode_sentence(example: Any, tokenizer: Any, max_length: int) -> dict[str, Any]:
    features = tokenizer(example.text, example.text_pair, truncation=True, max_length=max_length)
    return {**features, "labels": int(example.label)}


def _encode_words(example: Any, tokenizer: Any, max_length: int) -> dict[str, Any]:
    words = list(example.text)
    features = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    present = {w for w in features.word_ids() if w is not None}
    if present and len(present) <= max(present):  # a word gave no sub-tokens (e.g. a lone zero-width space)
        last = max(present)  # words after it may simply be cut off by the length
        words = [w if i in present or i > last else (tokenizer.unk_token or "?") for i, w in enumerate(words)]
        features = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    labels, seen = [], set()
    for word in features.word_ids():
        first = word is not None and word not in seen
        labels.append(int(example.label[word]) if first else IGNORE)
        if word is not None:
            seen.add(word)
    return {**features, "labels": labels}


# --- evaluation --------------------------------------------------------------------------------------


def score(task: Any, examples: list[Any], predictions: np.ndarray, label_ids: np.ndarray) -> float:
    """The task's metric from logits' argmax. Token tasks: one tag per word, in order (``encode`` gives every
    word before the cut a first sub-token); words cut off by the input length are predicted "O", so
    truncation costs recall instead of hiding entities."""
    fn = metric_fn(task.metric)
    if task.kind == "sentence":
        return fn(predictions.tolist(), [int(e.label) for e in examples])
    names = task.labels
    outside = names.index("O") if "O" in names else 0
    predicted, gold = [], []
    for example, row, labels in zip(examples, predictions, label_ids):
        tags = [int(t) for t, y in zip(row, labels) if y != IGNORE]
        tags += [outside] * (len(example.text) - len(tags))
        predicted.append([names[t] for t in tags])
        gold.append([names[t] for t in example.label])
    return fn(predicted, gold)


# --- the Trainer -------------------------------------------------------------------------------------


class BestTrainable:
    """Keeps a copy of the trainable tensors at the best validation score; early stopping by patience."""

    def __init__(self, model: nn.Module, patience: int):
        self.model, self.patience = model, patience
        self.best: float = -math.inf
        self.best_epoch: int | None = None
        self.bad = 0
        self.snapshot: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, float]] = []

    def update(self, value: float, epoch: float) -> bool:
        """Record a validation score; True when training should stop."""
        self.history.append({"epoch": epoch, "valid": value})
        if value > self.best:
            self.best, self.best_epoch, self.bad = value, int(round(epoch)), 0
            self.snapshot = {n: p.detach().to("cpu", copy=True) for n, p in self.model.named_parameters() if p.requires_grad}
            return False
        self.bad += 1
        return self.bad >= self.patience

    def restore(self) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self.snapshot.items():
                params[name].copy_(value.to(params[name].device))


def validation_examples(data: Any, settings: TrainSettings) -> list[Any]:
    """The examples early stopping sees: ``data.valid``, or a seed-0 sample of ``settings.valid_size`` of them
    (the same sample for every method and seed, so that runs stay comparable)."""
    if settings.valid_size is None or settings.valid_size >= len(data.valid):
        return data.valid
    from .tasks.data import sample

    return sample(data.valid, settings.valid_size, seed=0, unit="validation examples")


def _callback(best: BestTrainable, metric_key: str, sign: float = 1.0):
    """Early stopping on ``sign * metrics[metric_key]`` (higher is better; sign -1 for a loss)."""
    from transformers import TrainerCallback

    class EarlyStopOnBest(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and metric_key in metrics and best.update(sign * metrics[metric_key], state.epoch or 0.0):
                control.should_training_stop = True

    return EarlyStopOnBest()


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every element of ``tensors`` is finite: one max-norm per tensor (NaN and inf propagate, huge
    finite values do not overflow), one check per device."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t.detach())
    return all(bool(torch.isfinite(torch.stack(torch._foreach_norm(ts, ord=math.inf))).all()) for ts in by_device.values())


def _finite_guard(model: nn.Module, run: str):
    """Stops training with :class:`TrainingDiverged` at the first non-finite gradient (checked before each
    optimiser step: a NaN or infinite loss gives one) or trainable parameter (checked at the end of each
    epoch, before its evaluation, and of training), so that a diverged run is never scored: restoring the
    best epoch would hide it."""
    from transformers import TrainerCallback

    from .errors import TrainingDiverged

    trainable = [p for p in model.parameters() if p.requires_grad]
    fix = "lower --lr, raise --warmup or clip gradients harder; the run is recorded as failed"

    class FiniteGuard(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            grads = [p.grad for p in trainable if p.grad is not None]
            if grads and not all_finite(grads):
                raise TrainingDiverged(
                    f"{run}: the loss or its gradient is not finite (NaN or infinite) at optimisation step "
                    f"{state.global_step + 1} (epoch {state.epoch or 0:.2f}); {fix}"
                )

        def on_epoch_end(self, args, state, control, **kwargs):
            if not all_finite(trainable):
                names = [n for n, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
                raise TrainingDiverged(
                    f"{run}: trainable parameters became non-finite by step {state.global_step} (epoch "
                    f"{state.epoch or 0:.2f}): {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}; {fix}"
                )

        on_train_end = on_epoch_end

    return FiniteGuard()


class PeakMemory:
    """Peak memory of one run: CUDA's allocator peak, or the process's resident set sampled on Linux."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        elif os.path.exists("/proc/self/statm"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __exit__(self, *exc: Any) -> None:
        if torch.cuda.is_available():
            self.peak = torch.cuda.max_memory_allocated()
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    @property
    def megabytes(self) -> float:
        return round(self.peak / 2**20, 1)


@dataclass
class RunResult:
    valid: float  # best validation score
    eval: float  # score on the evaluation split, with the best tensors restored
    best_epoch: int | None
    epochs_run: float
    train_seconds: float
    peak_memory_mb: float
    history: list[dict[str, float]] = field(default_factory=list)  # per evaluation: epoch, valid, train_loss
    scores: dict[str, float] = field(default_factory=dict)  # every metric of the task on the evaluation split
    predictions: list[str] = field(default_factory=list)  # generation tasks: one text per evaluation input
    n_pairs: dict[str, int] = field(default_factory=dict)  # generation tasks: (source, reference) pairs used / left out


def train_and_evaluate(
    model: nn.Module,
    tokenizer: Any,
    data: Any,
    settings: TrainSettings,
    *,
    seed: int,
    output_dir: str,
    callbacks: Sequence[Any] = (),
    decoding: Any = None,
    progress: bool = False,
    run: str | None = None,
) -> RunResult:
    """Train ``model`` (methods already attached) on ``data.train``, early-stopping on ``data.valid``;
    restore the best trainable tensors and score ``data.eval``.

    Classification tasks stop early on the task's metric. Generation tasks train on the target tokens,
    stop early on the validation loss (no logits are kept), then decode ``data.eval`` with ``decoding``
    (a :class:`decoding.DecodingConfig`; default: the task's ``max_new_tokens``, greedy) and score every
    metric of the task; ``progress`` shows a bar over the decoding batches.

    The Trainer's own bar and log lines are off; ``callbacks`` (Trainer callbacks) see the steps, the
    logged loss and each evaluation (``memtune compare`` shows them with experiments.progress).

    A non-finite gradient or parameter stops training with :class:`errors.TrainingDiverged`, its message led
    by ``run`` (e.g. "sst2 mt-f seed 0"; default: the task and seed)."""
    from transformers import (DataCollatorForSeq2Seq, DataCollatorForTokenClassification, DataCollatorWithPadding, Trainer,
                              TrainingArguments)  # fmt: skip

    task = data.task
    generation = task.kind == "generation"
    train = encode(data.train, tokenizer, task.kind, settings.max_length)
    valid_examples = validation_examples(data, settings)
    valid = encode(valid_examples, tokenizer, task.kind, settings.max_length)
    if generation:
        if not train or not valid:
            raise ConfigError(
                f"{task.name}: no (table, reference) pair of the {'training' if not train else 'validation'} set fits "
                f"in {settings.max_length} tokens; raise --max-length"
            )
        tokenizer.padding_side = "right"  # training batches; decoding pads on the left itself
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)
    else:
        collator = (DataCollatorWithPadding if task.kind == "sentence" else DataCollatorForTokenClassification)(tokenizer)
    best = BestTrainable(model, settings.patience)
    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_train_steps or -1,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        learning_rate=settings.learning_rate,
        optim=settings.optimizer,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="epoch",
        report_to=[],
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        prediction_loss_only=generation,  # a generation task's validation logits (vocabulary-wide) are never kept
        # The classification heads' losses are plain means; with this on, the Trainer multiplies them by the
        # number of processes (meant for losses summed over tokens), doubling gradients under 2-process DDP.
        average_tokens_across_devices=False,
        use_cpu=not torch.cuda.is_available(),  # lets accelerate run CPU processes under torchrun as DDP (gloo)
    )
    examples = {"valid": valid_examples, "eval": data.eval}  # what each evaluation's predictions are scored against
    current = {"split": "valid"}

    def compute_metrics(prediction) -> dict[str, float]:
        predicted = np.argmax(prediction.predictions, axis=-1)
        return {"score": score(task, examples[current["split"]], predicted, prediction.label_ids)}

    stop = _callback(best, "eval_loss", sign=-1.0) if generation else _callback(best, "eval_score")
    guard = _finite_guard(model, run or f"{task.name} seed {seed}")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=valid,
        data_collator=collator,
        compute_metrics=None if generation else compute_metrics,
        callbacks=[guard, stop, *callbacks],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its raw log dicts; callbacks report what matters
    with PeakMemory() as memory:
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    best.restore()
    epochs_run = float(trainer.state.epoch or 0.0)
    if generation:
        result = _decode_and_score(model, tokenizer, data, decoding, progress)
    else:
        current["split"] = "eval"
        final = trainer.predict(encode(data.eval, tokenizer, task.kind, settings.max_length)).metrics["test_score"]
        result = RunResult(best.best, final, None, 0.0, 0.0, 0.0, scores={task.metric: final})
    result.valid = -best.best if generation else best.best  # generation: the best validation loss
    result.best_epoch, result.epochs_run, result.train_seconds = best.best_epoch, epochs_run, round(seconds, 1)
    result.peak_memory_mb, result.history = memory.megabytes, with_train_loss(best.history, trainer.state.log_history)
    if generation:
        from .tasks.data import pairs

        result.n_pairs = {"train": len(train), "train_left_out": len(pairs(data.train)) - len(train)}
    return result


def with_train_loss(history: list[dict[str, float]], log: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Each epoch's validation entry with the mean training loss the Trainer logged for that epoch."""
    losses = {round(entry["epoch"], 6): entry["loss"] for entry in log if "loss" in entry and "epoch" in entry}
    return [{**h, "train_loss": losses[round(h["epoch"], 6)]} if round(h["epoch"], 6) in losses else h for h in history]


def _decode_and_score(model: nn.Module, tokenizer: Any, data: Any, decoding: Any, progress: bool) -> RunResult:
    """Generate for every evaluation input and score the task's metrics against all its references."""
    from .decoding import DecodingConfig, generate
    from .metrics import generation_scores

    task = data.task
    decoding = decoding or DecodingConfig(max_new_tokens=task.max_new_tokens)
    sources = [e.source for e in data.eval]
    predictions = generate(model, tokenizer, sources, decoding, progress=progress, description=f"{task.name}: decoding",
                           where=f"{task.name} {data.eval_source}")  # fmt: skip
    scores = generation_scores(predictions, [list(e.references) for e in data.eval], tuple(task.metric), task=task.name)
    scores.update(category_scores(task, data.eval, predictions))
    return RunResult(0.0, scores[task.metric[0]], None, 0.0, 0.0, 0.0, scores=scores, predictions=predictions)


def category_scores(task: Any, examples: list[Any], predictions: list[str]) -> dict[str, float]:
    """WebNLG's Seen / Unseen report: ``{"<metric>/seen": ..., "<metric>/unseen": ...}`` (the plain metric
    names are All) when the task names its seen categories and the examples hold some of each (the test
    split; dev has seen categories only, and then this is empty)."""
    from .metrics import generation_scores
    from .tasks.data import category_splits

    if not task.seen_categories or any(e.category is None for e in examples):
        return {}
    splits = category_splits(examples, task.seen_categories)
    if not splits["seen"] or not splits["unseen"]:
        return {}
    index = {id(e): i for i, e in enumerate(examples)}
    scores = {}
    for part in ("seen", "unseen"):
        chosen = [index[id(e)] for e in splits[part]]
        values = generation_scores([predictions[i] for i in chosen], [list(examples[i].references) for i in chosen],
                                   tuple(task.metric), task=task.name)  # fmt: skip
        scores.update({f"{metric}/{part}": value for metric, value in values.items()})
    return scores

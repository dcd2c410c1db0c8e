"""What ``memtune compare`` shows while it runs.

On a terminal: one bar for the plan (runs done / to do, an ETA from the runs finished so far and the
current run's progress) and one for the current run, labelled with its task, method and seed, showing the
epoch, the last training loss and the last validation score. Elsewhere (output redirected to a file, or
``--no-progress``): the same events as plain lines, one per run start, epoch and run end.
"""
from __future__ import annotations

import math
import sys
import time
from statistics import mean
from typing import Any, Callable, Sequence, TextIO


def eta_seconds(
    finished: Sequence[tuple[str, float]], remaining: Sequence[str], current: str | None = None, current_fraction: float = 0.0,
    current_elapsed: float = 0.0,
) -> float | None:
    """Seconds left: each remaining run is expected to take as long as the finished runs of its method did
    on average (all finished runs where its method has none yet); the current run, a blend of that
    expectation and its own step rate, weighted by how much of it is done. ``finished``: (method, seconds)
    of the runs done in this process. None before anything can be said."""
    if not finished and not (current and current_fraction > 0):
        return None
    overall = mean(s for _, s in finished) if finished else current_elapsed / current_fraction
    by_method: dict[str, list[float]] = {}
    for method, seconds in finished:
        by_method.setdefault(method, []).append(seconds)
    expected = lambda method: mean(by_method[method]) if method in by_method else overall  # noqa: E731
    left = sum(expected(m) for m in remaining)
    if current is not None:
        prior = max(expected(current) - current_elapsed, 0.0)
        f = current_fraction
        # the run's own step rate, trusted as much as the share of it done (its first steps carry its set-up)
        left += f * (current_elapsed * (1 - f) / f) + (1 - f) * prior if f > 0 else prior
    return left


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class PlanProgress:
    """The progress display of one comparison; ``start(label, method)`` begins a run and returns its
    :class:`RunProgress`, whose ``callback()`` goes to the Trainer."""

    def __init__(self, todo: Sequence[Any], bars: bool | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.todo = list(todo)  # RunSpec-like: .method
        self.stream = stream or sys.stderr
        self.bars = self.stream.isatty() if bars is None else bars
        self.clock = clock
        self.finished: list[tuple[str, float]] = []
        self._plan_bar = None
        self._run_bar = None
        self._current: dict[str, Any] = {}
        if self.bars and self.todo:
            from tqdm.auto import tqdm

            self._plan_bar = tqdm(total=len(self.todo), desc="plan", unit="run", file=self.stream, position=0,
                                  bar_format="{desc}: {n_fmt}/{total_fmt} runs |{bar}| {elapsed} elapsed{postfix}")
            self._plan_bar.set_postfix_str("ETA after the first run", refresh=True)

    # --- the plan ---------------------------------------------------------------------------------

    def eta(self) -> float | None:
        n = len(self.finished)
        remaining = [spec.method for spec in self.todo[n + 1:]] if self._current else [s.method for s in self.todo[n:]]
        current = self._current.get("method")
        fraction = self._current.get("fraction", 0.0)
        elapsed = self.clock() - self._current["start"] if self._current else 0.0
        return eta_seconds(self.finished, remaining, current, fraction, elapsed)

    def write(self, line: str) -> None:
        """A line of text that does not break the bars."""
        if self._plan_bar is not None:
            self._plan_bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def start(self, label: str, method: str) -> "RunProgress":
        self._current = {"method": method, "start": self.clock(), "fraction": 0.0, "label": label}
        if not self.bars:
            self.write(f"{label}: started")
        return RunProgress(self, label)

    def finish(self, method: str, line: str) -> None:
        self.finished.append((method, self.clock() - self._current["start"]))
        self._current = {}
        if self._run_bar is not None:
            self._run_bar.close()
            self._run_bar = None
        eta = self.eta()
        line += f"; ETA {format_duration(eta)}" if self.finished and len(self.finished) < len(self.todo) else ""
        self.write(line)
        if self._plan_bar is not None:
            self._plan_bar.update(1)
            self._plan_bar.set_postfix_str(f"ETA {format_duration(eta)}" if eta is not None else "", refresh=True)

    def skip(self, spec: Any, line: str) -> None:
        """A run of the plan this process will not train (another process took it): out of the ETA and the bar."""
        self.todo.remove(spec)
        self.write(line)
        if self._plan_bar is not None:
            self._plan_bar.total = len(self.todo)
            self._plan_bar.refresh()

    def close(self) -> None:
        for bar in (self._run_bar, self._plan_bar):
            if bar is not None:
                bar.close()
        self._run_bar = self._plan_bar = None

    # --- the current run (called by RunProgress) --------------------------------------------------

    def _steps(self, done: int, total: int, status: str) -> None:
        self._current["fraction"] = done / total if total else 0.0
        if not self.bars:
            return
        if self._run_bar is None:
            from tqdm.auto import tqdm

            self._run_bar = tqdm(total=total, desc=self._current["label"], unit="step", file=self.stream, position=1,
                                 leave=False, bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}]{postfix}")
        self._run_bar.n = done
        self._run_bar.set_postfix_str(status, refresh=True)
        if self._plan_bar is not None:
            eta = self.eta()
            self._plan_bar.set_postfix_str(f"ETA {format_duration(eta)}" if eta is not None else "", refresh=True)


class RunProgress:
    """Trainer callback of one run: feeds the run bar (or writes one line per epoch)."""

    def __init__(self, plan: PlanProgress, label: str):
        self.plan, self.label = plan, label
        self.loss: float | None = None
        self.valid: str | None = None  # "valid 60.00" (the task's metric) or "valid loss 1.234"
        self.epochs = 0

    def callback(self) -> Any:
        from transformers import TrainerCallback

        progress = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                progress.epochs = int(args.num_train_epochs) if args.max_steps <= 0 else None
                progress.update(state)

            def on_step_end(self, args, state, control, **kwargs):
                progress.update(state)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    progress.loss = float(logs["loss"])

            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                if metrics and "eval_score" in metrics:
                    progress.valid = f"valid {float(metrics['eval_score']):.2f}"
                elif metrics and "eval_loss" in metrics:  # generation tasks stop early on the validation loss
                    progress.valid = f"valid loss {float(metrics['eval_loss']):.3f}"
                else:
                    return
                progress.epoch_done(state)

        return _Callback()

    def status(self, state: Any) -> str:
        epoch = f"epoch {max(math.ceil(state.epoch or 0), 1)}"
        if self.epochs:
            epoch += f"/{self.epochs}"
        parts = [epoch]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        if self.valid is not None:
            parts.append(self.valid)
        return ", ".join(parts)

    def update(self, state: Any) -> None:
        self.plan._steps(state.global_step, state.max_steps, self.status(state))

    def epoch_done(self, state: Any) -> None:
        if not self.plan.bars:
            self.plan.write(f"{self.label}: {self.status(state)}")
        else:
            self.update(state)

"""experiments.progress: the ETA arithmetic and what a comparison shows while it runs."""
from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from memtune.experiments.progress import PlanProgress, eta_seconds, format_duration


def test_eta_uses_each_methods_own_average_and_the_overall_one_for_new_methods():
    finished = [("ft", 100.0), ("lora", 40.0), ("ft", 120.0)]
    # ft expected 110, lora 40, mt-f (none yet) the overall mean 260 / 3
    assert eta_seconds(finished, ["ft", "lora", "mt-f"]) == pytest.approx(110 + 40 + 260 / 3)


def test_eta_counts_what_is_left_of_the_current_run():
    assert eta_seconds([], ["lora"]) is None  # nothing to go by yet
    # a quarter of the current run took 30 s: 90 s left of it, and the next run is expected to take 120 s
    assert eta_seconds([], ["lora"], current="ft", current_fraction=0.25, current_elapsed=30.0) == pytest.approx(90 + 120)
    # no step yet: the current run is expected to take its method's average, minus what it has already taken
    assert eta_seconds([("ft", 50.0)], [], current="ft", current_elapsed=20.0) == pytest.approx(30)
    # a slow first step (set-up) barely moves the estimate: 1 of 45 steps in 5 s
    left = eta_seconds([("ft", 60.0)], [], current="mam", current_fraction=1 / 45, current_elapsed=5.0)
    assert left == pytest.approx(220 / 45 + 55 * 44 / 45) and left < 60


def test_format_duration():
    assert [format_duration(s) for s in (None, 7, 125, 3 * 3600 + 5 * 60)] == ["?", "7 s", "2 min 05 s", "3 h 05 min"]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _run_through(progress, clock, label, method, seconds, epochs=2, steps_per_epoch=5):
    run = progress.start(label, method)
    state = SimpleNamespace(global_step=0, max_steps=epochs * steps_per_epoch, epoch=0.0)
    args = SimpleNamespace(num_train_epochs=epochs, max_steps=-1)
    callback = run.callback()
    callback.on_train_begin(args, state, None)
    for step in range(1, epochs * steps_per_epoch + 1):
        clock.now += seconds / (epochs * steps_per_epoch)
        state.global_step, state.epoch = step, step / steps_per_epoch
        callback.on_step_end(args, state, None)
        if step % steps_per_epoch == 0:
            callback.on_log(args, state, None, logs={"loss": 1.0 / step})
            metrics = {"eval_loss": 2.0 / step} if method == "gen" else {"eval_score": 50.0 + step}
            callback.on_evaluate(args, state, None, metrics=metrics)
    progress.finish(method, f"{label}: done")


def test_plain_lines_when_not_on_a_terminal():
    stream, clock = io.StringIO(), Clock()
    todo = [SimpleNamespace(method="ft"), SimpleNamespace(method="lora")]
    progress = PlanProgress(todo, bars=None, stream=stream, clock=clock)  # a StringIO is no terminal
    _run_through(progress, clock, "[1/2] cb ft seed 0", "ft", 60.0)
    _run_through(progress, clock, "[2/2] cb lora seed 0", "lora", 30.0)
    progress.close()
    assert stream.getvalue().splitlines() == [
        "[1/2] cb ft seed 0: started",
        "[1/2] cb ft seed 0: epoch 1/2, loss 0.200, valid 55.00",
        "[1/2] cb ft seed 0: epoch 2/2, loss 0.100, valid 60.00",
        "[1/2] cb ft seed 0: done; ETA 1 min 00 s",  # lora has no time of its own yet: ft's 60 s
        "[2/2] cb lora seed 0: started",
        "[2/2] cb lora seed 0: epoch 1/2, loss 0.200, valid 55.00",
        "[2/2] cb lora seed 0: epoch 2/2, loss 0.100, valid 60.00",
        "[2/2] cb lora seed 0: done",
    ]


def test_bars_name_the_run_and_show_its_epoch_loss_and_validation_score():
    stream, clock = io.StringIO(), Clock()
    progress = PlanProgress([SimpleNamespace(method="ft"), SimpleNamespace(method="ft")], bars=True, stream=stream, clock=clock)
    _run_through(progress, clock, "[1/2] cb ft seed 0", "ft", 60.0)
    progress.close()
    shown = stream.getvalue()
    assert "plan: 0/2 runs" in shown and "ETA after the first run" in shown and "plan: 1/2 runs" in shown
    assert "[1/2] cb ft seed 0 |" in shown and "epoch 2/2, loss 0.100, valid 60.00" in shown
    assert "ETA 1 min 00 s" in shown  # the second ft run is expected to take as long as the first


def test_a_generation_run_shows_its_validation_loss():
    stream, clock = io.StringIO(), Clock()
    progress = PlanProgress([SimpleNamespace(method="gen")], bars=False, stream=stream, clock=clock)
    _run_through(progress, clock, "[1/1] e2e lora seed 0", "gen", 10.0, epochs=1)
    assert "[1/1] e2e lora seed 0: epoch 1/1, loss 0.200, valid loss 0.400" in stream.getvalue()

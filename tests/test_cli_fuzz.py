"""Hostile command lines: every flag of `memtune compare` and `memtune params` with every kind of bad value.

Each must be refused with exit code 2 and a message (no traceback) before any run trains, or be a value
that really is usable, in which case the comparison reaches its first run (stopped there by the test).
"""
from __future__ import annotations

import pytest

from memtune.cli import main
from test_compare import FIXTURES, tiny_model_dir  # noqa: F401 - a fixture

VALUES = ["nan", "inf", "-inf", "-1", "0", "1e30", "1e400", "abc", "", ",", "1,,2", "9" * 40, "0x10", "-0", "None",
          "true", "1.5", "../nowhere"]  # fmt: skip
COMPARE_FLAGS = ["--epochs", "--batch-size", "--lr", "--max-length", "--patience", "--weight-decay", "--warmup-ratio",
                 "--eval-batch-size", "--max-steps", "--valid-size", "--optimizer", "--max-new-tokens", "--num-beams",
                 "--decode-batch-size", "--seeds", "--budgets", "--train-size", "--tasks", "--methods", "--profile",
                 "--model", "--data-dir"]  # fmt: skip
PARAMS_FLAGS = ["--model", "--method", "--budget"]


class ReachedTraining(Exception):
    """Raised instead of training: the command line was accepted."""


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise ReachedTraining

    import importlib

    monkeypatch.setattr(importlib.import_module("memtune.experiments.compare"), "run_one", refuse)


def outcome(capsys, argv: list[str]) -> str:
    """'refused' (exit 2 with a message on stderr) or 'accepted' (reached the first run)."""
    try:
        code = main(argv)
    except ReachedTraining:
        capsys.readouterr()
        return "accepted"
    except SystemExit as e:  # argparse: exit 2 with its usage message
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, f"{argv}: exit {code}\n{err[-2000:]}"
    assert err.strip(), f"{argv}: refused without a message"
    return "refused"


@pytest.mark.slow
def test_every_compare_flag_refuses_bad_values_with_a_message_before_training(capsys, tiny_model_dir, tmp_path, no_training):
    base = {"--model": str(tiny_model_dir), "--data-dir": str(FIXTURES), "--tasks": "cb", "--methods": "lora", "--seeds": "1",
            "--out": str(tmp_path / "out"), "--max-steps": "2"}  # fmt: skip
    accepted = []
    for flag in COMPARE_FLAGS:
        for value in VALUES:
            argv = ["compare", "--no-progress", *(x for k, v in {**base, flag: value}.items() for x in (k, v))]
            if outcome(capsys, argv) == "accepted":
                accepted.append((flag, value))
    # only finite numbers in range reach training (a huge rate diverges there and is recorded as failed), and
    # an empty --train-size / --data-dir, which means "not given"
    huge = "9" * 40
    assert sorted(accepted) == sorted([
        ("--lr", "1e30"), ("--lr", huge), ("--lr", "1.5"), ("--weight-decay", "0"), ("--weight-decay", "1e30"),
        ("--weight-decay", huge), ("--weight-decay", "-0"), ("--weight-decay", "1.5"), ("--warmup-ratio", "0"),
        ("--warmup-ratio", "-0"), ("--train-size", ""), ("--data-dir", ""),
    ]), accepted  # fmt: skip
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_every_params_flag_refuses_bad_values_with_a_message(capsys):
    accepted = []
    for flag in PARAMS_FLAGS:
        for value in VALUES:
            argv = ["params", *(x for k, v in {"--model": "minilm", "--method": "mt-f", "--budget": "32", flag: value}.items()
                                for x in (k, v))]  # fmt: skip
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
            err = capsys.readouterr().err
            assert code in (0, 2) and "Traceback" not in err, f"{argv}: exit {code}\n{err[-2000:]}"
            if code == 0:
                accepted.append((flag, value))
    assert accepted == [], accepted

"""One configuration per results folder, each run trained once: concurrent `memtune compare` processes,
mixed or duplicated records, and results files that stay standard JSON."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memtune.errors import ConfigError
from memtune.experiments.ownership import FolderClaim
from memtune.experiments.results import append_result, check_records, finite_json, read_results
from test_compare import FIXTURES, compare, tiny_model_dir  # noqa: F401 - a fixture

SRC = Path(__file__).resolve().parents[1] / "src"
CONFIG = {"model": "m", "profile": "cpu", "overrides": {}}
OTHER = {"model": "m", "profile": "cpu", "overrides": {"learning_rate": 0.1}}


def record(method="lora", seed=0, config=CONFIG, **extra):
    return {"task": "cb", "method": method, "seed": seed, "budget": 32, "train_size": None, "config": config, "score": 1.0, **extra}


def test_a_live_comparison_keeps_other_settings_out_and_lets_the_same_settings_join(tmp_path):
    with FolderClaim(tmp_path, CONFIG):
        with pytest.raises(ConfigError, match=r"another memtune compare \(pid \d+ on .*\) is writing to .* with other settings \(overrides"):
            with FolderClaim(tmp_path, OTHER):
                pass
        with FolderClaim(tmp_path, CONFIG):  # the same settings: it may share the plan
            pass
        with pytest.raises(ConfigError, match="a torchrun comparison needs the folder to itself"):
            with FolderClaim(tmp_path, CONFIG, alone=True):
                pass
    with FolderClaim(tmp_path, OTHER):  # the folder is idle again (a process that died frees it the same way)
        with pytest.raises(ConfigError, match="with other settings"):
            with FolderClaim(tmp_path, CONFIG):
                pass


def test_a_torchrun_comparison_keeps_every_other_process_out(tmp_path):
    with FolderClaim(tmp_path, CONFIG, alone=True):
        with pytest.raises(ConfigError, match="with other settings"):
            with FolderClaim(tmp_path, OTHER):
                pass
        with pytest.raises(ConfigError, match="needs the folder to itself"):  # even a torchrun one with the same settings
            with FolderClaim(tmp_path, CONFIG, alone=True):
                pass


def test_a_run_is_claimed_by_one_process_and_not_at_all_once_recorded(tmp_path):
    key = ("cb", "lora", 0, 32, None)
    with FolderClaim(tmp_path, CONFIG) as first, FolderClaim(tmp_path, CONFIG) as second:
        assert first.claim(key, done=set) is True
        assert second.claim(key, done=set) is False  # held by the first
        first.release(key)
        assert second.claim(key, done=lambda: {key}) is False  # free, but recorded meanwhile
        assert second.claim(key, done=set) is True


def test_a_process_killed_mid_run_leaves_no_claim_behind(tmp_path):
    key = ("cb", "lora", 0, 32, None)
    script = (f"import os, sys; sys.path.insert(0, {str(SRC)!r}); from memtune.experiments.ownership import FolderClaim\n"
              f"c = FolderClaim({str(tmp_path)!r}, {CONFIG!r}).__enter__(); c.claim({key!r}, done=set); os.kill(os.getpid(), 9)")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    with FolderClaim(tmp_path, OTHER) as claim:  # idle again: other settings may start (no records yet)
        assert claim.claim(key, done=set) is True


def test_a_comparison_skips_the_runs_another_process_holds(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = {"model": str(tiny_model_dir), "profile": "cpu", "overrides": {"epochs": 1, "max_train_steps": 2}}
    with FolderClaim(out, config) as other:
        assert other.claim(("cb", "lora", 0, 32, None), done=set)
        code, text, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb", "--methods", "lora,mt-f", "--seeds", "1")
    assert code == 0, err
    assert [r["method"] for r in read_results(out / "results.jsonl")] == ["mt-f"]
    assert "cb lora (budget 32) seed 0: taken by another process" in err and "1 run(s) were left to other processes" in text


def test_a_comparison_with_other_settings_is_refused_while_one_is_live(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    with FolderClaim(out, {"model": str(tiny_model_dir), "profile": "cpu", "overrides": {"epochs": 3}}):
        code, _, err = compare(capsys, tiny_model_dir, out, "--tasks", "cb", "--methods", "lora", "--seeds", "1")
    assert code == 2 and "with other settings" in err and "Traceback" not in err
    assert not (out / "results.jsonl").exists()


@pytest.mark.slow
def test_two_identical_comparisons_in_parallel_train_each_run_once(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["compare", "--model", str(tiny_model_dir), "--data-dir", str(FIXTURES), "--out", str(out), "--epochs", "1",
            "--max-steps", "2", "--no-progress", "--tasks", "cb", "--methods", "lora,mt-f,bitfit", "--seeds", "2"]  # fmt: skip
    script = f"import sys; sys.path.insert(0, {str(SRC)!r}); from memtune.cli import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-2000:] for o in outputs]
    records = read_results(out / "results.jsonl")
    keys = [(r["method"], r["seed"]) for r in records]
    assert sorted(keys) == sorted((m, s) for m in ("lora", "mt-f", "bitfit") for s in (0, 1))  # each run once, none lost
    check_records(records, out)


def test_a_results_file_mixing_settings_or_holding_a_run_twice_is_refused_by_table(capsys, tmp_path):
    from memtune.cli import main

    for lines in ([record(), record(config=OTHER, method="mt-f")], [record(), record(score=2.0)]):
        (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        assert main(["table", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert ("another configuration" in err or "twice (records 1 and 2)" in err) and "Traceback" not in err
    check_records([record(status="failed", score=None), record()], tmp_path)  # a retried failed run is no duplicate


def test_records_are_standard_json_and_say_which_values_were_not_finite(tmp_path):
    path = tmp_path / "results.jsonl"
    append_result(path, record(valid=math.nan, history=[{"epoch": 1.0, "valid": math.inf}]))
    line = path.read_text()
    stored = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert stored["valid"] is None and stored["history"][0]["valid"] is None
    assert stored["non_finite"] == ["valid", "history[0].valid"] and stored["score"] == 1.0
    assert finite_json({"a": [1.0, -math.inf]}) == {"a": [1.0, None], "non_finite": ["a[1]"]}

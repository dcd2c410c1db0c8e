"""Kills `memtune compare` with SIGKILL at random moments and checks that reruns finish the plan exactly.

Imports memtune once, then forks one child per attempt (each child runs ``memtune compare`` with ARGV),
so that an attempt costs the work, not the start-up. A reference child runs uninterrupted first, into
OUT/reference, timing the plan (D seconds). Then rounds: each round starts an empty folder and repeats
"start a child, SIGKILL it after a uniform random delay in [0, D]" until a child finishes on its own;
the round's results must equal the reference's: every run once, the same scores bit for bit, the same
Table III, no temporary files left. Rounds go on until KILLS children have been killed mid-plan.

Usage: python kill_harness.py OUT KILLS SEED -- ARGV...   (ARGV without --out; prints one JSON summary line)
"""
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import peft  # noqa: F401 - imported once here, not by every child (memtune imports these lazily)
import transformers.trainer  # noqa: F401
from memtune.cli import main
from memtune.experiments import compare, report, results  # noqa: F401
from memtune.experiments.results import read_results
from memtune import train  # noqa: F401

VOLATILE = ("train_seconds", "peak_memory_mb", "finished")  # the only record fields allowed to differ


def child(argv: list[str], out: Path, log: Path) -> int:
    """Start ``memtune compare ARGV --out OUT`` in a forked child, its output appended to ``log``; its pid."""
    pid = os.fork()
    if pid == 0:
        sink = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        try:
            code = main([*argv, "--out", str(out)])
        except BaseException:
            code = 70
        os._exit(code)
    return pid


def stable(records: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in records), key=lambda r: json.dumps(r, sort_keys=True))


def main_harness(out: Path, kills: int, seed: int, argv: list[str]) -> dict:
    rng = random.Random(seed)
    start = time.perf_counter()
    log = out / "children.log"
    out.mkdir(parents=True, exist_ok=True)
    _, status = os.waitpid(child(argv, out / "reference", log), 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the uninterrupted reference run failed:\n{log.read_text()[-3000:]}"
    duration = time.perf_counter() - start
    reference = stable(read_results(out / "reference" / "results.jsonl"))
    table = (out / "reference" / "table3.md").read_text()
    killed, rounds, delays = 0, 0, []
    while killed < kills:
        rounds += 1
        folder = out / f"round{rounds}"
        while True:
            pid = child(argv, folder, log)
            delay = rng.uniform(0, duration)
            time.sleep(delay)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:  # finished before its kill: the round is over
                assert os.waitstatus_to_exitcode(status) == 0, f"round {rounds}: a rerun failed:\n{log.read_text()[-3000:]}"
                break
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            killed, delays = killed + 1, delays + [round(delay, 2)]
        records = read_results(folder / "results.jsonl")
        keys = [tuple(r[k] for k in ("task", "method", "seed")) for r in records]
        assert len(keys) == len(set(keys)), f"round {rounds}: a run was recorded twice: {keys}"
        assert stable(records) == reference, f"round {rounds}: the records differ from the uninterrupted run's"
        assert (folder / "table3.md").read_text() == table, f"round {rounds}: Table III differs"
        leftovers = [p.name for p in folder.rglob("*.tmp")]
        assert not leftovers, f"round {rounds}: temporary files left: {leftovers}"
    return {"kills": killed, "rounds": rounds, "runs": len(reference), "plan_seconds": round(duration, 2), "delays": delays}


if __name__ == "__main__":
    separator = sys.argv.index("--")
    out, kills, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(main_harness(out, kills, seed, sys.argv[separator + 1 :])))

"""The timing protocol shared by the benches: interleaved paired timings and a ratio with its interval.

    ratio = 100 * sum_b t_method[b] / sum_b t_base[b]

over the timed batches b; its 95% interval is the percentile bootstrap of that ratio of sums, resampling
the batches (each batch keeps its pair of timings, so batch-to-batch differences in input length cancel).
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ConfigError


BASELINE = "untuned"  # the contender every other is timed against (= 100)


@dataclass(frozen=True)
class Ratio:
    """A contender's time relative to the baseline's (= 100), with a bootstrap interval."""

    value: float
    low: float
    high: float
    confidence: float

    def __str__(self) -> str:
        return f"{self.value:.1f} [{self.low:.1f}, {self.high:.1f}]"


def interleaved(
    contenders: dict[str, Callable[[int], object]],
    batches: int,
    *,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per batch for each contender: ``contenders[name](b)`` runs batch ``b``.

    The first ``warmup`` batches run for every contender untimed (the first calls pay for allocations
    and lazy set-up); then, batch by batch, every contender runs batch b, starting from contender
    number b mod n, so each one is first equally often."""
    if not contenders:
        raise ConfigError("nothing to time: no contenders")
    if batches < 1:
        raise ConfigError(f"nothing to time: {batches} batches")
    names = list(contenders)
    for b in range(min(warmup, batches)):
        for name in names:
            contenders[name](b)
    times: dict[str, list[float]] = {name: [] for name in names}
    for b in range(batches):
        shift = b % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            contenders[name](b)
            times[name].append(clock() - start)
        if on_batch is not None:
            on_batch(b)
    return times


def ratio(base: Sequence[float], other: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000,
          seed: int = 0) -> Ratio:  # fmt: skip
    """100 x sum(other) / sum(base) with the percentile-bootstrap interval over paired batches."""
    if len(base) != len(other) or not base:
        raise ConfigError(f"paired timings needed: {len(base)} baseline and {len(other)} contender batches")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1, got {confidence}")
    value = 100.0 * sum(other) / sum(base)
    rng, n = random.Random(seed), len(base)
    draws = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        draws.append(100.0 * sum(other[i] for i in picks) / sum(base[i] for i in picks))
    draws.sort()
    tail = (1 - confidence) / 2
    low, high = draws[int(tail * (resamples - 1))], draws[int(round((1 - tail) * (resamples - 1)))]
    return Ratio(value, low, high, confidence)


def machine_state() -> dict[str, object]:
    """What a timing depends on: threads, cores, and the load average (1, 5, 15 min) when the OS reports it."""
    import torch

    state: dict[str, object] = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        state["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return state


def peak_rss_mb() -> float:
    """The process's peak resident memory (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def write(result: dict[str, object], out: str | os.PathLike) -> Path:
    """``<out>/<bench>-<model>[-<task>].json`` (atomic), beside the printed table."""
    import json

    from ..io import atomic_write

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(str(result["model"])).name)
    task = f"-{result['task']}" if result.get("task") else ""
    path = Path(out) / f"{result['bench']}-{safe}{task}.json"
    atomic_write(path, (json.dumps(result, indent=1) + "\n").encode())
    return path


def environment(before: dict[str, object]) -> dict[str, object]:
    """What every bench result records about where it ran: the machine before and after, peak memory,
    versions, and when it finished."""
    from datetime import datetime, timezone

    import torch
    import transformers

    return {
        "machine": {"before": before, "after": machine_state()}, "peak_rss_mb": peak_rss_mb(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip


def machine_line(result: dict) -> str:
    """The line under a bench table: threads, load before and after, peak memory."""
    m = result["machine"]
    return (f"torch threads {m['before']['torch_threads']} of {m['before']['cpu_count']} cores; load average "
            f"{m['before'].get('load_average')} before, {m['after'].get('load_average')} after; peak memory "
            f"{result['peak_rss_mb']:.0f} MB")  # fmt: skip


def relative_cell(name: str, row: dict) -> str:
    """A table cell: 100 for the baseline, else the row's ratio with its interval, "103.0 [101.3, 104.8]"."""
    return "100" if name == BASELINE else f"{row['ratio']:.1f} [{row['low']:.1f}, {row['high']:.1f}]"

"""``memtune bench latency``: the paper's Table VI, the forward time of each method relative to the untuned
model (= 100), on one fixed batch of token ids.

Every method is attached (freshly, with its recipe's defaults: its cost does not depend on its trained
values) to its own copy of the model, in eval mode without gradients, so that each method's inference
fast path runs. The contenders run the same batch in turn (``timing.interleaved``, rotating who goes
first), in rounds, until every ratio's 95% interval is at most +-``precision`` points wide or
``max_seconds`` have passed (then the result says the target precision was not reached).
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from .timing import BASELINE, Ratio, environment, interleaved, machine_line, machine_state, ratio, relative_cell

ROUNDS_PER_CHECK = 10  # rounds between two looks at the intervals (a look costs no timed work)
MIN_ROUNDS = 20


def precise(ratios: dict[str, Ratio], precision: float) -> bool:
    """Whether every interval's half-width is at most ``precision`` points."""
    return all((r.high - r.low) / 2 <= precision for r in ratios.values())


def latency_bench(
    model_name: str,
    methods: Sequence[str],
    *,
    batch_size: int = 32,
    seq_len: int = 128,
    precision: float = 1.0,
    max_seconds: float = 600.0,
    threads: int | None = None,
    progress: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Time the untuned model and each method on one (batch_size, seq_len) batch; the result as a dict (per
    contender: ms per batch; per method: ratio to untuned = 100 and its 95% interval)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification

    from .. import attach, recipe
    from ..models import load_model

    methods = list(dict.fromkeys(recipe(m).name for m in methods))  # unknown names fail here, before any loading
    for name, value in (("--batch", batch_size), ("--seq", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not precision > 0 or not max_seconds > 0:
        raise ConfigError(f"--precision and --max-seconds must be positive, got {precision} and {max_seconds}")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be a positive integer, got {threads}")
        torch.set_num_threads(threads)
    base = load_model(model_name, AutoModelForSequenceClassification, num_labels=2).eval()
    positions = getattr(base.config, "max_position_embeddings", None)
    if isinstance(positions, int) and seq_len > positions:
        raise ConfigError(f"--seq {seq_len} is more than the {positions} positions {model_name} has")
    models = {BASELINE: base, **{name: attach(copy.deepcopy(base), recipe(name)).eval() for name in methods}}
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(5, base.config.vocab_size, (batch_size, seq_len), generator=g),
              "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long)}  # fmt: skip

    def contender(name: str) -> Callable[[int], None]:
        def run(_: int) -> None:
            with torch.no_grad():
                models[name](**inputs)

        return run

    before, start = machine_state(), clock()
    times: dict[str, list[float]] = {name: [] for name in models}
    ratios: dict[str, Ratio] = {}
    bar = tqdm(desc=f"bench latency {model_name}", unit="round", disable=not progress, leave=False)
    try:
        while True:
            chunk = interleaved({name: contender(name) for name in models}, ROUNDS_PER_CHECK,
                                warmup=0 if times[BASELINE] else 1, clock=clock, on_batch=lambda b: bar.update())  # fmt: skip
            for name in models:
                times[name] += chunk[name]
            ratios = {name: ratio(times[BASELINE], times[name]) for name in methods}
            rounds = len(times[BASELINE])
            reached = precise(ratios, precision)
            if (reached and rounds >= MIN_ROUNDS) or clock() - start >= max_seconds:
                break
    finally:
        bar.close()
    results = {}
    for name in models:
        row = {"ms_per_batch": round(1000 * sum(times[name]) / len(times[name]), 3), "batch_seconds": [round(t, 4) for t in times[name]]}
        if name in ratios:
            r = ratios[name]
            row.update(ratio=round(r.value, 2), low=round(r.low, 2), high=round(r.high, 2))
        results[name] = row
    return {
        "bench": "latency", "model": model_name, "batch_size": batch_size, "seq_len": seq_len, "rounds": rounds,
        "precision": precision, "precision_reached": reached, "max_seconds": max_seconds,
        "seconds": round(clock() - start, 1), "warmup_rounds": 1, "confidence": 0.95, "results": results,
        **environment(before),
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """Table VI: each method's forward time relative to the untuned model (= 100), with its 95% interval."""
    lines = [
        f"Forward time of {result['model']} on one batch of {result['batch_size']} x {result['seq_len']} token ids, "
        f"eval mode, no gradients: {result['rounds']} interleaved rounds in {result['seconds']:.0f} s",
        "",
        "| Method | ms / batch | Relative time (untuned = 100) [95% CI] |",
        "|---|---|---|",
    ]
    for name, row in result["results"].items():
        lines.append(f"| {name} | {row['ms_per_batch']:.1f} | {relative_cell(name, row)} |")
    reached = (f"every interval within +-{result['precision']:g} points" if result["precision_reached"] else
               f"NOT every interval within +-{result['precision']:g} points: stopped at the {result['max_seconds']:.0f} s limit")  # fmt: skip
    lines += ["", f"{reached}; {machine_line(result)}"]
    return "\n".join(lines)

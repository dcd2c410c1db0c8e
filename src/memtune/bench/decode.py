"""``memtune bench decode``: what a tuning method costs when generating, relative to the untuned model.

The model is loaded once; every method is attached (freshly, with its recipe's defaults: the cost of a
method does not depend on its trained values) to its own copy. The task's evaluation inputs are decoded
in batches through :func:`memtune.decoding.generate_ids` (``generate()``, left padding, the KV cache,
nothing but token ids kept), every contender on the same batch in turn (``timing.interleaved``). By
default every input is decoded to exactly ``max_new_tokens`` tokens (the end-of-sequence token is
suppressed until then), so that all contenders do the same number of steps and the ratio measures cost
per token; ``natural_length=True`` lets each stop at its own end-of-sequence token instead.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

from ..errors import ConfigError
from .timing import BASELINE, environment, interleaved, machine_line, machine_state, ratio, relative_cell

def decode_bench(
    model_name: str,
    task_name: str,
    methods: Sequence[str],
    *,
    data_dir: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    natural_length: bool = False,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Decode the task's evaluation inputs with the untuned model and with each method; the result as a dict
    (per contender: seconds, tokens, ms per token, ratio to untuned = 100 with its 95% interval)."""
    import torch
    from tqdm.auto import tqdm

    from .. import attach, recipe
    from ..decoding import DecodingConfig, generate_ids
    from ..experiments.compare import load_for_task
    from ..tasks import get_task, load_task

    task = get_task(task_name)
    if task.kind != "generation":
        raise ConfigError(f"bench decode needs a generation task; {task_name} is a {task.kind} task (e.g. use e2e or webnlg)")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be a positive number of inputs, got {limit}")
    methods = list(dict.fromkeys(recipe(m).name for m in methods))  # unknown names fail here, before any loading
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be a positive integer, got {threads}")
        torch.set_num_threads(threads)
    new_tokens = max_new_tokens or task.max_new_tokens
    config = DecodingConfig(max_new_tokens=new_tokens, batch_size=batch_size, min_new_tokens=0 if natural_length else new_tokens)
    data = load_task(task_name, data_dir)
    sources = [e.source for e in data.eval][:limit]
    base, tokenizer = load_for_task(model_name, task)
    models = {BASELINE: base}
    for name in methods:
        models[name] = attach(copy.deepcopy(base), recipe(name))
    batches = [sources[i : i + batch_size] for i in range(0, len(sources), batch_size)]
    tokens = {name: [0] * len(batches) for name in models}

    def contender(name: str):
        def run(b: int) -> None:
            ids = generate_ids(models[name], tokenizer, batches[b], config, progress=False, where=f"{task_name} {data.eval_source}")
            tokens[name][b] = sum(len(row) for row in ids)

        return run

    before = machine_state()
    bar = tqdm(total=len(batches), desc=f"bench decode {task_name}", unit="batch", disable=not progress, leave=False)
    try:
        times = interleaved({name: contender(name) for name in models}, len(batches), on_batch=lambda b: bar.update())
    finally:
        bar.close()
    results = {}
    for name in models:
        seconds, count = sum(times[name]), sum(tokens[name])
        row = {"seconds": round(seconds, 3), "tokens": count, "ms_per_token": round(1000 * seconds / max(count, 1), 3),
               "batch_seconds": [round(t, 3) for t in times[name]]}  # fmt: skip
        if name != BASELINE:
            r = ratio(times[BASELINE], times[name])
            row.update(ratio=round(r.value, 2), low=round(r.low, 2), high=round(r.high, 2))
        results[name] = row
    return {
        "bench": "decode", "model": model_name, "task": task_name, "split": data.eval_source, "inputs": len(sources),
        "batch_size": batch_size, "batches": len(batches), "max_new_tokens": new_tokens, "natural_length": natural_length,
        "num_beams": 1, "warmup_batches": 1, "confidence": 0.95, "results": results, **environment(before),
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """The bench as a table: untuned = 100, each method's ratio with its 95% interval."""
    lines = [
        f"Decoding {result['inputs']} {result['task']} inputs ({result['split']}) with {result['model']}: batches of "
        f"{result['batch_size']}, greedy, {result['max_new_tokens']} new tokens"
        + (" (each stops at its end-of-sequence token)" if result["natural_length"] else " each (fixed length)"),
        "",
        "| Method | Time (s) | Tokens | ms / token | Relative time (untuned = 100) [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["results"].items():
        lines.append(f"| {name} | {row['seconds']:.1f} | {row['tokens']} | {row['ms_per_token']:.2f} | {relative_cell(name, row)} |")
    lines += ["", machine_line(result)]
    return "\n".join(lines)

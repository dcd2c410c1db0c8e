"""``memtune visualize``: what the external memories learned, as the paper's Figs. 3-4 with numbers beside.

A tuned checkpoint is loaded onto its base model and run over a task's evaluation inputs. The attention
over each memory of one layer (``scores``) is kept for the first token of each input (sentence tasks)
or every labelled token (token tasks), reduced with PCA to 10 and t-SNE to 2 (``analysis.reduce``) and
drawn coloured by label (``plot``). Each memory gets its cluster quality (silhouette and nearest-neighbour
label agreement, in the raw score space and in the picture), and the same for the same methods freshly
attached (untrained) to the same base model, the baseline the trained numbers are to beat.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MemtuneError

MAX_POINTS = 4000  # t-SNE's cost grows with n log n; enough points for a picture, a sample beyond
MIN_POINTS = 5  # t-SNE needs more points than its perplexity (2 at least)


@dataclass
class Panel:
    """One memory's points in the picture, trained or freshly attached."""

    memory: str  # e.g. "FFN memory (Eq. 8), layer 11"
    kind: str  # "prefix" or "ffn"
    state: str  # "trained" or "untrained"
    xy: np.ndarray  # (n, 2) t-SNE
    labels: np.ndarray  # (n,) label names
    quality: dict[str, float | None] = field(default_factory=dict)


def collect(model: Any, tokenizer: Any, task: Any, examples: list[Any], layer: int, max_length: int = 128,
            batch_size: int = 32) -> tuple[dict[str, np.ndarray], np.ndarray, list[Any]]:  # fmt: skip
    """Score vectors per memory kind, (n, size) each, and their labels (names): the first token of each
    input for sentence tasks, every labelled word's first sub-token for token tasks. Also the memories."""
    import torch
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    from ..train import IGNORE, encode
    from .scores import memories, observing

    found = memories(model, layer)
    features = encode(examples, tokenizer, task.kind, max_length)
    collator = (DataCollatorWithPadding if task.kind == "sentence" else DataCollatorForTokenClassification)(tokenizer)
    rows: dict[str, list[np.ndarray]] = {m.kind: [] for m in found}
    labels: list[np.ndarray] = []
    model.eval()
    with torch.no_grad(), observing(found) as store:
        for start in range(0, len(features), batch_size):
            batch = collator(features[start : start + batch_size])
            gold = batch.pop("labels")
            model(**{k: v.to(model.device) for k, v in batch.items()})
            for kind in rows:
                scores = store[kind].pop().numpy()  # (B, T, size) of this forward pass
                rows[kind].append(scores[:, 0] if task.kind == "sentence" else scores[gold.numpy() != IGNORE])
            labels.append(gold.numpy() if task.kind == "sentence" else gold.numpy()[gold.numpy() != IGNORE])
    names = np.asarray(task.labels, dtype=object)[np.concatenate(labels)]
    return {kind: np.concatenate(r) for kind, r in rows.items()}, names, found


def panels(scores: dict[str, np.ndarray], labels: np.ndarray, found: list[Any], state: str, seed: int) -> list[Panel]:
    """Each memory's 2-D picture and cluster quality (at most MAX_POINTS points, a seeded sample)."""
    from .analysis import quality, reduce

    if len(labels) < MIN_POINTS:
        raise MemtuneError(f"only {len(labels)} points to draw; visualize needs at least {MIN_POINTS}: raise "
                           f"--max-examples or use a task whose evaluation split has more inputs")  # fmt: skip
    chosen = np.arange(len(labels))
    if len(chosen) > MAX_POINTS:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, MAX_POINTS, replace=False))
    result = []
    for memory in found:
        raw = scores[memory.kind][chosen]
        _, flat = reduce(raw, seed)
        result.append(Panel(memory.name, memory.kind, state, flat, labels[chosen], quality(raw, flat, labels[chosen], seed)))
    return result


def visualize(checkpoint: str | os.PathLike, model_name: str, task_name: str, out: str | os.PathLike, *, layer: int = -1,
              data_dir: str | None = None, max_examples: int = 1000, max_length: int = 128, seed: int = 0,
              log: Any = print) -> dict[str, Any]:  # fmt: skip
    """Draw ``<out>/<task>-layer<L>.png`` (trained memories on top, freshly attached ones below) and write the
    points (``-points.csv``) and the cluster numbers (``-quality.json``); returns the numbers."""
    from transformers import set_seed

    from .. import attach, load
    from ..experiments.compare import load_for_task
    from ..io import atomic_write, read_config
    from ..methods.base import MethodConfig, Recipe
    from ..tasks import get_task, load_task
    from ..tasks.data import sample
    from .plot import draw, points_csv

    task = get_task(task_name)
    if task.kind == "generation":
        raise MemtuneError(f"visualize colours points by label; {task_name} is a generation task without labels")
    data = load_task(task_name, data_dir, seed=0)
    examples = data.eval if len(data.eval) <= max_examples else sample(data.eval, max_examples, seed=0, unit="evaluation examples")
    saved = read_config(checkpoint)
    model, tokenizer = load_for_task(model_name, task)
    load(model, checkpoint)
    log(f"memtune visualize: {len(examples)} {data.eval_source} inputs of {task_name}, layer {layer}")
    trained, labels, found = collect(model, tokenizer, task, examples, layer, max_length)
    configs = [MethodConfig.from_dict(c) for c in saved["methods"]]
    set_seed(seed)
    fresh, _ = load_for_task(model_name, task)
    attach(fresh, Recipe(saved["recipe"], saved.get("budget") or 0, configs) if saved.get("recipe") else configs)
    untrained, _, fresh_found = collect(fresh, tokenizer, task, examples, layer, max_length)
    shown = panels(trained, labels, found, "trained", seed) + panels(untrained, labels, fresh_found, "untrained", seed)
    out = Path(out)
    stem = f"{task_name}-layer{found[0].layer}"
    title = f"{saved.get('recipe') or '+'.join(c.method for c in configs)} on {task.title}, {model_name}: attention over the external memory"
    atomic_write(out / f"{stem}.png", draw(shown, list(task.labels), title))
    atomic_write(out / f"{stem}-points.csv", points_csv(shown).encode())
    report = {
        "checkpoint": str(checkpoint), "model": model_name, "task": task_name, "layer": found[0].layer,
        "inputs": len(examples), "split": data.eval_source, "points": int(len(labels)), "seed": seed,
        "panels": [{"memory": p.memory, "state": p.state, "points": int(len(p.labels)), **p.quality} for p in shown],
    }  # fmt: skip
    atomic_write(out / f"{stem}-quality.json", (json.dumps(report, indent=2) + "\n").encode())
    for path in (f"{stem}.png", f"{stem}-points.csv", f"{stem}-quality.json"):
        log(f"wrote {out / path}")
    return report

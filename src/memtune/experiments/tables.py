"""The paper's tables and Fig. 2, rendered by pure functions from run records (no training here).

- Table III/IV: per task the mean and std of the score over seeds; #Tuned and #Stored (% of backbone);
  the average score and the average rank (1 = best), each as mean and std over seeds. Best in bold,
  second underlined.
- Table V: the same scores for each training-set size (low-data).
- Fig. 2: score against the parameter budget, as CSV and a PNG plot.
- Table III as a bar chart (``bar_rows``, ``bars_plot``): mean and std over seeds per task and method.
"""
from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from typing import Any, Iterable

from ..methods.recipes import RECIPES

DISPLAY = {name: spec.display for name, spec in RECIPES.items()}
ORDER = ["ft", "prefix", "mt-m", "adapter", "lora", "bitfit", "mam", "unipelt", "mt-f", "mt-mf", "mt-f-authors", "mt-mf-authors"]
"""The paper's row order (its Tables III-V); recipes not listed come after, by name."""


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _ranks(scores: dict[str, float]) -> dict[str, float]:
    """Rank 1 = best; ties share the average of their ranks."""
    ordered = sorted(scores.values(), reverse=True)
    return {m: statistics.fmean([i + 1 for i, v in enumerate(ordered) if v == s]) for m, s in scores.items()}


def main_budget(budgets: Iterable[int]) -> int | None:
    """The budget of Tables III and V: the paper's 32 when present, else the smallest."""
    budgets = sorted(set(budgets))
    return 32 if 32 in budgets else (budgets[0] if budgets else None)


def _ordered(methods: Iterable[str]) -> list[str]:
    methods = set(methods)
    return [m for m in ORDER if m in methods] + sorted(methods - set(ORDER))


def summarize(records: list[dict[str, Any]], column: str = "task") -> dict[str, Any]:
    """Scores by (method, column value, seed), with per-cell mean/std, averages and ranks over seeds.

    ``column`` is the record field that makes the table's columns ("task", or e.g. "task_size")."""
    scores: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    params: dict[str, list[tuple[float, float]]] = defaultdict(list)  # the % can differ by head (pooler or not)
    for r in records:
        scores[(r["method"], r[column])][r["seed"]] = float(r["score"])
        params[r["method"]].append((r["tuned_pct"], r["stored_pct"]))
    methods = _ordered({m for m, _ in scores})
    columns = list(dict.fromkeys(r[column] for r in records))  # in order of first appearance
    seeds = sorted({s for cell in scores.values() for s in cell})
    cells = {key: _mean_std(list(v.values())) for key, v in scores.items()}
    complete = [s for s in seeds if all(s in scores.get((m, c), {}) for m in methods for c in columns)]
    average, rank = {}, {}
    for m in methods:
        per_seed_avg = [statistics.fmean(scores[(m, c)][s] for c in columns) for s in complete]
        per_seed_rank = [
            statistics.fmean(_ranks({n: scores[(n, c)][s] for n in methods})[m] for c in columns) for s in complete
        ]
        if complete:
            average[m], rank[m] = _mean_std(per_seed_avg), _mean_std(per_seed_rank)
    return {
        "methods": methods, "columns": columns, "cells": cells, "params": params, "average": average,
        "rank": rank, "seeds": seeds, "complete_seeds": complete, "counts": {k: len(v) for k, v in scores.items()},
    }  # fmt: skip


def _marks(values: dict[str, float], higher_is_better: bool = True, digits: int = 1) -> dict[str, str]:
    """'best' / 'second' for the top two distinct values, as printed (``digits`` decimals): equal-looking cells
    get equal marks."""
    values = {m: round(v, digits) for m, v in values.items()}
    distinct = sorted(set(values.values()), reverse=higher_is_better)
    marks = {}
    for m, v in values.items():
        if distinct and v == distinct[0]:
            marks[m] = "best"
        elif len(distinct) > 1 and v == distinct[1]:
            marks[m] = "second"
    return marks


def _pct_range(values: list[float]) -> str:
    """'0.65%', or '8.52–8.57%' when tasks differ (a token head has no pooler, so the backbone is smaller)."""
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return f"{low}%" if low == high else f"{low}–{high}%"


def _fmt(mean: float, std: float, mark: str | None, digits: int = 1) -> str:
    text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"**{text}**" if mark == "best" else f"<u>{text}</u>" if mark == "second" else text


def markdown_table(summary: dict[str, Any], column_names: dict[str, str] | None = None) -> str:
    """Table III's layout in Markdown: best bold, second underlined, per column."""
    methods, columns, cells = summary["methods"], summary["columns"], summary["cells"]
    names = column_names or {}
    header = ["Method", "#Tuned", "#Stored", *[names.get(c, str(c)) for c in columns], "Avg. score", "Avg. rank"]
    marks = {c: _marks({m: cells[(m, c)][0] for m in methods if (m, c) in cells}) for c in columns}
    avg_marks = _marks({m: v[0] for m, v in summary["average"].items()})
    rank_marks = _marks({m: v[0] for m, v in summary["rank"].items()}, higher_is_better=False)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in methods:
        pcts = summary["params"][m]
        row = [DISPLAY.get(m, m), _pct_range([t for t, _ in pcts]), _pct_range([s for _, s in pcts])]
        for c in columns:
            n = summary["counts"].get((m, c), 0)
            partial = f" (n={n})" if 0 < n < len(summary["seeds"]) else ""  # fewer seeds than the others
            row.append(_fmt(*cells[(m, c)], marks[c].get(m)) + partial if (m, c) in cells else "–")
        row.append(_fmt(*summary["average"][m], avg_marks.get(m)) if m in summary["average"] else "–")
        row.append(_fmt(*summary["rank"][m], rank_marks.get(m)) if m in summary["rank"] else "–")
        lines.append("| " + " | ".join(row) + " |")
    seeds, complete = summary["seeds"], summary["complete_seeds"]
    lines.append("")
    lines.append(
        f"Mean ± std over seeds {seeds}. Averages and ranks use the seeds for which every method has every "
        f"column ({complete if complete else 'none yet'}); rank 1 is best. Best in bold, second underlined."
    )
    return "\n".join(lines)


def csv_table(summary: dict[str, Any], column_names: dict[str, str] | None = None) -> str:
    names = column_names or {}
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["method", "tuned_pct_min", "tuned_pct_max", "stored_pct_min", "stored_pct_max"]
    for c in summary["columns"]:
        header += [f"{names.get(c, c)}_mean", f"{names.get(c, c)}_std"]
    writer.writerow(header + ["avg_mean", "avg_std", "rank_mean", "rank_std"])
    for m in summary["methods"]:
        tuned, stored = [t for t, _ in summary["params"][m]], [s for _, s in summary["params"][m]]
        row: list[Any] = [m, round(min(tuned), 4), round(max(tuned), 4), round(min(stored), 4), round(max(stored), 4)]
        for c in summary["columns"]:
            row += [round(v, 4) for v in summary["cells"][(m, c)]] if (m, c) in summary["cells"] else ["", ""]
        for part in ("average", "rank"):
            row += [round(v, 4) for v in summary[part][m]] if m in summary[part] else ["", ""]
        writer.writerow(row)
    return out.getvalue()


def low_data_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with a ``task_size`` column (Table V: one column per task and training-set size)."""
    return [{**r, "task_size": f"{r['task']} ({r['train_size']})"} for r in records if r.get("train_size")]


def sweep_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fig. 2's data: mean and std over seeds per task, method and budget."""
    groups: dict[tuple[str, str, int], dict[int, float]] = defaultdict(dict)
    for r in records:  # one score per seed: a run recorded twice counts once (the later record)
        groups[(r["task"], r["method"], r["budget"])][r["seed"]] = float(r["score"])
    rows = []
    for (task, method, budget), by_seed in sorted(groups.items(), key=lambda kv: (kv[0][0], ORDER.index(kv[0][1]) if kv[0][1] in ORDER else 99, kv[0][2])):
        mean, std = _mean_std(list(by_seed.values()))
        rows.append({"task": task, "method": method, "budget": budget, "mean": round(mean, 4), "std": round(std, 4), "runs": len(by_seed)})
    return rows


def sweep_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["task", "method", "budget", "mean", "std", "runs"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


REFERENCE_STYLES = ("--", ":", "-.")


def sweep_plot(rows: list[dict[str, Any]], metric_names: dict[str, str] | None = None) -> bytes:
    """Fig. 2 as PNG bytes: one panel per task, score against budget (log scale) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        references = 0
        for method in _ordered({r["method"] for r in rows if r["task"] == task}):
            points = [r for r in rows if r["task"] == task and r["method"] == method]
            if method in RECIPES and not RECIPES[method].uses_budget:  # FT, BitFit: a grey reference line
                style = REFERENCE_STYLES[references % len(REFERENCE_STYLES)]
                references += 1
                mean = statistics.fmean(p["mean"] for p in points)  # one budget, unless runs of several were mixed
                ax.axhline(mean, linestyle=style, linewidth=1, color="gray", label=DISPLAY.get(method, method))
                continue
            ax.errorbar([p["budget"] for p in points], [p["mean"] for p in points], yerr=[p["std"] for p in points],
                        marker="o", capsize=3, label=DISPLAY.get(method, method))  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("parameter budget (l, r, s)")
        ax.set_ylabel((metric_names or {}).get(task, "score"))
        ax.set_title(task)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def bar_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Table III as bars: per column (task) and method, in the table's orders, the mean and std over seeds of
    ``summarize`` and the number of seeds; a method without runs of a task has no row."""
    return [
        {"task": c, "method": m, "mean": summary["cells"][(m, c)][0], "std": summary["cells"][(m, c)][1],
         "runs": summary["counts"][(m, c)]}  # fmt: skip
        for c in summary["columns"]
        for m in summary["methods"]
        if (m, c) in summary["cells"]
    ]


METRIC_AXIS = {"accuracy": "accuracy", "f1": "F1", "entity_f1": "F1"}


def score_label(metrics: Iterable[str]) -> str:
    """The bar chart's y label, naming the tasks' metrics: 'score (accuracy / F1)'."""
    names = list(dict.fromkeys(METRIC_AXIS.get(m, m) for m in metrics))
    return f"score ({' / '.join(names)})" if names else "score"


def bars_plot(rows: list[dict[str, Any]], column_names: dict[str, str] | None = None, ylabel: str = "score",
              title: str = "Mean over seeds; error bars: std over seeds") -> bytes:
    """Table III as PNG bytes: one group per task, one bar per method (the table's order, one colour per
    method across groups), height the mean over seeds, error bar the std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = _ordered({r["method"] for r in rows})
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 0.16 * len(methods) * len(tasks) + 0.4 * len(tasks)), 4.5))
    for i, method in enumerate(methods):
        cells = {r["task"]: r for r in rows if r["method"] == method}
        shown = [t for t in tasks if t in cells]  # a method without runs of a task leaves a gap
        xs = [tasks.index(t) + (i - (len(methods) - 1) / 2) * width for t in shown]
        ax.bar(xs, [cells[t]["mean"] for t in shown], width, yerr=[cells[t]["std"] for t in shown], capsize=2, color=palette(i),
               edgecolor="black", linewidth=0.4, error_kw={"elinewidth": 0.8}, label=DISPLAY.get(method, method))  # fmt: skip
    ax.set_xticks(range(len(tasks)), [(column_names or {}).get(t, t) for t in tasks])
    ax.set_xlabel("task")
    ax.set_ylabel(ylabel)
    top = max((r["mean"] + r["std"] for r in rows), default=100.0)
    ax.set_ylim(0, max(top * 1.05, 1.0))
    ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    ax.set_axisbelow(True)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=min(len(methods), 8), loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


# --- Table VII: data-to-text, method x metric per task ----------------------------------------------

METRIC_NAMES = {"bleu": "BLEU", "nist": "NIST", "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr", "ter": "TER"}
LOWER_IS_BETTER = {"ter"}
TWO_DECIMALS = {"nist": 2, "cider": 2}  # printed as the E2E script and the paper print them (8.78, 2.46)


PARTS = {"seen": "S", "unseen": "U"}  # WebNLG's test categories; a plain metric name is All ("A")


def _metric_order(metric: str) -> tuple[int, int]:
    """The papers' order: E2E's BLEU, NIST, METEOR, ROUGE-L, CIDEr; WebNLG's BLEU, METEOR, TER, each S, U, A."""
    name, _, part = metric.partition("/")
    order = list(METRIC_NAMES)
    return (order.index(name) if name in order else len(order), list(PARTS).index(part) if part in PARTS else len(PARTS))


def metric_label(metric: str) -> str:
    """'BLEU', or 'BLEU-S' / 'BLEU-U' for WebNLG's seen / unseen parts (All carries no suffix)."""
    name, _, part = metric.partition("/")
    return METRIC_NAMES.get(name, name) + (f"-{PARTS.get(part, part)}" if part else "")


def is_generation(record: dict[str, Any]) -> bool:
    """A run of a generation task: its record holds every metric in ``scores`` and the decoding settings."""
    return "decoding" in record


def generation_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (method, (task, metric)): mean and std over seeds of every metric the runs recorded."""
    values: dict[tuple[str, tuple[str, str]], list[float]] = defaultdict(list)
    params: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        for metric, value in r["scores"].items():
            values[(r["method"], (r["task"], metric))].append(float(value))
        params[r["method"]].append((r["tuned_pct"], r["stored_pct"]))
    tasks = list(dict.fromkeys(t for _, (t, _) in values))
    columns = sorted({c for _, c in values}, key=lambda c: (tasks.index(c[0]), _metric_order(c[1])))
    return {
        "methods": _ordered({m for m, _ in values}), "columns": columns, "params": params,
        "cells": {k: _mean_std(v) for k, v in values.items()}, "seeds": sorted({r["seed"] for r in records}),
        "counts": {k: len(v) for k, v in values.items()},
    }  # fmt: skip


def generation_markdown(summary: dict[str, Any], task_names: dict[str, str] | None = None) -> str:
    """Table VII in Markdown: one column per task and metric; best bold, second underlined (TER: lower is better)."""
    names = task_names or {}
    methods, columns, cells = summary["methods"], summary["columns"], summary["cells"]
    header = ["Method", "#Tuned", "#Stored",
              *[f"{names.get(t, t)} {metric_label(m)}" for t, m in columns]]  # fmt: skip
    digits = {c: TWO_DECIMALS.get(c[1].partition("/")[0], 1) for c in columns}
    marks = {c: _marks({x: cells[(x, c)][0] for x in methods if (x, c) in cells}, c[1].partition("/")[0] not in LOWER_IS_BETTER,
                       digits[c]) for c in columns}  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in methods:
        pcts = summary["params"][m]
        row = [DISPLAY.get(m, m), _pct_range([t for t, _ in pcts]), _pct_range([s for _, s in pcts])]
        row += [_fmt(*cells[(m, c)], marks[c].get(m), digits[c]) if (m, c) in cells else "–" for c in columns]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Mean ± std over seeds {summary['seeds']}. Best in bold, second underlined; TER is lower-is-better, "
                  "the other metrics higher-is-better. -S / -U: WebNLG's seen / unseen categories (plain: all)."]  # fmt: skip
    return "\n".join(lines)


def generation_csv(summary: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "task", "metric", "mean", "std", "runs"])
    for m in summary["methods"]:
        for c in summary["columns"]:
            if (m, c) in summary["cells"]:
                mean, std = summary["cells"][(m, c)]
                writer.writerow([m, c[0], c[1], round(mean, 4), round(std, 4), summary["counts"][(m, c)]])
    return out.getvalue()

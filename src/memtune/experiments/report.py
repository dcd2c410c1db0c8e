"""Write the tables, the plots and each run's training curves of a results file (atomically), from the records alone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write
from .curves import CURVES_DIR, curve_plot, curve_rows, curves_csv
from .results import is_failed, run_key, run_name
from .tables import (bar_rows, bars_plot, csv_table, generation_csv, generation_markdown, generation_summary, is_generation,
                     low_data_records, main_budget, markdown_table, score_label, summarize, sweep_csv, sweep_plot,
                     sweep_rows)  # fmt: skip

TASK_NAMES = {
    "mrpc": "MRPC", "rte": "RTE", "cb": "CB", "qnli": "QNLI", "sst2": "SST-2",
    "conll2003": "CN3", "conll2004": "CN4", "msra": "MSRA", "e2e": "E2E", "webnlg": "WebNLG",
}  # fmt: skip


def _scored_on(record: dict[str, Any]) -> str:
    """Where a column's scores come from, said once (a held-out split is named in ``eval_source``)."""
    valid = record["valid_source"]
    size = (record.get("settings") or {}).get("valid_size")
    if size and record.get("n_valid", size + 1) <= size:  # --valid-size sampled the validation set
        valid += f" (a fixed sample of {record['n_valid']} of its inputs, --valid-size)"
    if "held out" not in record["eval_source"]:
        return f"scored on {record['eval_source']}; early stopping on {valid}"
    missing = record["eval_source"].split("(", 1)[-1].split(" is absent")[0]
    return (f"scored on the validation set ({valid}, also used for early stopping), because "
            f"{missing}, the paper's evaluation split, is held out here: not comparable to the paper's numbers")


def _sources(records: list[dict[str, Any]], column: str = "task", names: dict[str, str] | None = None) -> str:
    """One line per table column (task, or task and training-set size): the splits scored on, and the caveats."""
    names = names or TASK_NAMES
    lines = []
    for name in dict.fromkeys(r[column] for r in records):
        first = next(r for r in records if r[column] == name)
        notes = [n for n in first.get("notes") or [] if "is absent (held out)" not in n]  # said by _scored_on
        notes = " ".join(n.rstrip(".") + "." for n in notes)
        pairs = first.get("pairs")  # generation: (input, reference) pairs trained on, and pairs too long to use
        training = (f"{first['n_train']} training inputs ({pairs['train']} pairs, {pairs['train_left_out']} left out as "
                    f"longer than {first['settings']['max_length']} tokens)") if pairs else f"{first['n_train']} training examples"  # fmt: skip
        lines.append(f"- {names.get(name, name)} ({first['metric']}): {_scored_on(first)}; {training}." + (f" {notes}" if notes else ""))
    return "\n".join(lines)


def _sized(record: dict[str, Any]) -> dict[str, Any]:
    """A generation record trained on a subset, under the task key "<task>@<size>" so it never mixes with full runs."""
    size = record.get("train_size")
    return {**record, "task": f"{record['task']}@{size}", "base_task": record["task"]} if size else record


def _sized_name(record: dict[str, Any]) -> str:
    base = record["base_task"]
    return f"{TASK_NAMES.get(base, base)} ({record['train_size']} train inputs)"


def _failures(failed: list[dict[str, Any]], table: str) -> str:
    """The failed runs a table leaves out, with their errors (table7: generation runs; the others: the rest)."""
    own = [r for r in failed if is_generation(r) == (table == "table7.md")]
    if not own:
        return ""
    lines = "\n".join(f"- {r['task']} {r['method']} (budget {r['budget']}) seed {r['seed']}: {r['error']}" for r in own)
    return f"\nFailed runs (no score; not in the table):\n{lines}\n"


def write_reports(records: list[dict[str, Any]], out: str | Path) -> list[Path]:
    """table3.md/.csv and table3_bars.png (full data, main budget); table5.md/.csv (low data);
    budget_sweep.csv/.png (Fig. 2); table7.md/.csv (generation tasks, every metric); and per scored run
    curves/<run name>.csv/.png (training loss and validation metric per epoch). Failed runs have no cell
    and no curves; each Markdown table lists the failed runs of its kind (generation or not) below it.
    Returns the paths written, the curves folder once (not its files)."""
    out = Path(out)
    written: list[Path] = []
    latest = list({run_key(r): r for r in records}.values())  # a retried failed run: its last record counts
    failed = [r for r in latest if is_failed(r)]
    scored = [r for r in latest if not is_failed(r)]
    generated = [r for r in scored if is_generation(r)]
    records = [r for r in scored if not is_generation(r)]

    def write(name: str, content: str | bytes) -> None:
        if isinstance(content, str) and name.endswith(".md"):
            content += _failures(failed, name)
        atomic_write(out / name, content if isinstance(content, bytes) else content.encode())
        written.append(out / name)

    budget = main_budget(r["budget"] for r in records)
    full = [r for r in records if not r.get("train_size") and r["budget"] == budget]
    if full:
        summary = summarize(full)
        title = f"Results (budget {budget}); model {full[0]['config']['model']}, profile {full[0]['config']['profile']}"
        write("table3.md", f"# {title}\n\n{markdown_table(summary, TASK_NAMES)}\n\n{_sources(full)}\n")
        write("table3.csv", csv_table(summary, TASK_NAMES))
        write("table3_bars.png", bars_plot(bar_rows(summary), TASK_NAMES, score_label(r["metric"] for r in full),
                                           f"{title}: mean over seeds {summary['seeds']}, error bars std"))  # fmt: skip
    low = low_data_records([r for r in records if r["budget"] == budget])
    if low:
        summary = summarize(low, column="task_size")
        write("table5.md", f"# Low-data results (budget {budget})\n\n{markdown_table(summary)}\n\n{_sources(low, 'task_size')}\n")
        write("table5.csv", csv_table(summary))
    swept = [r for r in records if not r.get("train_size")]
    if len({r["budget"] for r in swept}) > 1:
        rows = sweep_rows(swept)
        write("budget_sweep.csv", sweep_csv(rows))
        metrics = {r["task"]: r["metric"] for r in swept}
        write("budget_sweep.png", sweep_plot(rows, metrics))
    budget = main_budget(r["budget"] for r in generated)
    full = [_sized(r) for r in generated if r["budget"] == budget]  # a training subset is a column of its own
    if full:
        summary = generation_summary(full)
        names = {**TASK_NAMES, **{r["task"]: _sized_name(r) for r in full if r.get("train_size")}}
        title = f"Data-to-text results (budget {budget}); model {full[0]['config']['model']}, profile {full[0]['config']['profile']}"
        write("table7.md", f"# {title}\n\n{generation_markdown(summary, names)}\n\n{_sources(full, names=names)}\n")
        write("table7.csv", generation_csv(summary))
    curves = [(r, curve_rows(r)) for r in scored]  # every scored run, generation runs included
    for r, rows in curves:
        if rows:
            name = out / CURVES_DIR / run_name(r)
            atomic_write(Path(f"{name}.csv"), curves_csv(rows).encode())
            atomic_write(Path(f"{name}.png"), curve_plot(r, rows))
    if any(rows for _, rows in curves):
        written.append(out / CURVES_DIR)  # the folder once, not a line per run
    return written

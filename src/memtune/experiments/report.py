"""Write the tables and the budget plot of a results file (atomically), from the records alone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write
from .tables import csv_table, low_data_records, main_budget, markdown_table, summarize, sweep_csv, sweep_plot, sweep_rows

TASK_NAMES = {
    "mrpc": "MRPC", "rte": "RTE", "cb": "CB", "qnli": "QNLI", "sst2": "SST-2",
    "conll2003": "CN3", "conll2004": "CN4", "msra": "MSRA",
}  # fmt: skip


def _scored_on(record: dict[str, Any]) -> str:
    """Where a column's scores come from, said once (a held-out split is named in ``eval_source``)."""
    if "held out" not in record["eval_source"]:
        return f"scored on {record['eval_source']}; early stopping on {record['valid_source']}"
    missing = record["eval_source"].split("(", 1)[-1].split(" is absent")[0]
    return (f"scored on the validation set ({record['valid_source']}, also used for early stopping), because "
            f"{missing}, the paper's evaluation split, is held out here: not comparable to the paper's numbers")


def _sources(records: list[dict[str, Any]], column: str = "task") -> str:
    """One line per table column (task, or task and training-set size): the splits scored on, and the caveats."""
    lines = []
    for name in dict.fromkeys(r[column] for r in records):
        first = next(r for r in records if r[column] == name)
        notes = [n for n in first.get("notes") or [] if "is absent (held out)" not in n]  # said by _scored_on
        notes = " ".join(n.rstrip(".") + "." for n in notes)
        lines.append(
            f"- {TASK_NAMES.get(name, name)} ({first['metric']}): {_scored_on(first)}; {first['n_train']} training "
            "examples." + (f" {notes}" if notes else "")
        )
    return "\n".join(lines)


def write_reports(records: list[dict[str, Any]], out: str | Path) -> list[Path]:
    """table3.md/.csv (full data, main budget); table5.md/.csv (low data); budget_sweep.csv/.png (Fig. 2)."""
    out = Path(out)
    written: list[Path] = []

    def write(name: str, content: str | bytes) -> None:
        atomic_write(out / name, content if isinstance(content, bytes) else content.encode())
        written.append(out / name)

    budget = main_budget(r["budget"] for r in records)
    full = [r for r in records if not r.get("train_size") and r["budget"] == budget]
    if full:
        summary = summarize(full)
        title = f"Results (budget {budget}); model {full[0]['config']['model']}, profile {full[0]['config']['profile']}"
        write("table3.md", f"# {title}\n\n{markdown_table(summary, TASK_NAMES)}\n\n{_sources(full)}\n")
        write("table3.csv", csv_table(summary, TASK_NAMES))
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
    return written

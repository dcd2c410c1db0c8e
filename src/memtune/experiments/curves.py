"""Training curves of single runs, from their records: per epoch the mean training loss and the validation
metric early stopping used, as CSV rows (pure functions) and a PNG plot (``curve_plot``).

A record's ``history`` holds one entry per evaluation: ``epoch``, ``valid`` and, when the Trainer logged it,
``train_loss``. Generation runs stop early on the validation loss and keep it negated in ``history``
(higher is better there); their curves show the loss itself, as their record's ``valid`` does.
"""
from __future__ import annotations

import csv
import io
from typing import Any

from .tables import DISPLAY

CURVES_DIR = "curves"
COLUMNS = ("epoch", "train_loss", "valid")
METRIC_LABELS = {"accuracy": "accuracy (%)", "f1": "F1 (%)", "entity_f1": "entity F1 (%)"}


def is_loss_curve(record: dict[str, Any]) -> bool:
    """Whether the run stopped early on a loss (generation tasks), not on the task's metric."""
    return record.get("valid_metric") == "loss"


def valid_label(record: dict[str, Any]) -> str:
    """The validation curve's axis label: 'validation accuracy (%)', 'validation loss', ..."""
    if is_loss_curve(record):
        return "validation loss"
    metric = record.get("metric") or "score"
    return f"validation {METRIC_LABELS.get(metric, metric)}"


def curve_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluation: epoch, train_loss (None when not logged or not finite) and valid (the metric
    early stopping used; for generation runs the validation loss, not its negation)."""
    sign = -1.0 if is_loss_curve(record) else 1.0
    rows = []
    for h in record.get("history") or []:
        valid = h.get("valid")
        rows.append({"epoch": h.get("epoch"), "train_loss": h.get("train_loss"),
                     "valid": None if valid is None else sign * valid})  # fmt: skip
    return rows


def best_row(record: dict[str, Any], rows: list[dict[str, Any]]) -> int | None:
    """The index of the row whose tensors the run kept: the first best validation value (as early stopping
    took it: strictly better only), lowest for a loss. None when no row has a value."""
    lower = is_loss_curve(record)
    best = None
    for i, row in enumerate(rows):
        v = row["valid"]
        if v is not None and (best is None or (v < rows[best]["valid"] if lower else v > rows[best]["valid"])):
            best = i
    return best


def curves_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if row[k] is None else row[k] for k in COLUMNS} for row in rows)
    return out.getvalue()


def curve_plot(record: dict[str, Any], rows: list[dict[str, Any]]) -> bytes:
    """PNG bytes: training loss (left axis) and the validation metric (right axis) against the epoch, the
    best epoch marked; titled with the run's task, method, budget, training-set size and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.4))
    right = ax.twinx()
    loss = [(r["epoch"], r["train_loss"]) for r in rows if r["epoch"] is not None and r["train_loss"] is not None]
    valid = [(r["epoch"], r["valid"]) for r in rows if r["epoch"] is not None and r["valid"] is not None]
    handles = []
    if loss:
        handles += ax.plot(*zip(*loss), marker="o", color="tab:blue", label="training loss (epoch mean)")
    if valid:
        handles += right.plot(*zip(*valid), marker="s", color="tab:orange", label=valid_label(record))
    best = best_row(record, rows)
    if best is not None and rows[best]["epoch"] is not None:
        epoch, value = rows[best]["epoch"], rows[best]["valid"]
        handles.append(ax.axvline(epoch, color="gray", linestyle=":", linewidth=1, label=f"best epoch ({epoch:g})"))
        right.plot([epoch], [value], marker="*", markersize=14, color="tab:red", linestyle="none")
    if all(float(r["epoch"]).is_integer() for r in rows if r["epoch"] is not None):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    right.set_ylabel(valid_label(record))
    size = f", {record['train_size']} examples" if record.get("train_size") else ""
    method = DISPLAY.get(record["method"], record["method"])
    ax.set_title(f"{record['task']} / {method} (budget {record['budget']}{size}) / seed {record['seed']}", fontsize=10)
    if handles:  # below the axes, where it hides no point of either curve
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.14, right=0.86, bottom=0.2, top=0.92)  # fixed margins: tight_layout would draw twice
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()

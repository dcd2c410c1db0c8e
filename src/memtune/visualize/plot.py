"""The picture (PNG bytes) and the points (CSV) of ``memtune visualize``: one column per memory, the trained
memories on the top row and the freshly attached ones below, coloured by label, numbers in each title."""
from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np


def _caption(quality: dict[str, Any]) -> str:
    def number(value: Any) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    return (f"silhouette {number(quality['silhouette_2d'])} (raw {number(quality['silhouette_raw'])}); "
            f"10-NN same label {number(quality['neighbours_2d'])} (raw {number(quality['neighbours_raw'])}, "
            f"chance {number(quality['neighbours_chance'])})")  # fmt: skip


def draw(panels: list[Any], label_order: list[str], title: str) -> bytes:
    """A grid: columns = memories, rows = trained / untrained; a shared legend of the labels on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    memories = list(dict.fromkeys(p.memory for p in panels))
    states = list(dict.fromkeys(p.state for p in panels))
    present = [label for label in label_order if any((p.labels == label).any() for p in panels)]
    colours = plt.get_cmap("tab10" if len(present) <= 10 else "tab20")
    fig, axes = plt.subplots(len(states), len(memories), figsize=(6.2 * len(memories) + 1.8, 5.6 * len(states)), squeeze=False)
    for panel in panels:
        ax = axes[states.index(panel.state)][memories.index(panel.memory)]
        for i, label in enumerate(present):
            chosen = panel.labels == label
            ax.scatter(panel.xy[chosen, 0], panel.xy[chosen, 1], s=5, alpha=0.7, color=colours(i), label=label, linewidths=0)
        ax.set_title(f"{panel.memory}, {panel.state}\n{_caption(panel.quality)}", fontsize=9)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", markerscale=3, title="label", frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 0.95))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def points_csv(panels: list[Any]) -> str:
    """memory, state, label, x, y: one row per point of every panel."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["memory", "state", "label", "x", "y"])
    for panel in panels:
        for label, (x, y) in zip(panel.labels, np.asarray(panel.xy)):
            writer.writerow([panel.memory, panel.state, label, f"{x:.4f}", f"{y:.4f}"])
    return buffer.getvalue()

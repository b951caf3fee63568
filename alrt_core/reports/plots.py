"""Matplotlib figures for reports, written as PNG atomically (the Agg backend: no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from alrt_core.fileio import atomic_write_bytes
from alrt_core.model.gpt import PROJECTION_KINDS, layer_kind

KIND_COLOURS = dict(zip(PROJECTION_KINDS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"), strict=True))


def plot_rank_history(history: dict[str, list[tuple[int, int | None]]], path: Path, title: str = "") -> None:
    """Rank against training step, one step line per layer coloured by its kind; one panel per kind (layers of a
    kind often move together and would hide each other in a single panel), line style by block."""
    kinds = [k for k in PROJECTION_KINDS if any(layer_kind(name) == k for name in history)]
    columns = min(3, max(1, len(kinds)))
    rows = -(-len(kinds) // columns) if kinds else 1
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), dpi=110, squeeze=False,
                                sharex=True)
    styles = ("-", "--", ":", "-.")
    for axes, kind in zip(grid.flat, kinds, strict=False):
        names = [name for name in history if layer_kind(name) == kind]
        for index, name in enumerate(names):
            ranked = [(step, rank) for step, rank in history[name] if rank is not None]
            if not ranked:
                continue
            steps, ranks = zip(*ranked, strict=True)
            axes.step(steps, ranks, where="post", color=KIND_COLOURS.get(kind, "grey"),
                      linestyle=styles[index % len(styles)], alpha=0.5 + 0.5 * (index + 1) / len(names),
                      linewidth=1.4, label=name.split(".")[1] if name.startswith("blocks.") else name)
        axes.set_title(kind)
        axes.grid(alpha=0.3)
        axes.set_ylim(bottom=0)
        if len(names) <= 12:
            axes.legend(title="block", fontsize=7, title_fontsize=7, loc="upper right")
    for axes in list(grid.flat)[len(kinds):]:
        axes.axis("off")
    for axes in grid[-1]:
        axes.set_xlabel("step")
    for axes in grid[:, 0]:
        axes.set_ylabel("rank")
    figure.suptitle(title or "rank per layer")
    save_png(figure, path)


def save_png(figure: Figure, path: Path) -> None:
    """Lay out, render and close `figure`, then write the PNG atomically."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())

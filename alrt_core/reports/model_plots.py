"""Figures of `alrt inspect model --plot DIR`: spectra per kind, loss by position, calibration (PNG, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

from alrt_core.reports.plots import save_png
from alrt_core.reports.weights import MatrixStats

SPECTRUM_KINDS = ("q", "k", "v", "o", "up", "down", "embed", "head")


def plot_spectra(stats: list[MatrixStats], path: Path, title: str = "") -> None:
    """Normalised singular values σᵢ/σ₁ (log scale) against their index, one panel per kind, one line per block."""
    kinds = [k for k in SPECTRUM_KINDS if any(s.kind == k for s in stats)]
    columns = min(4, len(kinds))
    rows = -(-len(kinds) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.9 * rows), dpi=110, squeeze=False)
    colours = plt.get_cmap("viridis")
    for axes, kind in zip(grid.flat, kinds, strict=False):
        members = [s for s in stats if s.kind == kind]
        lowest = 1.0
        for index, stat in enumerate(members):
            if not stat.spectrum or stat.spectrum[0] <= 0:
                axes.text(0.5, 0.5 - 0.08 * index, f"block {stat.block}: zero matrix", transform=axes.transAxes,
                          ha="center", fontsize=7)
                continue
            values = [max(s / stat.spectrum[0], 1e-12) for s in stat.spectrum]
            lowest = min(lowest, min(values))
            label = f"{stat.block}" if stat.block is not None else stat.name
            rank = "dense" if stat.rank is None else f"r={stat.rank}"
            axes.plot(range(1, len(values) + 1), values, color=colours(index / max(1, len(members) - 1) * 0.9),
                      linewidth=1.2, label=f"{label} ({rank}, eff {stat.effective_rank_fraction:.0%})")
        axes.set_yscale("log")
        # At least two decades, so that every panel has labelled major ticks (minor labels stay off).
        axes.set_ylim(min(lowest * 0.7, 0.01), 1.4)
        axes.yaxis.set_minor_formatter(NullFormatter())
        axes.set_title(f"{kind}  ({members[0].shape[0]}×{members[0].shape[1]})", fontsize=9)
        axes.grid(alpha=0.3, which="both")
        axes.set_xlabel("index i", fontsize=8)
        axes.tick_params(labelsize=7)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(title="block", fontsize=6, title_fontsize=6, loc="lower left")
    for axes in grid[:, 0]:
        axes.set_ylabel("σᵢ / σ₁", fontsize=8)
    for axes in list(grid.flat)[len(kinds):]:
        axes.axis("off")
    figure.suptitle(title or "singular value spectra", fontsize=10)
    save_png(figure, path)


def plot_position_loss(positions: list[dict[str, Any]], overall_bpb: float, path: Path, title: str = "") -> None:
    """bpb of targets binned by their position in the context window."""
    figure, axes = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    centres = [(row["start"] + row["end"] - 1) / 2 for row in positions]
    widths = [row["end"] - row["start"] for row in positions]
    values = [row["bpb"] if row["bpb"] is not None else float("nan") for row in positions]
    axes.bar(centres, values, width=[w * 0.9 for w in widths], color="tab:blue", alpha=0.7, label="bin bpb")
    axes.plot(centres, values, color="tab:blue", marker="o", markersize=3)
    axes.axhline(overall_bpb, color="tab:red", linestyle="--", linewidth=1, label=f"overall {overall_bpb:.3f}")
    finite = [v for v in values if v == v]
    if finite:
        low, high = min(finite), max(finite)
        axes.set_ylim(low - 0.15 * (high - low + 1e-6) - 0.05, high + 0.1 * (high - low + 1e-6) + 0.05)
    axes.set_xlabel("position in the context window (tokens of context − 1)")
    axes.set_ylabel("bits per byte")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(title or "loss by position", fontsize=10)
    save_png(figure, path)


def plot_calibration(calibration: dict[str, Any], path: Path, title: str = "") -> None:
    """Reliability diagram: accuracy of the top-1 prediction against its probability, with the token counts."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 5.6), dpi=110, sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    bins = calibration["bins"]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = (bins[0]["high"] - bins[0]["low"]) * 0.9 if bins else 0.09
    top.bar(centres, [b["accuracy"] for b in bins], width=width, color="tab:blue", alpha=0.7, label="accuracy")
    top.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="tab:blue", markersize=3)
    top.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    top.set_ylabel("top-1 accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
    top.set_title(f"{title or 'calibration'}  (ECE {calibration['ece']:.3f})", fontsize=10)
    bottom.bar(centres, [b["tokens"] for b in bins], width=width, color="tab:grey")
    bottom.set_ylabel("tokens")
    bottom.set_xlabel("predicted probability of the top-1 token")
    bottom.grid(alpha=0.3)
    save_png(figure, path)

"""Figure of `alrt inspect run --plot FILE`: one or several runs' curves side by side (PNG, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from alrt_core.reports.plots import save_png
from alrt_core.reports.run_curves import RunCurves

SMOOTHING = 0.9  # EMA weight of the previous value for per-step train curves


def smooth(values: list[float | None], decay: float = SMOOTHING) -> list[float]:
    """Bias-corrected EMA (as TensorBoard's smoothing), skipping missing values."""
    out, average, weight = [], 0.0, 0.0
    for value in values:
        if value is not None:
            average = decay * average + (1 - decay) * value
            weight = decay * weight + (1 - decay)
        out.append(average / weight if weight else float("nan"))
    return out


def _bpb_limits(axes: Axes, values: list[float]) -> None:
    """Zoom on the interesting part: the early steps' loss (near log V) would flatten everything else."""
    finite = sorted(v for v in values if v == v)
    if len(finite) < 2:
        return
    low, high = finite[0], finite[int(0.9 * (len(finite) - 1))]
    margin = 0.05 * (high - low + 1e-6)
    axes.set_ylim(low - margin, high + margin)


def plot_runs(runs: list[RunCurves], path: Path, title: str = "") -> None:
    """Six panels: bpb vs step, vs tokens, vs wallclock; learning rate; attention+MLP parameters; tokens/s."""
    figure, grid = plt.subplots(2, 3, figsize=(14, 7.2), dpi=100)
    colours = plt.get_cmap("tab10")
    bpb_values: dict[int, list[float]] = {0: [], 1: [], 2: []}
    for index, run in enumerate(runs):
        colour = colours(index % 10)
        train_bpb = smooth(run.series("train", "bpb"))
        x_train = {"step": run.series("train", "step"), "tokens": run.series("train", "tokens"),
                   "minutes": [(e or 0) / 60 for e in run.series("train", "elapsed")]}
        evals = [e for e in run.evals if e.get("val_bpb") is not None]
        x_eval = {"step": [e["step"] for e in evals], "tokens": [e.get("tokens") for e in evals],
                  "minutes": [(e.get("elapsed") or 0) / 60 for e in evals]}
        for column, axis_name in enumerate(("step", "tokens", "minutes")):
            axes = grid[0, column]
            axes.plot(x_train[axis_name], train_bpb, color=colour, alpha=0.45, linewidth=1,
                      label=f"{run.name} train (EMA)" if column == 0 else None)
            axes.plot(x_eval[axis_name], [e["val_bpb"] for e in evals], "o-", color=colour, markersize=3,
                      linewidth=1.6, label=f"{run.name} val" if column == 0 else None)
            bpb_values[column] += train_bpb + [e["val_bpb"] for e in evals]
        grid[1, 0].plot(x_train["step"], run.series("train", "lr"), color=colour, label=run.name)
        dense = run.start.get("dense_projection_params")
        start_params = run.start.get("projection_params")
        if dense and start_params:
            steps = [run.start.get("step", 0)] + [p["step"] for p in run.ranks]
            params = [start_params] + [p["projection_params"] for p in run.ranks]
            last_step = x_train["step"][-1] if x_train["step"] else steps[-1]
            grid[1, 1].step(steps + [last_step], [100 * p / dense for p in params + params[-1:]], where="post",
                            color=colour, label=run.name)
        grid[1, 2].plot(x_train["step"], smooth(run.series("train", "tok_s")), color=colour, label=run.name)
    for column, label in enumerate(("step", "tokens seen", "training wallclock (min)")):
        axes = grid[0, column]
        axes.set_xlabel(label)
        axes.set_ylabel("bits per byte")
        _bpb_limits(axes, bpb_values[column])
    grid[0, 0].legend(fontsize=7)
    for axes, ylabel in zip(grid[1], ("learning rate (matrices)", "attention+MLP params, % of dense", "tokens/s (EMA)"), strict=True):
        axes.set_xlabel("step")
        axes.set_ylabel(ylabel)
    grid[1, 1].set_ylim(bottom=0)
    grid[1, 2].set_ylim(bottom=0)
    for axes in grid.flat:
        axes.grid(alpha=0.3)
    grid[1, 0].legend(fontsize=7)
    figure.suptitle(title or "runs: " + ", ".join(run.name for run in runs))
    save_png(figure, path)

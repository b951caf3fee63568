"""`alrt inspect ...`: read-only reports on runs and checkpoints, as rich tables or `--json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from alrt_cli.inspect_view import render_model, render_runs, report_console
from alrt_core.model.gpt import PROJECTION_KINDS
from alrt_core.reports.ranks import RankReport, rank_report
from alrt_core.reports.run_curves import read_runs
from alrt_core.units import format_bytes
from export.inspect_artifact import artifact_report
from export.inspect_model import DEFAULT_MAX_TOKENS, inspect_model

app = typer.Typer(help="Inspect runs, checkpoints and artifacts.", no_args_is_help=True)

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[int | None], ceiling: int) -> str:
    """One character per point, scaled to the layer's maximum rank (dense shows as a full block)."""
    chars = []
    for value in values:
        level = len(SPARK) - 1 if value is None else round((len(SPARK) - 1) * value / max(ceiling, 1))
        chars.append(SPARK[max(0, min(len(SPARK) - 1, level))])
    return "".join(chars)


def _rank_table(report: RankReport) -> Table:
    kinds = [k for k in PROJECTION_KINDS if any(layer.kind == k for layer in report.layers)]
    max_ranks = {k: max(layer.max_rank for layer in report.layers if layer.kind == k) for k in kinds}
    limits = ", ".join(f"{k} ≤{r}" for k, r in max_ranks.items())
    table = Table(
        title=f"ranks at step {report.step} ({report.policy}): rank/stable rank per layer",
        caption=f"max ranks: {limits}; 'vs dense' = the block's projection parameters over dense",
    )
    table.add_column("block", justify="right")
    for kind in kinds:
        table.add_column(kind, justify="right")
    table.add_column("vs dense", justify="right")
    for block in sorted({layer.block for layer in report.layers}):
        cells = []
        members = [x for x in report.layers if x.block == block]
        for kind in kinds:
            layer = next((x for x in members if x.kind == kind), None)
            if layer is None:
                cells.append("")
                continue
            rank = "dense" if layer.rank is None else str(layer.rank)
            cells.append(f"{rank}/{layer.stable_rank:.1f}")
        share = sum(x.params for x in members) / sum(x.dense_params for x in members)
        table.add_row(str(block), *cells, f"{share:.0%}")
    return table


def _history_table(report: RankReport) -> Table:
    table = Table(title="rank trajectories (one mark per rank update, scaled to each layer's max rank)")
    table.add_column("layer")
    table.add_column("start", justify="right")
    table.add_column("trajectory")
    table.add_column("now", justify="right")
    max_rank = {layer.layer: layer.max_rank for layer in report.layers}
    for name, points in report.history.items():
        ranks = [rank for _, rank in points]
        show = lambda r: "dense" if r is None else str(r)
        table.add_row(name, show(ranks[0]), sparkline(ranks, max_rank.get(name, 1)), show(ranks[-1]))
    return table


@app.command("ranks")
def ranks(
    path: Annotated[Path, typer.Argument(help="Run directory (its last.pt) or a checkpoint file.")],
    history: Annotated[bool, typer.Option("--history", help="Each layer's rank trajectory from train.jsonl.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write the trajectories as a PNG (one line per layer).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object and nothing else.")] = False,
) -> None:
    """Per-layer ranks, stable ranks and compression of a run; with --history how they moved."""
    report = rank_report(path, history=history or plot is not None)
    if plot is not None:
        from alrt_core.reports.plots import (
            plot_rank_history,  # matplotlib is only imported when plotting
        )

        plot_rank_history(report.history, plot, title=f"{report.source}: ranks ({report.policy})")
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    console = Console(highlight=False)
    console.print(_rank_table(report))
    dense, now = report.dense_projection_params, report.projection_params
    means = ", ".join(f"{k} {v:.1f}" for k, v in report.kind_means().items() if v is not None)
    console.print(f"attention+MLP parameters: {now:,} of {dense:,} dense ({now / dense:.1%})")
    if means:
        console.print(f"mean rank by kind: {means}")
    if history:
        console.print(_history_table(report))
    if plot is not None:
        console.print(f"plot written to {plot}")


@app.command("artifact")
def artifact(
    path: Annotated[Path, typer.Argument(help="A .alrt artifact.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object and nothing else.")] = False,
) -> None:
    """The artifact's manifest summary and byte map (which tensors take how many compressed bytes)."""
    report = artifact_report(path)
    if as_json:
        print(json.dumps(report))
        return
    console = Console(highlight=False)
    model = report["config"]["model"]
    source = report["source"]
    console.print(f"[bold]{path}[/]: {format_bytes(report['file_bytes'])}, format v{report['format_version']}, "
                  f"{report['compressor']} ({report['storage']} integers), checksums verified")
    console.print(f"  model    {model['num_layers']}×{model['model_dim']}, heads {model['num_heads']}/{model['num_kv_heads']}, "
                  f"vocab {model['vocab_size']}, context {model['seq_len']}; {report['params']:,} parameters")
    folds = report["fold_counts"]
    console.print(f"  ranks    {folds.get('keep', 0)} layers kept as U·V, {folds.get('fold', 0)} folded, {folds.get('dense', 0)} dense")
    bpb = source.get("val_bpb")
    console.print(f"  source   {source['checkpoint']} (step {source['step']}" + (f", val bpb {bpb:.4f}" if bpb else "") + ")")
    table = Table(title="byte map (compressed bytes, estimated per entry)")
    for column in ("entry", "scheme", "values", "bytes", "share"):
        table.add_column(column, justify="left" if column in ("entry", "scheme") else "right")
    for entry in report["entries"]:
        table.add_row(entry["name"], entry["scheme"], f"{entry['values']:,}", f"{entry['bytes']:,}", f"{entry['share']:.1%}")
    console.print(table)
    sections = report["sections"]
    frames = f"{report['frames']} frame{'s' if report['frames'] != 1 else ''}"
    console.print(f"header {sections['header']} B + manifest {sections['manifest']:,} B + payload {sections['payload']:,} B "
                  f"in {frames}")


@app.command("model")
def model(
    path: Annotated[Path, typer.Argument(metavar="CKPT|ARTIFACT|RUN_DIR", help="A checkpoint, a .alrt artifact, or a run directory (its last.pt).")],
    data: Annotated[str | None, typer.Option(help="Also break the loss down on data: 'val' (the run's validation split), a shard folder, or a .txt/.jsonl file or folder.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens of --data to score (a prefix).")] = DEFAULT_MAX_TOKENS,
    reference: Annotated[Path | None, typer.Option(help="Artifacts: the checkpoint to measure quantisation error against (default: the manifest's source, when unchanged).")] = None,
    position_bins: Annotated[int, typer.Option(help="Bins of the loss-by-position curve.")] = 16,
    plot: Annotated[Path | None, typer.Option(help="Folder for PNGs: spectra.png, and with --data position_loss.png and calibration.png.")] = None,
    device: Annotated[str, typer.Option(help="For --data: auto, cpu or cuda[:N].")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object and nothing else.")] = False,
) -> None:
    """Weights (spectra, conditioning, outliers), learned scalars and, with --data, where the loss goes.

    eff rank: exp(entropy of σᵢ/Σσ), also as % of min(m,n) (σ: the singular values the layer holds).
    stable: Σσ²/σ₁².  cond: σ₁/σ_min.  E1: σ₁²/Σσ².  r90: fewest components holding 90% of Σσ².
    kurt: excess kurtosis of the entries, E[(w−μ)⁴]/E[(w−μ)²]² − 3 (0 for Gaussian).
    row/col peak: max|w| / RMS of the worst row/column, @ its index.  row/col norm: largest RMS / median RMS.
    quant err (artifacts): ‖Ŵ−W‖_F/‖W‖_F against the source checkpoint; hessian: GPTQ's tr(ΔHΔᵀ)/tr(WHWᵀ).
    scalars: the parameters the optimizer trains as scalars (gains, mixes, skip weights, gates), per layer;
    near 0: mean |x| < 0.01 × max(1, mean |x| at init) (sigmoid gates excepted: 0 is half open).

    With --data: bpb by token class and by position in the window, top-1/top-5 accuracy, most confused pairs,
    calibration (accuracy per top-1 probability bin; ECE = Σ share·|accuracy − probability|). See the README.
    """
    report = inspect_model(path, data=data, max_tokens=max_tokens, reference=reference, device=device,
                           position_bins=position_bins)
    written = []
    if plot is not None:
        from alrt_core.reports.model_plots import plot_calibration, plot_position_loss, plot_spectra

        name = Path(report.source).name
        plot_spectra(report.matrices, plot / "spectra.png", title=f"{name}: singular values per kind")
        written.append(plot / "spectra.png")
        if report.data is not None:
            plot_position_loss(report.data["positions"], report.data["bpb"], plot / "position_loss.png",
                               title=f"{name}: loss by position")
            plot_calibration(report.data["calibration"], plot / "calibration.png", title=f"{name}: calibration")
            written += [plot / "position_loss.png", plot / "calibration.png"]
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    console = report_console()
    render_model(console, report)
    for file in written:
        console.print(f"plot written to {file}")


@app.command("run")
def run(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR...", help="One or more run directories (train.jsonl, config.json).")],
    plot: Annotated[Path | None, typer.Option(help="Write the curves of all runs as one PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object and nothing else.")] = False,
) -> None:
    """Loss/bpb curves against step, tokens and wallclock, learning rate and rank totals of one or several runs.

    Reads only train.jsonl and config.json, so it works on runs that are still going. Summary: best and final
    validation bpb, steps, tokens seen, training time (evaluation excluded), tokens/s (tokens / training time),
    parameters, attention+MLP parameters as a share of dense, train bpb (mean of the last 5% of steps).
    """
    runs = read_runs(run_dirs)
    if plot is not None:
        from alrt_core.reports.run_plots import plot_runs

        plot_runs(runs, plot)
    if as_json:
        print(json.dumps({"runs": [r.to_dict() for r in runs]}))
        return
    console = report_console()
    render_runs(console, runs)
    if plot is not None:
        console.print(f"plot written to {plot}")

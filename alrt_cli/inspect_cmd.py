"""`alrt inspect ...`: read-only reports on runs and checkpoints, as rich tables or `--json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from alrt_core.model.gpt import PROJECTION_KINDS
from alrt_core.reports.ranks import RankReport, rank_report
from alrt_core.units import format_bytes
from export.inspect import artifact_report

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
    console.print(f"header {sections['header']} B + manifest {sections['manifest']:,} B + payload {sections['payload']:,} B")

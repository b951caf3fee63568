"""Rich rendering of `alrt inspect model` and `alrt inspect run` reports (no computation here)."""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alrt_core.model.gpt import PROJECTION_KINDS
from alrt_core.reports.run_curves import RunCurves
from alrt_core.reports.scalars import ScalarEntry, per_layer_groups
from export.inspect_model import ModelReport

KIND_ORDER = {kind: index for index, kind in enumerate((*PROJECTION_KINDS, "embed", "head"))}


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    magnitude = abs(value)
    if magnitude and (magnitude >= 1e5 or magnitude < 10 ** -(digits + 1)):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def _condition(value: float) -> str:
    return "∞" if math.isinf(value) else (f"{value:.1f}" if value < 1e4 else f"{value:.1e}")


def report_console() -> Console:
    """Tables of many columns: when stdout is not a terminal (a pipe, a log file) and COLUMNS is not set, render
    140 columns wide instead of rich's 80 so that no column is cut."""
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=140 if wide else None)


def _warn(text: str, condition: bool, style: str = "yellow") -> str:
    return f"[{style}]{text}[/]" if condition else text


def matrix_table(report: ModelReport) -> Table:
    quantized = report.quantization is not None and bool(report.quantization["layers"])
    shapes = {}
    for stat in report.matrices:
        shapes.setdefault(stat.kind, f"{stat.kind} {stat.shape[0]}×{stat.shape[1]}")
    table = Table(
        title="weight matrices", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
        caption=f"shapes: {', '.join(shapes.values())}. eff rank: exp(entropy of σ/Σσ), % of min(m,n); stable: "
                "Σσ²/σ₁²; cond: σ₁/σ_min; E1: σ₁²/Σσ²; kurt: excess kurtosis; peak: max|w|/RMS of the worst "
                "row (column) @ its index" + ("; quant err: ‖Ŵ−W‖_F/‖W‖_F" if quantized else ""),
    )
    for column in ("matrix", "rank", "eff rank", "stable", "cond", "E1", "kurt", "row peak", "col peak",
                   *(("quant err",) if quantized else ())):
        table.add_column(column, justify="left" if column == "matrix" else "right", no_wrap=True)
    order = sorted(report.matrices, key=lambda s: (s.block if s.block is not None else 1 << 30, KIND_ORDER.get(s.kind, 99)))
    for stat in order:
        label = f"{stat.block}.{stat.kind}" if stat.block is not None else stat.kind
        fraction = stat.effective_rank_fraction
        cells = [
            label, "dense" if stat.rank is None else str(stat.rank),
            _warn(f"{stat.effective_rank:.1f} {fraction:.0%}", fraction < 0.1, "red"), f"{stat.stable_rank:.1f}",
            _warn(_condition(stat.condition), stat.condition > 1e6), f"{stat.energy_top1:.0%}",
            _warn(f"{stat.kurtosis:.1f}", stat.kurtosis > 10),
            _warn(f"{stat.row_peak:.1f}@{stat.row_peak_index}", stat.row_peak > 10),
            _warn(f"{stat.col_peak:.1f}@{stat.col_peak_index}", stat.col_peak > 10),
        ]
        if quantized:
            cells.append(_num(stat.quant_error, 4))
        table.add_row(*cells)
    return table


def scalar_tables(report: ModelReport) -> list[Table]:
    tables = []
    groups = per_layer_groups(report.scalars)
    if groups:
        blocks = sorted({block for members in groups.values() for block in members})
        table = Table(title="learned scalars per layer (mean ± std of each vector; red: near 0)", box=box.SIMPLE_HEAD)
        table.add_column("scalar")
        for block in blocks:
            table.add_column(str(block), justify="right")
        table.add_column("what")
        for group, members in groups.items():
            cells = []
            for block in blocks:
                entry = members.get(block)
                if entry is None:
                    cells.append("")
                    continue
                if entry.values is not None and len(entry.values) <= 2:
                    text = "/".join(f"{value:.3f}" for value in entry.values)
                else:
                    text = f"{entry.mean:.3f}±{entry.std:.2f}"
                cells.append(_warn(text, entry.flag is not None, "red"))
            table.add_row(escape(group), *cells, next(iter(members.values())).description)
        tables.append(table)
    others = [entry for entry in report.scalars if entry.block is None]
    if others:
        table = Table(title="other learned scalars", box=box.SIMPLE_HEAD)
        for column in ("scalar", "n", "mean", "min", "max", "init |x|", "what"):
            table.add_column(column, justify="left" if column in ("scalar", "what") else "right")
        for entry in others:
            table.add_row(
                _warn(escape(entry.name), entry.flag is not None, "red"), str(entry.numel), f"{entry.mean:.4f}",
                f"{entry.min:.4f}", f"{entry.max:.4f}", _num(entry.init_mean_abs, 3), entry.description,
            )
        tables.append(table)
    return tables


def render_model(console: Console, report: ModelReport) -> None:
    data = report.to_dict()
    model = data["model"]
    step = f", step {report.step}" if report.step is not None else ""
    console.print(f"[bold]{escape(report.source)}[/] ({report.kind}{step}): {model['num_layers']}×{model['model_dim']}, "
                  f"heads {model['num_heads']}/{model['num_kv_heads']}, vocab {model['vocab_size']}, "
                  f"context {model['seq_len']}, {report.params:,} parameters, rank policy {model['rank_policy']}")
    console.print(matrix_table(report))
    by_kind = data["by_kind"]
    if by_kind:
        console.print("by kind (mean eff rank % · median cond · max kurtosis): " + "; ".join(
            f"{kind} {s['mean_effective_rank_fraction']:.0%} · {_condition(s['median_condition'] or math.inf)} · {s['max_kurtosis']:.1f}"
            for kind, s in by_kind.items()))
    for finding in data["recurring_outliers"]:
        axis = finding["axis"]
        what = "row" if axis.startswith("row") else "column"
        console.print(f"recurring outlier: {what} {finding['index']} of {finding['kind']} has the largest {axis} ratio in "
                      f"{finding['blocks']} of {finding['of_blocks']} blocks ({_num(finding['ratio_min'], 1)}–"
                      f"{_num(finding['ratio_max'], 1)}×; blocks {', '.join(map(str, finding['which_blocks']))})")
    for table in scalar_tables(report):
        console.print(table)
    flagged: dict[tuple[str, str], list[ScalarEntry]] = {}
    for entry in report.scalars:
        if entry.flag:
            flagged.setdefault((entry.group, entry.flag), []).append(entry)
    for (group, flag), entries in flagged.items():
        where = "" if entries[0].block is None else " in blocks " + ", ".join(str(e.block) for e in entries)
        largest = max(e.mean_abs for e in entries)
        console.print(f"[red]near 0[/]: {escape(group)}{where} {flag} (mean |x| ≤ {largest:.4f}, "
                      f"at init {_num(entries[0].init_mean_abs, 3)})")
    if report.quantization is not None:
        render_quantization(console, report.quantization)
    if report.data is not None:
        render_data(console, report.data)
    seconds = ", ".join(f"{name} {value:.2f}s" for name, value in report.seconds.items())
    console.print(f"[dim]time: {seconds}[/]")


def render_quantization(console: Console, quant: dict[str, Any]) -> None:
    table = Table(title=f"quantisation error per tensor ({escape(quant['reference'])})",
                  caption="hessian: tr(ΔHΔᵀ)/tr(WHWᵀ) from GPTQ; relative: ‖Ŵ−W‖_F/‖W‖_F against the source")
    for column in ("tensor", "scheme", "clip", "hessian", "relative"):
        table.add_column(column, justify="left" if column in ("tensor", "scheme") else "right")
    fp16 = [t for t in quant["tensors"] if t["scheme"] == "fp16"]
    for tensor in quant["tensors"]:
        if tensor["scheme"] != "fp16":
            clip = "max" if tensor["clip"] is None else f"{tensor['clip']:g}σ"
            table.add_row(tensor["name"], tensor["scheme"], clip, _num(tensor["hessian_error"], 4), _num(tensor["relative_error"], 4))
    if fp16:
        worst = [t["relative_error"] for t in fp16 if t["relative_error"] is not None]
        table.add_row(f"{len(fp16)} small tensors", "fp16", "", "", _num(max(worst), 5) if worst else "–")
    console.print(table)


def render_data(console: Console, data: dict[str, Any]) -> None:
    console.print(f"[bold]on {escape(data['data'])}[/]: {data['tokens']:,} tokens, {data['bytes']:,} bytes; bpb "
                  f"{data['bpb']:.4f}, loss {data['loss']:.4f}; top-1 {data['top1_accuracy']:.1%}, top-5 "
                  f"{data['top5_accuracy']:.1%}; calibration error (ECE) {data['calibration']['ece']:.3f}")
    table = Table(title="loss by token class")
    for column in ("class", "tokens", "% tokens", "% loss", "loss/token", "bpb"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in data["classes"]:
        table.add_row(row["class"], f"{row['tokens']:,}", f"{row['token_share']:.1%}", f"{row['loss_share']:.1%}",
                      f"{row['mean_loss']:.3f}", _num(row["bpb"], 3))
    console.print(table)
    table = Table(title=f"loss by position in the {data['seq_len']}-token window")
    for column in ("positions", "tokens", "loss/token", "bpb"):
        table.add_column(column, justify="right")
    for row in data["positions"]:
        table.add_row(f"{row['start']}–{row['end'] - 1}", f"{row['tokens']:,}", f"{row['mean_loss']:.3f}", _num(row["bpb"], 3))
    console.print(table)
    table = Table(title="calibration (top-1 probability bins)")
    for column in ("probability", "tokens", "mean prob", "accuracy"):
        table.add_column(column, justify="right")
    for row in data["calibration"]["bins"]:
        table.add_row(f"{row['low']:.1f}–{row['high']:.1f}", f"{row['tokens']:,}", f"{row['confidence']:.3f}", f"{row['accuracy']:.3f}")
    console.print(table)
    table = Table(title="most confused (actual → predicted top-1)")
    for column in ("actual", "predicted", "count", "% of errors"):
        table.add_column(column, justify="left" if column in ("actual", "predicted") else "right")
    for row in data["confusions"]:
        table.add_row(escape(row["actual"]), escape(row["predicted"]), f"{row['count']:,}", f"{row['share_of_errors']:.1%}")
    console.print(table)
    table = Table(title="pieces with the most loss")
    for column in ("piece", "count", "loss/token", "% loss"):
        table.add_column(column, justify="left" if column == "piece" else "right")
    for row in data["hardest_pieces"]:
        table.add_row(escape(row["piece"]), f"{row['count']:,}", f"{row['mean_loss']:.3f}", f"{row['loss_share']:.1%}")
    console.print(table)


def _minutes(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f} min"


def render_runs(console: Console, runs: list[RunCurves]) -> None:
    table = Table(title="runs", box=box.SIMPLE_HEAD,
                  caption="time: training wallclock (evaluation excluded); train bpb: mean of the last 5% of steps")
    columns = ("run", "status", "preset/policy", "params", "attn+MLP", "steps", "tokens", "time", "tok/s",
               "best val bpb", "final val", "train bpb")
    for column in columns:
        table.add_column(column, justify="left" if column in ("run", "status", "preset/policy") else "right",
                         no_wrap=column != "run")
    for run in runs:
        s = run.summary()
        best = f"{s['best_val_bpb']:.4f} @{s['best_step']}" if s["best_val_bpb"] is not None else "–"
        status = f"done ({run.end.get('reason')})" if run.end else "running/stopped"
        table.add_row(
            escape(s["name"]), status, f"{s['preset']}/{s['rank_policy']}", f"{s['params']:,}" if s["params"] else "–",
            f"{s['projection_fraction']:.0%}" if s["projection_fraction"] else "–", f"{s['steps']:,}",
            f"{s['tokens']:,}", _minutes(s["train_seconds"]), _num(s["tokens_per_second"], 0), best,
            _num(s["final_val_bpb"], 4), _num(s["last_train_bpb"], 4),
        )
    console.print(table)
    steps = sorted({e["step"] for run in runs for e in run.evals if e.get("val_bpb") is not None})
    if not steps:
        return
    thinned = len(steps) > 15
    if thinned:  # evenly spaced, first and last kept
        steps = sorted({steps[round(i * (len(steps) - 1) / 14)] for i in range(15)})
    table = Table(title="validation bpb by step" + (" (thinned)" if thinned else ""), box=box.SIMPLE_HEAD)
    table.add_column("step", justify="right")
    for run in runs:
        table.add_column(escape(run.name), justify="right")
    by_run = [{e["step"]: e["val_bpb"] for e in run.evals if e.get("val_bpb") is not None} for run in runs]
    for step in steps:
        table.add_row(str(step), *(_num(values.get(step), 4) for values in by_run))
    console.print(table)

"""`alrt export onnx MODEL --out FILE`: the model as one ONNX graph for prefill and decode, checked with onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from alrt_core.errors import UserError
from alrt_core.units import format_bytes
from export.loader import load_model

if TYPE_CHECKING:
    from export.onnx_export import OnnxExportReport

app = typer.Typer(help="Export a model to other runtimes.", no_args_is_help=True)


def _shape(dims: list[int | str]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


def _render(report: OnnxExportReport) -> None:
    console = Console(highlight=False, soft_wrap=True)
    meta = report.metadata
    console.print(f"[bold]{report.path}[/]: {format_bytes(report.file_bytes)}, opset {report.opset}, "
                  f"{report.parameters:,} parameters (float32), exported in {report.export_seconds:.1f} s")
    console.print(f"  context {meta['context_length']} tokens, vocab {meta['vocab_size']}, "
                  f"BOS {meta['bos_id']}, EOS {meta['eos_id']}; tokenizer and config in the metadata")
    table = Table(title="graph inputs and outputs (past = 0 for a prefill; feed each present_X back as past_X)",
                  caption="keys/values: (cache slots, batch, kv heads, positions, head dim)")
    for column in ("", "name", "dtype", "shape"):
        table.add_column(column)
    for role, specs in (("in", report.inputs), ("out", report.outputs)):
        for spec in specs:
            table.add_row(role, spec.name, spec.dtype, _shape(spec.shape))
    console.print(table)
    check = report.check
    if check is None:
        console.print("not checked (--no-check)")
        return
    console.print(f"onnxruntime vs torch, max |logit diff| (tolerance {check.tolerance:g}):")
    console.print(f"  prefill       {check.prefill_max_diff:.2e}  ({check.prompt_tokens} tokens)")
    console.print(f"  decode        {check.decode_max_diff:.2e}  ({check.decode_steps} steps of 1 token)")
    console.print(f"  continuation  {check.continuation_max_diff:.2e}  ({check.continuation_tokens} tokens after the cache)")


@app.command("onnx")
def onnx_command(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A .alrt artifact or a training checkpoint.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the .onnx file (one self-contained file).")],
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's, 18 or newer).")] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare onnxruntime's logits with torch's before writing.")] = True,
    tolerance: Annotated[float | None, typer.Option(help="Largest accepted max |logit diff| (default 1e-3, float32).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object and nothing else.")] = False,
) -> None:
    """One ONNX graph for prefill and decode (KV cache in and out, float32), checked with onnxruntime first."""
    # onnx and onnxruntime load only here, so the other commands do not pay for their import.
    from export.onnx_export import DEFAULT_TOLERANCE, export_onnx
    from export.onnx_graph import MIN_OPSET

    if opset is not None and opset < MIN_OPSET:
        raise UserError(f"--opset {opset} is too old: the exporter supports opset {MIN_OPSET} and newer")
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    if tolerance <= 0:
        raise UserError(f"--tolerance must be positive, got {tolerance}")
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out should name a .onnx file, got {out}")
    loaded = load_model(model_path)
    # A transient status on stderr (nothing on stdout, nothing left behind when it is not a terminal).
    with Console(stderr=True).status("exporting and checking with onnxruntime ..."):
        report = export_onnx(loaded, out, opset=opset, check=check, tolerance=tolerance)
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    _render(report)

"""`alrt quantize CKPT --budget 16MB`: the checkpoint as a `.alrt` artifact that never exceeds the budget."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from alrt_cli.setting_options import setting_option
from alrt_core.errors import UserError
from alrt_core.evaluation.report import EvalOptions, run_eval
from alrt_core.units import format_bytes, parse_byte_size
from export.artifact import write_artifact
from export.loader import load_model
from export.quantize import QuantizeOptions, QuantizeResult, quantize_checkpoint


def _bit_overrides(items: list[str] | None) -> dict[str, int]:
    overrides = {}
    for item in items or []:
        pattern, sep, bits = item.rpartition("=")
        if not sep or not bits.isdigit():
            raise UserError(f"--set-bits expects PATTERN=BITS, e.g. 'blocks.*.attn.q.*=5', got {item!r}")
        overrides[pattern] = int(bits)
    return overrides


def _val_report(path: Path, stream: tuple[np.ndarray, str]) -> dict[str, Any]:
    """`alrt eval`'s report (plain windows) of a checkpoint or artifact on the held-out `stream`."""
    loaded = load_model(path)
    return run_eval(loaded.model, loaded.tokenizer, loaded.config, EvalOptions(), stream=stream)


def _summary(result: QuantizeResult, budget: int | None) -> dict[str, Any]:
    classes: dict[str, dict[str, Any]] = defaultdict(lambda: {"params": 0, "bytes": 0, "bits": set(), "clips": set(), "weighted_error": 0.0})
    for t in result.tensors:
        entry = classes[t.tensor_class]
        entry["params"] += t.params
        entry["bytes"] += t.bytes
        entry["bits"].add("fp16" if t.bits is None else f"int{t.bits}")
        if t.bits is not None:
            entry["clips"].add("max" if t.clip is None else f"{t.clip:g}σ")
            entry["weighted_error"] += (t.error or 0.0) * t.params
    per_class = {}
    for name, entry in sorted(classes.items()):
        quantised_params = sum(t.params for t in result.tensors if t.tensor_class == name and t.bits is not None)
        per_class[name] = {
            "params": entry["params"], "bits": sorted(entry["bits"]), "clips": sorted(entry["clips"]),
            "bytes": entry["bytes"],
            "relative_error": entry["weighted_error"] / quantised_params if quantised_params else None,
        }
    total = result.total_bytes
    return {
        "artifact_bytes": len(result.data), "code_bytes": result.code_bytes, "total_bytes": total,
        "budget": budget, "headroom": None if budget is None else budget - total,
        "compressor": result.manifest["compressor"], "storage": result.manifest["storage"],
        "classes": per_class, "fold": result.fold,
        "actions": [{"action": a.action, "detail": a.detail, "size": a.size, "predicted": a.predicted,
                     "seconds": round(a.seconds, 2)} for a in result.actions],
        "calibration": result.manifest["calibration"],
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
    }


def quantize(
    checkpoint: Annotated[Path, typer.Argument(help="A training checkpoint (last.pt / best.pt).")],
    budget: Annotated[str | None, typer.Option(help="Byte budget: 16MB (decimal, = 16,000,000), 15.5MB, 16MiB or a byte count.")] = None,
    out: Annotated[Path | None, typer.Option(help="Artifact path (default: model.alrt beside the checkpoint).")] = None,
    bits: Annotated[int, setting_option(QuantizeOptions, "bits")] = QuantizeOptions.bits,
    embed_bits: Annotated[int, setting_option(QuantizeOptions, "embed_bits")] = QuantizeOptions.embed_bits,
    set_bits: Annotated[list[str] | None, typer.Option("--set-bits", help="Bits by tensor-name pattern, e.g. 'blocks.0.*=8' (repeatable).")] = None,
    method: Annotated[str, setting_option(QuantizeOptions, "method")] = QuantizeOptions.method,
    clip_search: Annotated[bool, setting_option(QuantizeOptions, "clip_search", "--clip-search/--no-clip-search")] = QuantizeOptions.clip_search,
    calib_tokens: Annotated[int, setting_option(QuantizeOptions, "calib_tokens")] = QuantizeOptions.calib_tokens,
    compressor: Annotated[str, setting_option(QuantizeOptions, "compressor")] = QuantizeOptions.compressor,
    storage: Annotated[str, setting_option(QuantizeOptions, "storage")] = QuantizeOptions.storage,
    count_code: Annotated[list[Path] | None, typer.Option("--count-code", help="Files or folders whose bytes count against the budget (repeatable).")] = None,
    small_max: Annotated[int, setting_option(QuantizeOptions, "small_max")] = QuantizeOptions.small_max,
    data: Annotated[str | None, setting_option(QuantizeOptions, "data")] = QuantizeOptions.data,
    device: Annotated[str, setting_option(QuantizeOptions, "device")] = QuantizeOptions.device,
    run_eval: Annotated[bool, typer.Option("--eval", help="Validation bpb of the checkpoint and of the artifact (the quant gap).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object and nothing else.")] = False,
) -> None:
    """Fold or keep factors, GPTQ with clip search, pack, compress, and fit the byte budget — never over it."""
    budget_bytes = parse_byte_size(budget) if budget is not None else None
    options = QuantizeOptions(
        bits=bits, embed_bits=embed_bits, method=method, clip_search=clip_search, calib_tokens=calib_tokens,
        compressor=compressor, storage=storage, budget=budget_bytes, count_code=list(count_code or []),
        bit_overrides=_bit_overrides(set_bits), small_max=small_max, data=data, device=device,
    )
    out_path = out or checkpoint.parent / "model.alrt"
    console = Console(highlight=False, stderr=as_json)
    show_progress = console.is_terminal and not as_json
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True, disable=not show_progress)
    tasks: dict[str, Any] = {}
    reached: dict[str, int] = {}

    def on_progress(phase: str, done: int, total: int) -> None:
        if not show_progress:  # a log or a pipe: one line as each phase (or pass) starts, so a long run says where it is
            if done < reached.get(phase, total + 1):
                unit = {"calibrate": "tokens", "quantize": "matrices"}.get(phase, "bytes")
                console.print(f"[dim]{phase}: {total:,} {unit} …[/]")
            reached[phase] = done
            return
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total)
        progress.update(tasks[phase], completed=done)

    with progress:
        result = quantize_checkpoint(checkpoint, options, on_progress=on_progress)
    if budget_bytes is not None and result.total_bytes > budget_bytes:  # fit_to_budget guarantees this; never write over
        raise UserError(f"internal check failed: {result.total_bytes:,} bytes over the {budget_bytes:,} budget; nothing written")
    write_artifact(out_path, result.data)
    summary = {"artifact": str(out_path), **_summary(result, budget_bytes)}
    if run_eval:
        # Exactly what calibration held out (never its documents), for the checkpoint and the artifact alike.
        stream = result.calibration_data.evaluation_tokens()
        before, after = _val_report(checkpoint, stream), _val_report(out_path, stream)
        summary["eval"] = {"checkpoint_bpb": before["bpb"], "artifact_bpb": after["bpb"],
                           "quant_gap": after["bpb"] - before["bpb"], "data": stream[1], "tokens": before["tokens"],
                           "documents": result.manifest["calibration"]["held_out_documents"]}
    if as_json:
        print(json.dumps(summary))
        return
    _render(console, summary)


def _render(console: Console, s: dict[str, Any]) -> None:
    table = Table(title=f"quantised → {s['artifact']}")
    for column in ("class", "params", "bits", "clip", "bytes", "rel. error"):
        table.add_column(column, justify="left" if column in ("class", "bits", "clip") else "right")
    for name, c in s["classes"].items():
        error = "-" if c["relative_error"] is None else f"{c['relative_error']:.2e}"
        table.add_row(name, f"{c['params']:,}", ", ".join(c["bits"]), ", ".join(c["clips"]) or "-", f"{c['bytes']:,}", error)
    console.print(table)
    by_decision: dict[str, Counter[str]] = defaultdict(Counter)
    for layer, decision in s["fold"].items():
        by_decision[decision][layer.rsplit(".", 1)[-1]] += 1
    parts = []
    for decision, label in (("keep", "kept as U·V"), ("fold", "folded to dense (smaller)"), ("dense", "trained dense")):
        if by_decision[decision]:
            kinds = ", ".join(f"{kind} ×{count}" for kind, count in by_decision[decision].items())
            parts.append(f"{label}: {kinds}")
    console.print("layers — " + "; ".join(parts))
    for action in s["actions"]:
        estimate = " (predicted)" if action["predicted"] else ""
        console.print(f"fit: {action['action']}: {action['detail']} → {action['size']:,} bytes{estimate}, "
                      f"{action['seconds']:.1f} s")
    line = f"{s['compressor']} ({s['storage']} integers): {format_bytes(s['total_bytes'])}"
    if s["code_bytes"]:
        line += f" including {s['code_bytes']:,} bytes of counted code"
    if s["budget"] is not None:
        line += f"; budget {format_bytes(s['budget'])}, headroom {s['headroom']:,} bytes"
    console.print(line)
    console.print(f"calibration: {s['calibration']['tokens']:,} tokens of {s['calibration']['data']}")
    if "eval" in s:
        e = s["eval"]
        console.print(f"val bpb: checkpoint {e['checkpoint_bpb']:.4f} → artifact {e['artifact_bpb']:.4f} "
                      f"(quant gap {e['quant_gap']:+.4f}) on {e['tokens']:,} tokens of {e['data']}")
    seconds = s["seconds"]
    passes = int(seconds["compress_passes"])
    console.print(f"[dim]took {seconds['total']:.1f} s: calibration {seconds['calibrate']:.1f} s, GPTQ with clip "
                  f"search {seconds['quantize']:.1f} s, layout choice on a sample {seconds['compress_choice']:.1f} s, "
                  f"fitting {seconds['fit']:.1f} s; {passes} {s['compressor']} pass{'es' if passes != 1 else ''} "
                  f"{seconds['compress_seconds']:.1f} s in all[/]")

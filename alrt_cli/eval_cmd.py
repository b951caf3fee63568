"""`alrt eval MODEL`: exact bits per byte of a checkpoint or artifact, plain, sliding, or with legal TTT."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from alrt_core.evaluation.report import EvalOptions, run_eval
from alrt_core.evaluation.ttt import TTTConfig
from alrt_core.precision import resolve_autocast
from alrt_core.training.distributed import init_distributed, shutdown_distributed
from export.loader import load_model

TTT_PANEL = "Test-time training"


def evaluate_command(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A .alrt artifact or a training checkpoint.")],
    data: Annotated[str | None, typer.Option(help="Shard folder, or .txt/.jsonl file or folder (default: the run's validation split).")] = None,
    sliding: Annotated[bool, typer.Option("--sliding", help="Sliding windows: every token scored once with maximal left context.")] = False,
    stride: Annotated[int, typer.Option(help="Sliding-window stride in tokens.")] = 64,
    seq_len: Annotated[int | None, typer.Option(help="Window length (default: the trained context).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Evaluate only this many validation tokens (a prefix).")] = None,
    batch: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    compare: Annotated[Path | None, typer.Option(help="Reference model (e.g. the checkpoint of this artifact): bpb delta, KL, top-1 agreement.")] = None,
    ttt: Annotated[bool, typer.Option("--ttt", help="Legal score-first test-time training (reported with and without).", rich_help_panel=TTT_PANEL)] = False,
    ttt_chunk_tokens: Annotated[int, typer.Option(rich_help_panel=TTT_PANEL, help="Tokens per TTT chunk.")] = TTTConfig.chunk_tokens,
    ttt_lr: Annotated[float, typer.Option(rich_help_panel=TTT_PANEL, help="Peak SGD learning rate (cosine across chunks).")] = TTTConfig.lr,
    ttt_epochs: Annotated[int, typer.Option(rich_help_panel=TTT_PANEL, help="Passes over each scored chunk.")] = TTTConfig.epochs,
    ttt_momentum: Annotated[float, typer.Option(rich_help_panel=TTT_PANEL, help="SGD momentum.")] = TTTConfig.momentum,
    ttt_freeze_blocks: Annotated[int, typer.Option(rich_help_panel=TTT_PANEL, help="First blocks kept frozen.")] = TTTConfig.freeze_blocks,
    ttt_grad_clip: Annotated[float, typer.Option(rich_help_panel=TTT_PANEL, help="Gradient norm clip (0: off).")] = TTTConfig.grad_clip,
    ttt_batch: Annotated[int, typer.Option(rich_help_panel=TTT_PANEL, help="Sequences per TTT step.")] = TTTConfig.batch_sequences,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object and nothing else.")] = False,
) -> None:
    """Exact bits per byte: Σ NLL / (ln 2 · Σ bytes), every validation token scored exactly once."""
    ctx = init_distributed(device)
    try:
        loaded = load_model(model_path, device=ctx.device)
        reference = load_model(compare, device=ctx.device).model if compare is not None else None
        options = EvalOptions(
            data=data, seq_len=seq_len, stride=stride if sliding else None, max_tokens=max_tokens, batch_windows=batch,
            ttt=TTTConfig(chunk_tokens=ttt_chunk_tokens, lr=ttt_lr, epochs=ttt_epochs, momentum=ttt_momentum,
                          batch_sequences=ttt_batch, grad_clip=ttt_grad_clip, freeze_blocks=ttt_freeze_blocks) if ttt else None,
            autocast=resolve_autocast("auto", ctx.device), device=ctx.device,
        )
        console = Console(highlight=False, stderr=as_json)
        show = ctx.is_main and console.is_terminal and not as_json
        progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} tokens"),
                            TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, transient=True, disable=not show)
        tasks: dict[str, Any] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task("scoring" if phase == "score" else "score-first TTT", total=total)
            progress.update(tasks[phase], completed=done)

        with progress:
            report = run_eval(loaded.model, loaded.tokenizer, loaded.config, options, reference=reference, ctx=ctx,
                              on_progress=on_progress)
        report = {"model_path": str(model_path), "kind": loaded.kind,
                  "compare_path": str(compare) if compare else None, "world_size": ctx.world_size, **report}
        if ctx.is_main and as_json:
            print(json.dumps(report, default=float))
        elif ctx.is_main:
            _render(console, report)
    except BaseException:
        shutdown_distributed(clean=False)
        raise
    shutdown_distributed()


def _render(console: Console, r: dict[str, Any]) -> None:
    stderr = "" if math.isnan(r["bpb_stderr"]) else f" ± {r['bpb_stderr']:.4f}"
    console.print(f"[bold]{r['model_path']}[/] ({r['kind']}) on {r['data']}")
    window = f"sliding, stride {r['stride']}" if r["mode"] == "sliding" else "plain windows"
    console.print(f"  {window} of {r['seq_len']} tokens ({r['windows']:,} windows); {r['tokens']:,} tokens, "
                  f"{r['bytes']:,} bytes; {r['tokens_per_second']:,.0f} tok/s")
    console.print(f"  val loss {r['loss']:.4f} nats/token, perplexity {r['perplexity']:.2f}")
    console.print(f"  [bold]val bpb {r['bpb']:.4f}{stderr}[/] (standard error over {r['stderr_over']})")
    check = "equals" if r["bytes_match_decoded_text"] else "[red]DIFFERS FROM[/]"
    console.print(f"  byte count {check} the UTF-8 length of the decoded text ({r['decoded_bytes']:,} bytes)")
    if "compare" in r:
        c = r["compare"]
        console.print(f"  vs {r['compare_path']}: reference bpb {c['reference_bpb']:.4f}, delta {c['bpb_delta']:+.4f}, "
                      f"mean KL {c['mean_kl_bits_per_byte']:.4f} bits/byte ({c['mean_kl_nats']:.4f} nats/token), "
                      f"top-1 agreement {c['top1_agreement']:.1%}")
    if "ttt" in r:
        t = r["ttt"]
        console.print(f"  legal TTT ({t['chunks']} chunks of {t['chunk_tokens']:,}, {t['epochs']} epochs, lr {t['lr']}, "
                      f"{t['freeze_blocks']} blocks frozen): bpb {t['bpb']:.4f} vs {t['bpb_without_ttt']:.4f} without "
                      f"({t['gain']:+.4f}), {t['seconds']:.1f} s")

"""`alrt data ...`: turn text into tokenizer + shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from alrt_core.data.prepare import prepare_dataset

app = typer.Typer(help="Prepare datasets: sentencepiece tokenizer and parameter-golf shards.", no_args_is_help=True)


@app.command("prepare")
def prepare(
    inputs: Annotated[list[Path], typer.Argument(help=".txt files, .jsonl files with a `text` field, or folders of them.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for shards, tokenizer.model and meta.json.")],
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size of the BPE tokenizer to train.")] = 1024,
    tokenizer: Annotated[Path | None, typer.Option(help="Reuse this sentencepiece .model instead of training one.")] = None,
    val_input: Annotated[list[Path] | None, typer.Option("--val-input", help="Validation documents (default: a held-out fraction of the inputs).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of documents held out for validation.")] = 0.05,
    golf_normalization: Annotated[bool, typer.Option("--golf-normalization", help="Parameter-golf tokenizer settings (nmt_nfkc, whitespace collapsing): lossy.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split.")] = 1337,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Train a tokenizer (or reuse one) and write train/val shards in the parameter-golf format."""
    info = prepare_dataset(
        inputs, out, vocab_size=vocab_size, tokenizer=tokenizer, val_inputs=val_input, val_fraction=val_fraction,
        golf_normalization=golf_normalization, seed=seed, progress=not as_json,
    )
    summary = {
        "out": str(info.root), "vocab_size": info.vocab_size, "tokenizer": str(info.tokenizer_path),
        "train_files": len(info.train_files), "val_files": len(info.val_files), **info.meta,
    }
    if as_json:
        print(json.dumps(summary))
        return
    console = Console()
    meta = info.meta
    console.print(f"[bold]{info.root}[/]: vocab {info.vocab_size}, tokenizer {info.tokenizer_path.name}")
    for split in ("train", "val"):
        tokens, size = meta.get(f"{split}_tokens"), meta.get(f"{split}_bytes")
        if tokens and size:
            console.print(f"  {split}: {tokens:,} tokens, {size:,} bytes ({size / tokens:.2f} bytes/token)")

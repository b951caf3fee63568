"""`alrt train`: build the run config from preset, flags and --set, then hand it to the trainer."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from alrt_cli.train_view import TrainConsole
from alrt_core.config import PRESETS, RunConfig, apply_overrides, preset, set_value
from alrt_core.training.distributed import shutdown_distributed
from alrt_core.training.trainer import Trainer


def train(
    data: Annotated[Optional[str], typer.Option(help="Shard folder (ours or parameter-golf FineWeb), or a .txt/.jsonl file or folder; default: embedded Shakespeare.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="sentencepiece .model for a shard folder without tokenizer.model.")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="Vocabulary size when raw text is prepared on the fly.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(help="Run directory (default: runs/<preset>-<time>).")] = None,
    preset_name: Annotated[Optional[str], typer.Option("--preset", help=f"One of: {', '.join(PRESETS)} (default cpu).")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Wallclock budget for training, evaluation excluded.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Number of optimizer steps.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for initialisation and data order.")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Steps between validation evals (each writes last.pt).")] = None,
    early_stop_patience: Annotated[Optional[int], typer.Option(help="Stop after this many evals without improvement.")] = None,
    compile_model: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override any config field: --set model.num_layers=6.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue a run exactly from its last.pt (or any checkpoint).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
) -> None:
    """Train a GPT with factorised projections on the embedded corpus or your data."""
    flags = {
        "data.path": data, "data.tokenizer": tokenizer, "data.vocab_size": vocab_size, "train.max_minutes": max_minutes,
        "train.max_steps": max_steps, "train.seed": seed, "train.eval_every": eval_every,
        "train.early_stop_patience": early_stop_patience, "train.compile": compile_model,
    }
    given = {key: value for key, value in flags.items() if value is not None}
    # One budget given alone replaces both budgets: "--max-steps 100" means 100 steps and no deadline (also when
    # resuming, so "--resume last.pt --max-steps 5000" extends a wallclock run).
    if len({"train.max_steps", "train.max_minutes"} & given.keys()) == 1:
        given.setdefault("train.max_steps", None)
        given.setdefault("train.max_minutes", None)
    config: RunConfig | None = None
    if resume is None or preset_name or overrides:
        config = preset(preset_name or "cpu")
        apply_overrides(config, overrides or [])
        for key, value in given.items():
            set_value(config, key, value)
    run_dir = out_dir or Path("runs") / f"{preset_name or 'cpu'}-{time.strftime('%Y%m%d-%H%M%S')}"
    is_main = int(os.environ.get("RANK", "0")) == 0
    listeners = [TrainConsole()] if is_main else []
    try:
        Trainer(config, run_dir, resume=resume, resume_changes=given, listeners=listeners, device=device, progress=is_main).run()
    finally:
        shutdown_distributed()

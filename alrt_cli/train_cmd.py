"""`alrt train`: build the run config from preset, flags and --set, then hand it to the trainer."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from alrt_cli.train_view import TrainConsole
from alrt_core.config import PRESETS, RunConfig, apply_overrides, preset, set_value
from alrt_core.errors import UserError
from alrt_core.training.distributed import shutdown_distributed
from alrt_core.training.trainer import Trainer


def train(
    data: Annotated[str | None, typer.Option(help="Shard folder (ours or parameter-golf FineWeb), or a .txt/.jsonl file or folder; default: embedded Shakespeare.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="sentencepiece .model for a shard folder without tokenizer.model.")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="Vocabulary size when raw text is prepared on the fly.")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<preset>-<time>).")] = None,
    preset_name: Annotated[str | None, typer.Option("--preset", help=f"One of: {', '.join(PRESETS)} (default cpu).")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Wallclock budget for training, evaluation excluded.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Number of optimizer steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for initialisation and data order.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Steps between validation evals (each writes last.pt).")] = None,
    early_stop_patience: Annotated[int | None, typer.Option(help="Stop after this many evals without improvement.")] = None,
    sample_every: Annotated[int | None, typer.Option(help="Print and log a short text sample every N steps.")] = None,
    sample_prompt: Annotated[str | None, typer.Option(help="Text the samples continue (default: from BOS alone).")] = None,
    compile_model: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override any config field: --set model.num_layers=6.")] = None,
    rank_policy: Annotated[str | None, typer.Option(help="dense | fixed | stable (ALRT, default) | energy | schedule.", rich_help_panel="Ranks")] = None,
    rank_init: Annotated[int | None, typer.Option(help="Starting rank of every projection (default: its break-even rank m·n/(m+n)).", rich_help_panel="Ranks")] = None,
    rank_kinds: Annotated[str | None, typer.Option(help="Per-kind starting/fixed ranks, e.g. 'q=16,k=16,mlp=128'.", rich_help_panel="Ranks")] = None,
    rank_final: Annotated[int | None, typer.Option(help="schedule: rank at the end of the anneal.", rich_help_panel="Ranks")] = None,
    rank_update_every: Annotated[int | None, typer.Option(help="Steps between rank updates (default: once per epoch, at most 100).", rich_help_panel="Ranks")] = None,
    safety_factor: Annotated[float | None, typer.Option(help="stable: target rank = ceil(safety · EMA of the stable rank).", rich_help_panel="Ranks")] = None,
    change_threshold: Annotated[float | None, typer.Option(help="Relative |target - rank| / rank under which a layer keeps its rank.", rich_help_panel="Ranks")] = None,
    rank_max_step: Annotated[float | None, typer.Option(help="Largest rank change per update, as a fraction of the rank.", rich_help_panel="Ranks")] = None,
    rank_ema_decay: Annotated[float | None, typer.Option(help="EMA weight of the previous stable-rank estimate (the rank controller's; the weight EMA is --set train.ema_decay=D).", rich_help_panel="Ranks")] = None,
    old_max_step: Annotated[float | None, typer.Option("--max-step", hidden=True)] = None,
    old_ema_decay: Annotated[float | None, typer.Option("--ema-decay", hidden=True)] = None,
    resize_method: Annotated[str | None, typer.Option(help="svd (truncated SVD, sqrt split) | truncate.", rich_help_panel="Ranks")] = None,
    on_resize: Annotated[str | None, typer.Option(help="project the optimizer state into the new factors | reset it.", rich_help_panel="Ranks")] = None,
    target_params: Annotated[int | None, typer.Option(help="Budget-driven ranks: total model parameters to track.", rich_help_panel="Ranks")] = None,
    target_bytes: Annotated[str | None, typer.Option(help="Budget-driven ranks: artifact bytes at int6, e.g. 16MB (decimal) or 16MiB.", rich_help_panel="Ranks")] = None,
    log_ranks_full: Annotated[bool | None, typer.Option("--log-ranks-full", help="Log every layer's measurement at every update (rank_full events).", rich_help_panel="Ranks")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue a run exactly from its last.pt (or any checkpoint).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
) -> None:
    """Train a GPT with factorised projections on the embedded corpus or your data."""
    # Renamed flags: --max-step sat beside --max-steps, and --ema-decay read as the weight EMA.
    for given_old, old_name, new_name in ((old_max_step, "--max-step", "--rank-max-step"),
                                          (old_ema_decay, "--ema-decay", "--rank-ema-decay")):
        if given_old is not None:
            hint = " (the weight EMA is --set train.ema_decay=D)" if old_name == "--ema-decay" else ""
            raise UserError(f"{old_name} was renamed {new_name}: it sets the rank controller's setting{hint}")
    flags = {
        "data.path": data, "data.tokenizer": tokenizer, "data.vocab_size": vocab_size, "train.max_minutes": max_minutes,
        "train.max_steps": max_steps, "train.seed": seed, "train.eval_every": eval_every,
        "train.early_stop_patience": early_stop_patience, "train.compile": compile_model,
        "train.sample_every": sample_every, "train.sample_prompt": sample_prompt,
        "rank.policy": rank_policy, "rank.init": rank_init, "rank.kinds": rank_kinds, "rank.final": rank_final,
        "rank.update_every": rank_update_every, "rank.safety_factor": safety_factor,
        "rank.change_threshold": change_threshold, "rank.max_step": rank_max_step, "rank.ema_decay": rank_ema_decay,
        "rank.resize_method": resize_method, "rank.on_resize": on_resize, "rank.target_params": target_params,
        "rank.target_bytes": target_bytes, "rank.log_full": log_ranks_full,
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
    except BaseException:
        shutdown_distributed(clean=False)
        raise
    shutdown_distributed()

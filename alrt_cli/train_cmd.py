"""`alrt train`: build the run config from preset, flags and --set, then hand it to the trainer.

Most flags set one config field each (FIELD_FLAGS): their type, help and choices are the field's own.
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from alrt_cli.setting_options import flag_type, setting_option
from alrt_cli.train_view import TrainConsole
from alrt_core.config import PRESETS, SECTIONS, RunConfig, apply_overrides, preset, set_value
from alrt_core.errors import UserError
from alrt_core.training.distributed import shutdown_distributed
from alrt_core.training.trainer import Trainer

RANKS_PANEL = "Ranks"

# Each flag (as Typer declares it) → the config field it sets. The order is the help's, and that in which given
# flags are applied and, on resume, compared with the checkpoint's config.
FIELD_FLAGS: dict[str, str] = {
    "--data": "data.path",
    "--tokenizer": "data.tokenizer",
    "--vocab-size": "data.vocab_size",
    "--max-minutes": "train.max_minutes",
    "--max-steps": "train.max_steps",
    "--seed": "train.seed",
    "--eval-every": "train.eval_every",
    "--early-stop-patience": "train.early_stop_patience",
    "--compile/--no-compile": "train.compile",
    "--sample-every": "train.sample_every",
    "--sample-prompt": "train.sample_prompt",
    "--rank-policy": "rank.policy",
    "--rank-init": "rank.init",
    "--rank-kinds": "rank.kinds",
    "--rank-final": "rank.final",
    "--rank-update-every": "rank.update_every",
    "--safety-factor": "rank.safety_factor",
    "--change-threshold": "rank.change_threshold",
    "--rank-max-step": "rank.max_step",
    "--rank-ema-decay": "rank.ema_decay",
    "--resize-method": "rank.resize_method",
    "--on-resize": "rank.on_resize",
    "--target-params": "rank.target_params",
    "--target-bytes": "rank.target_bytes",
    "--log-ranks-full": "rank.log_full",
}


def _parameter_name(key: str) -> str:
    """The Python name of the parameter a field flag arrives in (a config key holds a dot)."""
    return key.replace(".", "_")


def train(
    preset_name: Annotated[str | None, typer.Option("--preset", help=f"One of: {', '.join(PRESETS)} (default cpu).")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<preset>-<time>).")] = None,
    *,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override any config field: --set model.num_layers=6.")] = None,
    old_max_step: Annotated[float | None, typer.Option("--max-step", hidden=True)] = None,
    old_ema_decay: Annotated[float | None, typer.Option("--ema-decay", hidden=True)] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue a run exactly from its last.pt (or any checkpoint).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    **field_flags: Any,
) -> None:
    """Train a GPT with factorised projections on the embedded corpus or your data."""
    # Renamed flags: --max-step sat beside --max-steps, and --ema-decay read as the weight EMA.
    for given_old, old_name, new_name in ((old_max_step, "--max-step", "--rank-max-step"),
                                          (old_ema_decay, "--ema-decay", "--rank-ema-decay")):
        if given_old is not None:
            hint = " (the weight EMA is --set train.ema_decay=D)" if old_name == "--ema-decay" else ""
            raise UserError(f"{old_name} was renamed {new_name}: it sets the rank controller's setting{hint}")
    flags = {key: field_flags[_parameter_name(key)] for key in FIELD_FLAGS.values()}
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


def _field_parameter(flag: str, key: str) -> inspect.Parameter:
    """The option a field's flag becomes: unset (None) unless given, so that only given flags change the config."""
    section, _, name = key.partition(".")
    cls = SECTIONS[section]
    option = setting_option(cls, name, flag, rich_help_panel=RANKS_PANEL if section == "rank" else None)
    return inspect.Parameter(_parameter_name(key), inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[flag_type(cls, name) | None, option])


def _with_field_flags(command: Any) -> inspect.Signature:
    """Typer reads a command's options from its signature: the field flags go in at the command's `*`, between the
    options before it (the preset and run directory) and after it (--set and the rest)."""
    own = inspect.signature(command, eval_str=True).parameters.values()
    before = [p for p in own if p.kind is p.POSITIONAL_OR_KEYWORD]
    after = [p for p in own if p.kind is p.KEYWORD_ONLY]
    return inspect.Signature([*before, *(_field_parameter(flag, key) for flag, key in FIELD_FLAGS.items()), *after])


train.__signature__ = _with_field_flags(train)  # type: ignore[attr-defined]

"""Which config a resumed run uses: the checkpoint's, checked against what the user asked for."""

from __future__ import annotations

from typing import Any

from alrt_core.config import RunConfig, set_value
from alrt_core.errors import UserError

# Fields that may differ on resume: they change how long or how verbosely the run goes on, not what it computes.
RESUMABLE_CHANGES = frozenset(
    {
        "train.max_steps",
        "train.max_minutes",
        "train.eval_every",
        "train.eval_tokens",
        "train.log_every",
        "train.early_stop_patience",
        "train.compile",
        "train.sample_every",
        "train.sample_prompt",
        "train.sample_tokens",
        "train.sample_temperature",
        "rank.log_full",
    }
)


def resolve_resume_config(saved: RunConfig, requested: RunConfig | None, changes: dict[str, Any] | None = None) -> RunConfig:
    """The saved config plus resumable changes; any other difference from `requested`/`changes` is an error.

    `requested` is a whole config (from --preset/--set), `changes` single fields (from flags like --max-steps).
    """
    wanted: dict[str, Any] = {}
    if requested is not None:
        for section, values in requested.to_dict().items():
            if isinstance(values, dict):
                wanted.update({f"{section}.{key}": value for key, value in values.items()})
    wanted.update(changes or {})
    saved_flat = {
        f"{section}.{key}": value
        for section, values in saved.to_dict().items() if isinstance(values, dict)
        for key, value in values.items()
    }
    for name, value in wanted.items():
        if value == saved_flat[name] or (name == "model.vocab_size" and value is None):
            continue
        if name not in RESUMABLE_CHANGES:
            raise UserError(
                f"resume file is from another config: {name} is {saved_flat[name]!r} in the checkpoint "
                f"but {value!r} was requested"
            )
        set_value(saved, name, value)
    return saved

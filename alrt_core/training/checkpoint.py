"""Checkpoints: plain containers of tensors, numbers, strings, lists and dicts, written atomically.

They load with `torch.load(weights_only=True)`, so opening one never executes pickled code. Each records the
resolved config and the rank of every projection, which is enough to rebuild the model with the right shapes.
One the trainer writes also holds its precision choice, the evaluation it was written after (`val`) and, under
their own names, the entries of `TrainState` (`state.py`) that a resume loads.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from alrt_core.errors import UserError
from alrt_core.fileio import atomic_write_bytes

CHECKPOINT_FORMAT = "alrt-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves a half-written checkpoint."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we can read"
        raise UserError(f"{path}: not a readable ALRT checkpoint ({type(error).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an ALRT checkpoint")
    if record.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path}: checkpoint version {record.get('version')} is not supported (expected {CHECKPOINT_VERSION})")
    return record

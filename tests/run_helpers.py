"""Helper shared by the tests that need a real (tiny) trained run: the `tiny` preset on given data."""

from __future__ import annotations

from pathlib import Path

from alrt_core.config import apply_overrides, preset
from alrt_core.training.trainer import Trainer


def train_tiny(run_dir: Path, data_root: Path, *overrides: str) -> Path:
    """Train the `tiny` preset on the prepared data at `data_root` with `overrides`; returns the run directory."""
    config = preset("tiny")
    config.data.path = str(data_root)
    Trainer(apply_overrides(config, list(overrides)), run_dir, progress=False).run()
    return run_dir

"""Helpers shared by the tests that need a run: a real (tiny) trained one, or an untrained checkpoint in a second."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from model_helpers import perturb

from alrt_core.config import ModelConfig, apply_overrides, preset
from alrt_core.model.gpt import GPT, uniform_ranks
from alrt_core.training.checkpoint import save_checkpoint
from alrt_core.training.trainer import Trainer


def train_tiny(run_dir: Path, data_root: Path, *overrides: str) -> Path:
    """Train the `tiny` preset on the prepared data at `data_root` with `overrides`; returns the run directory."""
    config = preset("tiny")
    config.data.path = str(data_root)
    Trainer(apply_overrides(config, list(overrides)), run_dir, progress=False).run()
    return run_dir


def tiny_checkpoint(run_dir: Path, data_root: Path, tokenizer: Path, *, rank: int = 6, **model: Any) -> Path:
    """`run_dir/last.pt` of an untrained, perturbed 2-block model (vocab 384, width 32) whose run data is `data_root`,
    with `tokenizer` beside it as the run's; `model` overrides ModelConfig fields. For tests of the quantizer that
    need a checkpoint, not a trained one: no training step, so it takes well under a second."""
    config = preset("tiny")
    config.data.path, config.data.vocab_size = str(data_root), 384
    config.model = ModelConfig(vocab_size=384, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2.0,
                               seq_len=48, **model)
    torch.manual_seed(0)
    network = perturb(GPT(config.model, layer_ranks=uniform_ranks(config.model, rank)), scale=0.05)
    run_dir.mkdir(parents=True)
    save_checkpoint(run_dir / "last.pt", {"config": config.to_dict(), "model": network.state_dict(), "ema": None,
                                          "ranks": network.layer_ranks(), "step": 0})
    shutil.copy(tokenizer, run_dir / "tokenizer.model")
    return run_dir / "last.pt"

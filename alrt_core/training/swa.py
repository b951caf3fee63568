"""Stochastic weight averaging (SWA): the uniform mean of weight snapshots over the last part of a run.

From progress `start_frac` on (the larger of the step and wallclock fractions, as the LR schedule measures it),
every `every`-th step adds a snapshot to a running fp32 mean. Once the mean holds a snapshot, evaluation and
checkpoints use it, exactly where they would otherwise use the EMA.

How SWA and the EMA combine: the snapshot SWA takes is the weights evaluation would use without SWA, i.e. the EMA
when `train.ema_decay > 0`, else the live weights. So with both on, the run evaluates a uniform average of EMA
snapshots from the warmdown. (The parameter-golf records that kept both, e.g. 2026-03-22, collected live-weight
SWA but then applied only the EMA, which PR #401 found better than SWA alone; averaging the EMA keeps its smoothing
and lets SWA add a window the EMA's short memory does not cover. `swa_start_frac=0` turns SWA off.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from alrt_core.ranks.resize import follow_factorization, follow_resize
from alrt_core.ranks.spectral import Resize
from alrt_core.training.ema import swap_weights


class WeightSWA:
    def __init__(self, start_frac: float, every: int) -> None:
        self.start_frac = start_frac
        self.every = every
        self.mean: dict[str, Tensor] | None = None
        self.count = 0

    def is_due(self, step: int, progress: float) -> bool:
        """Whether the weights after optimizer step `step` (at run progress `progress`) are sampled."""
        return progress >= self.start_frac and step % self.every == 0

    @torch.no_grad()
    def add(self, weights: Mapping[str, Tensor]) -> None:
        """Fold one snapshot into the mean: mean ← mean + (w − mean) / count, in fp32."""
        self.count += 1
        if self.mean is None:
            self.mean = {name: value.detach().float().clone() for name, value in weights.items()}
            return
        for name, value in weights.items():
            if value.is_floating_point():
                self.mean[name].lerp_(value.detach().float(), 1.0 / self.count)
            else:
                self.mean[name].copy_(value)

    def follow_resize(self, layer: str, resize: Resize) -> None:
        """Move the mean's factors of `layer` with the live layer's resize maps, as the EMA does (a mean taken
        before the resize stays a mean of the same components)."""
        if self.mean is not None:
            follow_resize(self.mean, layer, resize)

    def follow_factorization(self, layer: str, v: Tensor) -> None:
        """The mean's dense W of `layer` becomes factors on the live layer's V, as the EMA's does."""
        if self.mean is not None:
            follow_factorization(self.mean, layer, v)

    def swap_into(self, model: nn.Module) -> dict[str, Tensor]:
        """Load the mean into `model`; returns the live weights for `WeightEMA.restore` / `restore_weights`."""
        assert self.mean is not None, "SWA has no snapshot yet"
        return swap_weights(model, self.mean)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.mean = None if state["mean"] is None else {name: value.float().clone() for name, value in state["mean"].items()}


def checkpoint_eval_weights(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The weights a checkpoint was evaluated with: its SWA mean once sampled, else its EMA, else the live model."""
    swa = checkpoint.get("swa")
    if swa is not None and swa.get("count", 0) > 0 and swa.get("mean") is not None:
        return swa["mean"]
    return checkpoint.get("ema") or checkpoint["model"]

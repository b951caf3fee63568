"""Per-layer rank decisions from a layer's own spectrum (the `stable` policy's controller).

Each update, a layer's stable-rank estimate is smoothed by an EMA; the target rank is
clamp(ceil(safety · ema), min_rank, max_rank). The layer changes rank only when the target differs from the
current rank by more than a relative threshold, and then by at most `max_step` × current rank, in either
direction. Nothing changes before the warm-up step. The decisions are pure functions of the estimates, so every
process of a distributed run, given the same synchronised weights, decides the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ControllerSettings:
    safety_factor: float = 1.5
    change_threshold: float = 0.1  # relative difference target vs current below which nothing changes
    max_step: float = 0.5  # largest change per update, as a fraction of the current rank
    ema_decay: float = 0.5  # weight of the previous EMA value
    warmup_steps: int = 0
    min_rank: int = 4


@dataclass
class LayerRankState:
    rank: int
    max_rank: int
    ema: float | None = None


@dataclass(frozen=True)
class RankDecision:
    estimate: float
    ema: float
    target: int
    old_rank: int
    new_rank: int

    @property
    def changed(self) -> bool:
        return self.new_rank != self.old_rank


def decide(state: LayerRankState, estimate: float, step: int, settings: ControllerSettings, pressure: float = 1.0) -> RankDecision:
    """Update `state.ema` with `estimate` and return the layer's decision (the caller applies the new rank).

    `pressure` multiplies the safety factor (the budget-driven mode's global knob; 1 = none).
    """
    state.ema = estimate if state.ema is None else settings.ema_decay * state.ema + (1 - settings.ema_decay) * estimate
    lower = min(settings.min_rank, state.max_rank)
    target = max(lower, min(state.max_rank, math.ceil(settings.safety_factor * pressure * state.ema)))
    new_rank = state.rank
    relative = abs(target - state.rank) / state.rank
    if step >= settings.warmup_steps and relative > settings.change_threshold:
        bound = max(1, math.floor(settings.max_step * state.rank))
        new_rank = state.rank + max(-bound, min(bound, target - state.rank))
    return RankDecision(estimate=estimate, ema=state.ema, target=target, old_rank=state.rank, new_rank=new_rank)

"""Per-layer rank decisions from a layer's own spectrum.

Each update, a layer's estimate (its stable rank for the `stable` policy, its energy rank for `energy`) is smoothed
by an EMA; the target rank is clamp(ceil(scale · ema), min_rank, max_rank), where scale is the safety factor times
the budget pressure. The layer changes rank only when the target differs from the current rank by more than a
relative threshold, and then by at most `max_step` × current rank, in either direction. Nothing changes before the
warm-up step. Decisions are pure functions of the estimates, so every process of a distributed run, given the same
synchronised weights, decides the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ControllerSettings:
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
    old_rank: int | None  # None: the layer was dense (the end of a dense warm start)
    new_rank: int

    @property
    def changed(self) -> bool:
        return self.new_rank != self.old_rank


def smooth(state: LayerRankState, estimate: float, settings: ControllerSettings) -> float:
    """Fold `estimate` into the layer's EMA (the first estimate starts it) and return the new EMA."""
    state.ema = estimate if state.ema is None else settings.ema_decay * state.ema + (1 - settings.ema_decay) * estimate
    return state.ema


def target_rank(state: LayerRankState, scale: float, settings: ControllerSettings) -> int:
    """clamp(ceil(scale · ema), min_rank, max_rank) for a layer whose EMA is set."""
    assert state.ema is not None
    lower = min(settings.min_rank, state.max_rank)
    return max(lower, min(state.max_rank, math.ceil(scale * state.ema - 1e-9)))


def decide(state: LayerRankState, target: int, step: int, settings: ControllerSettings) -> int:
    """The layer's next rank given its target: unchanged within the threshold or before warm-up, else a bounded
    step towards the target."""
    relative = abs(target - state.rank) / state.rank
    if step < settings.warmup_steps or relative <= settings.change_threshold:
        return state.rank
    bound = max(1, math.floor(settings.max_step * state.rank))
    return state.rank + max(-bound, min(bound, target - state.rank))

"""The per-layer rank controller: EMA, safety factor, clamps, threshold, bounded step, warm-up."""

from __future__ import annotations

import pytest

from alrt_core.model.rank_controller import ControllerSettings, LayerRankState, decide


def test_shrinks_towards_safety_times_ema_within_the_bounded_step():
    settings = ControllerSettings(safety_factor=1.5, change_threshold=0.1, max_step=0.25, ema_decay=0.5, min_rank=2)
    state = LayerRankState(rank=64, max_rank=128)
    decision = decide(state, estimate=10.0, step=100, settings=settings)
    assert decision.target == 15 and decision.ema == 10.0
    assert decision.new_rank == 48  # 64 - floor(0.25 * 64)
    state.rank = decision.new_rank
    decision = decide(state, estimate=20.0, step=200, settings=settings)
    assert decision.ema == pytest.approx(15.0) and decision.target == 23
    assert decision.new_rank == 36  # 48 - 12, still bounded


def test_grows_and_clamps_to_max_rank():
    settings = ControllerSettings(safety_factor=2.0, change_threshold=0.05, max_step=1.0, min_rank=4)
    state = LayerRankState(rank=16, max_rank=24)
    decision = decide(state, estimate=40.0, step=10, settings=settings)
    assert decision.target == 24 and decision.new_rank == 24 and decision.changed


def test_min_rank_clamp_threshold_and_warmup():
    settings = ControllerSettings(safety_factor=1.0, change_threshold=0.15, max_step=1.0, min_rank=8, warmup_steps=50)
    state = LayerRankState(rank=10, max_rank=64)
    early = decide(state, estimate=1.0, step=49, settings=settings)
    assert early.target == 8 and not early.changed  # warm-up: estimates are tracked, nothing changes
    state = LayerRankState(rank=10, max_rank=64)
    small = decide(state, estimate=9.0, step=60, settings=settings)
    assert small.target == 9 and not small.changed  # |9 - 10| / 10 = 0.1 is under the threshold
    state = LayerRankState(rank=10, max_rank=64)
    assert decide(state, estimate=1.0, step=60, settings=settings).new_rank == 8


def test_pressure_scales_the_safety_factor():
    settings = ControllerSettings(safety_factor=1.0, change_threshold=0.0, max_step=1.0, min_rank=1)
    assert decide(LayerRankState(rank=32, max_rank=64), 10.0, 0, settings, pressure=0.5).new_rank == 5
    assert decide(LayerRankState(rank=32, max_rank=64), 10.0, 0, settings, pressure=2.0).new_rank == 20

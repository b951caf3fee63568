"""The per-layer rank controller: EMA, scale, clamps, threshold, bounded step, warm-up."""

from __future__ import annotations

import pytest

from alrt_core.ranks.controller import (
    ControllerSettings,
    LayerRankState,
    decide,
    smooth,
    target_rank,
)


def test_shrinks_towards_scale_times_ema_within_the_bounded_step():
    settings = ControllerSettings(change_threshold=0.1, max_step=0.25, ema_decay=0.5, min_rank=2)
    state = LayerRankState(rank=64, max_rank=128)
    assert smooth(state, 10.0, settings) == 10.0  # the first estimate starts the EMA
    target = target_rank(state, 1.5, settings)
    assert target == 15
    assert decide(state, target, step=100, settings=settings) == 48  # 64 - floor(0.25 * 64)
    state.rank = 48
    assert smooth(state, 20.0, settings) == pytest.approx(15.0)
    assert target_rank(state, 1.5, settings) == 23
    assert decide(state, 23, step=200, settings=settings) == 36  # 48 - 12, still bounded


def test_grows_and_clamps_to_max_rank():
    settings = ControllerSettings(change_threshold=0.05, max_step=1.0, min_rank=4)
    state = LayerRankState(rank=16, max_rank=24, ema=40.0)
    assert target_rank(state, 2.0, settings) == 24
    assert decide(state, 24, step=10, settings=settings) == 24


def test_min_rank_clamp_threshold_and_warmup():
    settings = ControllerSettings(change_threshold=0.15, max_step=1.0, min_rank=8, warmup_steps=50)
    state = LayerRankState(rank=10, max_rank=64, ema=1.0)
    assert target_rank(state, 1.0, settings) == 8
    assert decide(state, 8, step=49, settings=settings) == 10  # warm-up: nothing changes yet
    assert decide(state, 8, step=50, settings=settings) == 8
    assert decide(state, 9, step=60, settings=settings) == 10  # |9 - 10| / 10 = 0.1 is under the threshold
    assert target_rank(LayerRankState(rank=2, max_rank=3, ema=0.1), 1.0, settings) == 3  # min_rank above max_rank


def test_scale_multiplies_the_estimate_and_exact_products_are_not_rounded_up():
    settings = ControllerSettings(min_rank=1)
    assert target_rank(LayerRankState(rank=32, max_rank=64, ema=10.0), 0.5, settings) == 5
    assert target_rank(LayerRankState(rank=32, max_rank=64, ema=10.0), 2.0, settings) == 20
    assert target_rank(LayerRankState(rank=32, max_rank=64, ema=10.1), 2.0, settings) == 21


def test_ema_decay_weighs_the_previous_value():
    settings = ControllerSettings(ema_decay=0.75)
    state = LayerRankState(rank=8, max_rank=8)
    smooth(state, 4.0, settings)
    assert smooth(state, 8.0, settings) == pytest.approx(0.75 * 4.0 + 0.25 * 8.0)

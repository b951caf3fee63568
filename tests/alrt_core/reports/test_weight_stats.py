"""Weight-matrix statistics against direct computations on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alrt_core.reports.weights import (
    condition_number,
    effective_rank,
    energy_share,
    excess_kurtosis,
    matrix_stats,
    rank_for_energy,
    recurring_outliers,
    stable_rank,
)


def gaussian(m: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_spectral_statistics_of_a_known_spectrum():
    sigma = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    p = np.array([3, 2, 1]) / 6
    assert effective_rank(sigma) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert stable_rank(sigma) == pytest.approx(14 / 9)
    assert condition_number(sigma) == 3.0
    assert energy_share(sigma, 1) == pytest.approx(9 / 14)
    assert energy_share(sigma, 2) == pytest.approx(13 / 14)
    assert rank_for_energy(sigma, 0.9) == 2 and rank_for_energy(sigma, 0.5) == 1
    assert effective_rank(torch.ones(7)) == pytest.approx(7.0)  # a flat spectrum uses every direction
    assert condition_number(torch.tensor([2.0, 0.0])) == math.inf
    assert effective_rank(torch.zeros(4)) == 0.0 and stable_rank(torch.zeros(4)) == 0.0


@pytest.mark.parametrize("k", [1, 3, 6])
def test_exactly_rank_k_matrix_has_ranks_at_most_k(k):
    u, v = gaussian(40, k, seed=k), gaussian(k, 30, seed=10 + k)
    dense = matrix_stats("blocks.0.attn.q", weight=u @ v)
    factored = matrix_stats("blocks.0.attn.q", u=u, v=v)
    for stats in (dense, factored):
        assert stats.effective_rank <= k + 1e-6
        assert stats.stable_rank <= k + 1e-9
        assert stats.rank90 <= k
    assert dense.condition > 1e10  # the dense matrix holds 30 - k zero singular values
    # The factorised layer holds exactly k: its condition number is σ₁/σ_k of the product.
    sigma = torch.linalg.svdvals(u @ v)[:k]
    assert factored.condition == pytest.approx(float(sigma[0] / sigma[-1]), rel=1e-9)
    assert factored.rank == k and factored.params == k * 70 and dense.rank is None and dense.params == 1200
    # Entry statistics see the same matrix either way.
    assert factored.kurtosis == pytest.approx(dense.kurtosis, rel=1e-9)
    assert (factored.row_peak_index, factored.col_peak_index) == (dense.row_peak_index, dense.col_peak_index)
    assert factored.effective_rank == pytest.approx(dense.effective_rank, rel=1e-6)


def test_kurtosis_matches_the_definition():
    signs = torch.tensor([1.0, -1.0] * 50)
    assert excess_kurtosis(signs) == pytest.approx(-2.0)
    spike = np.zeros(100)
    spike[3] = 1.0
    centred = spike - spike.mean()
    expected = (centred**4).mean() / (centred**2).mean() ** 2 - 3
    assert excess_kurtosis(torch.from_numpy(spike)) == pytest.approx(expected, rel=1e-12)
    assert excess_kurtosis(torch.full((5,), 2.0)) == 0.0


def test_planted_outlier_entry_row_and_column_are_found():
    w = gaussian(64, 128, seed=3)
    w[17, 5] = 40.0
    stats = matrix_stats("blocks.2.mlp.up", weight=w)
    row_rms = w[17].square().mean().sqrt()
    col_rms = w[:, 5].square().mean().sqrt()
    assert stats.row_peak_index == 17 and stats.row_peak == pytest.approx(float(40.0 / row_rms))
    assert stats.col_peak_index == 5 and stats.col_peak == pytest.approx(float(40.0 / col_rms))
    assert stats.block == 2 and stats.kind == "up" and stats.shape == (64, 128)

    w = gaussian(64, 128, seed=4)
    w[40] *= 10.0
    stats = matrix_stats("blocks.0.mlp.up", weight=w)
    rms = w.square().mean(dim=1).sqrt()
    assert stats.row_norm_index == 40 and stats.row_norm_ratio == pytest.approx(float(rms[40] / rms.median()))


def test_recurring_outliers_name_the_shared_channel():
    stats = []
    for block in range(4):
        w = gaussian(32, 96, seed=20 + block)
        if block != 2:
            w[:, 78] *= 15.0  # an input channel that is huge in three of four blocks
        stats.append(matrix_stats(f"blocks.{block}.mlp.up", weight=w))
    assert [s.col_norm_index for s in stats] == [78, 78, stats[2].col_norm_index, 78]
    findings = recurring_outliers(stats)
    assert [(f["axis"], f["index"], f["blocks"], f["of_blocks"], f["which_blocks"]) for f in findings] == [
        ("column norm", 78, 3, 4, [0, 1, 3])]
    assert findings[0]["ratio_min"] == pytest.approx(min(stats[b].col_norm_ratio for b in (0, 1, 3)))
    # Noise alone (no planted channel) is not reported.
    plain = [matrix_stats(f"blocks.{b}.mlp.up", weight=gaussian(32, 96, seed=40 + b)) for b in range(4)]
    assert recurring_outliers(plain) == []


def test_zero_matrices_have_no_rank_and_no_outliers():
    # Output projections start as zero maps (U = 0): nothing to report as an outlier.
    stats = [matrix_stats(f"blocks.{b}.attn.o", u=torch.zeros(16, 4), v=gaussian(4, 16, seed=b)) for b in range(3)]
    assert stats[0].effective_rank == 0.0 and stats[0].stable_rank == 0.0 and stats[0].condition == math.inf
    assert stats[0].row_norm_ratio == 0.0 and stats[0].row_peak == 0.0 and stats[0].to_dict()["condition"] is None
    assert recurring_outliers(stats) == []

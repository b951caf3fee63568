"""Starting ranks, per-kind ranks, the schedule anneal, the energy rank and the cost model."""

from __future__ import annotations

import pytest
import torch

from alrt_core.config import ModelConfig, RankConfig
from alrt_core.errors import UserError
from alrt_core.model.gpt import GPT
from alrt_core.ranks.budget import CostModel
from alrt_core.ranks.plan import (
    break_even_rank,
    energy_rank,
    initial_layer_ranks,
    parse_kind_ranks,
    schedule_rank,
)


def model_config() -> ModelConfig:
    return ModelConfig(vocab_size=50, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2.0, seq_len=16)


def test_break_even_rank_is_where_factors_cost_as_much_as_dense():
    assert break_even_rank(256, 256) == 128 and break_even_rank(1024, 256) == 204 and break_even_rank(128, 256) == 85
    for m, n in ((256, 256), (1024, 256), (7, 3)):
        r = break_even_rank(m, n)
        assert r * (m + n) <= m * n < (r + 1) * (m + n)


def test_initial_ranks_by_policy_init_and_kind():
    config = model_config()
    assert set(initial_layer_ranks(config, RankConfig(policy="dense")).values()) == {None}
    ranks = initial_layer_ranks(config, RankConfig())
    assert ranks["blocks.0.attn.q"] == 16 and ranks["blocks.0.attn.k"] == 10 and ranks["blocks.1.mlp.up"] == 21
    ranks = initial_layer_ranks(config, RankConfig(policy="fixed", init=12, kinds="qk=4,mlp=30"))
    assert ranks["blocks.1.attn.q"] == 4 and ranks["blocks.1.attn.k"] == 4 and ranks["blocks.1.attn.o"] == 12
    assert ranks["blocks.0.mlp.up"] == 30 and ranks["blocks.0.mlp.down"] == 30
    assert initial_layer_ranks(config, RankConfig(init=500))["blocks.0.attn.k"] == 16  # capped by min(m, n)


@pytest.mark.parametrize("text", ["q=0", "x=4", "q", "q=four"])
def test_bad_kind_ranks(text):
    with pytest.raises(UserError, match="bad rank.kinds entry"):
        parse_kind_ranks(text)


def test_schedule_anneals_linearly_after_warmup():
    assert [schedule_rank(s, 64, 16, 10, 40) for s in (0, 10, 20, 30, 50, 90)] == [64, 64, 52, 40, 16, 16]


def test_energy_rank_keeps_the_asked_fraction():
    sigma = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert energy_rank(sigma, 0.5) == 1 and energy_rank(sigma, 0.9) == 2 and energy_rank(sigma, 13 / 14) == 2
    assert energy_rank(sigma, 0.99) == 3 and energy_rank(sigma, 1.0) == 3 and energy_rank(torch.zeros(3), 0.9) == 1


def test_cost_model_counts_parameters_exactly_and_bytes_at_int6():
    config = model_config()
    ranks = initial_layer_ranks(config, RankConfig(policy="fixed", init=5))
    model = GPT(config, layer_ranks=ranks)
    costs = CostModel.of(model)
    assert costs.total(ranks, "params") == model.num_parameters()
    dense = dict.fromkeys(ranks)
    assert costs.total(dense, "params") == GPT(config).num_parameters()
    # q at rank 5: 5 x (32 + 32) int6 values + fp16 scales for 32 + 5 rows; dense q folds at 32x32
    assert costs.layer_bytes("blocks.0.attn.q", 5) == 5 * 64 * 0.75 + 37 * 2
    assert costs.layer_bytes("blocks.0.attn.q", 30) == 32 * 32 * 0.75 + 32 * 2  # factors bigger than dense: fold
    assert costs.fixed_bytes == 50 * 32 + 50 * 2 + 2 * (model.num_parameters() - costs.projection_params(ranks) - 50 * 32)

"""The GPT and its factorised projections: shapes, ranks, and the KV cache against recomputation."""

from __future__ import annotations

import pytest
import torch

from alrt_core.config import ModelConfig
from alrt_core.model.factorized import FactorizedLinear, sqrt_split_svd
from alrt_core.model.gpt import GPT, PROJECTION_KINDS, uniform_ranks


def small_config(**changes) -> ModelConfig:
    base = dict(vocab_size=97, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2.0, seq_len=24)
    base.update(changes)
    return ModelConfig(**base)


def test_dense_model_shapes_and_parameter_count():
    model = GPT(small_config())
    tokens = torch.randint(0, 97, (2, 24))
    assert model(tokens).shape == (2, 24, 97)
    assert model(tokens, tokens).shape == ()
    assert model(tokens, tokens, reduction="none").shape == (2, 24)
    layer = model.blocks[0]
    assert layer.attn.q.weight.shape == (32, 32)
    assert layer.attn.k.weight.shape == (16, 32)  # 2 KV heads x head_dim 8
    assert layer.mlp.up.weight.shape == (64, 32)
    assert layer.mlp.down.weight.shape == (32, 64)
    assert all(rank is None for rank in model.layer_ranks().values())
    # 3 blocks x (q 1024 + k 512 + v 512 + o 1024 + up 2048 + down 2048 + q_gain 4 + 2x32 scales + 2x32 mix)
    per_block = 1024 + 512 + 512 + 1024 + 2048 + 2048 + 4 + 64 + 64
    assert model.num_parameters() == 97 * 32 + 3 * per_block + 1 * 32  # tied embedding + one U-Net skip weight


def test_factorised_model_shapes_ranks_by_name():
    model = GPT(small_config(), layer_ranks={"blocks.0.attn.q": 8, "blocks.1.mlp.up": 5})
    ranks = model.layer_ranks()
    assert len(ranks) == 3 * len(PROJECTION_KINDS)
    assert ranks["blocks.0.attn.q"] == 8 and ranks["blocks.1.mlp.up"] == 5
    assert ranks["blocks.0.attn.k"] is None  # names not given stay dense
    q = model.blocks[0].attn.q
    assert q.U.shape == (32, 8) and q.V.shape == (8, 32) and q.weight is None
    assert model.blocks[1].mlp.up.U.shape == (64, 5)
    tokens = torch.randint(0, 97, (2, 24))
    assert model(tokens).shape == (2, 24, 97)


def test_one_rank_for_all_is_capped_by_each_smaller_dimension():
    model = GPT(small_config(), layer_ranks=uniform_ranks(small_config(), 100))
    assert model.layer_ranks()["blocks.0.attn.k"] == 16
    assert model.layer_ranks()["blocks.0.attn.q"] == 32


def test_factorised_forward_equals_its_dense_product():
    layer = FactorizedLinear(12, 7, rank=4)
    x = torch.randn(3, 12)
    torch.testing.assert_close(layer(x), x @ layer.effective_weight().T)
    assert layer.num_parameters() == 4 * (12 + 7)


def test_sqrt_split_is_the_best_rank_r_approximation_with_balanced_factors():
    torch.manual_seed(0)
    matrix = torch.randn(10, 6)
    u, v = sqrt_split_svd(matrix, 6)
    torch.testing.assert_close(u @ v, matrix, atol=1e-5, rtol=1e-5)
    u3, v3 = sqrt_split_svd(matrix, 3)
    singular = torch.linalg.svdvals(matrix)
    error = torch.linalg.matrix_norm(matrix - u3 @ v3)
    torch.testing.assert_close(error, singular[3:].square().sum().sqrt(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.linalg.svdvals(u3), torch.linalg.svdvals(v3))  # both carry sqrt(S)


def test_zero_init_output_projections_start_as_zero_maps_but_receive_gradient():
    model = GPT(small_config(), layer_ranks=uniform_ranks(small_config(), 4))
    o = model.blocks[0].attn.o
    assert torch.count_nonzero(o.U) == 0 and torch.count_nonzero(o.V) > 0
    tokens = torch.randint(0, 97, (2, 24))
    model(tokens, tokens).backward()
    assert o.U.grad is not None and torch.count_nonzero(o.U.grad) > 0


def test_invalid_rank_raises():
    with pytest.raises(ValueError, match="rank must be in"):
        FactorizedLinear(8, 4, rank=5)


@pytest.mark.parametrize(
    "changes",
    [{}, {"ranks": 6}, {"rope_dims": 4}, {"num_kv_heads": 4}, {"unet_skips": False, "resid_mix": False},
     {"qk_norm": False, "logit_softcap": 0.0}, {"tie_embeddings": False}],
)
def test_kv_cache_decoding_matches_full_recompute(changes):
    torch.manual_seed(0)
    ranks = changes.pop("ranks", None)
    config = small_config(**changes)
    model = GPT(config, layer_ranks=uniform_ranks(config, ranks)).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # non-zero everywhere so every path contributes
            parameter.add_(torch.randn_like(parameter) * 0.05)
        tokens = torch.randint(0, 97, (2, 20))
        full = model(tokens)
        cache = model.new_cache(batch_size=2)
        prefill = model(tokens[:, :7], cache=cache)
        chunk = model(tokens[:, 7:12], cache=cache)  # a multi-token step at an offset
        steps = [model(tokens[:, i : i + 1], cache=cache) for i in range(12, 20)]
    incremental = torch.cat([prefill, chunk, *steps], dim=1)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-5)
    assert cache.length == 20


def test_cache_overflow_and_rope_limit_are_errors():
    model = GPT(small_config()).eval()
    cache = model.new_cache(batch_size=1, max_len=4)
    with torch.no_grad(), pytest.raises(ValueError, match="KV cache full"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with torch.no_grad(), pytest.raises(ValueError, match="exceed the RoPE table"):
        model(torch.zeros(1, 25, dtype=torch.long))

"""GPTQ and clip search against round-to-nearest; exact packing and byte shuffling; compressors."""

from __future__ import annotations

import pytest
import torch

from export.compress import COMPRESSORS, compress, compress_best, decompress
from export.gptq import quantize_matrix, round_to_nearest, row_scales, weighted_error
from export.packing import pack_bits, shuffle_bytes, unpack_bits, unshuffle_bytes


def correlated_layer(rows: int = 48, cols: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator) * 0.05
    mixing = torch.eye(cols) + 2.0 * torch.randn(cols, cols, generator=generator) / cols**0.5
    inputs = torch.randn(2048, cols, generator=generator) @ mixing  # strongly correlated input features
    return weight, inputs.T @ inputs / inputs.shape[0]


def test_gptq_beats_round_to_nearest_on_hessian_weighted_error():
    weight, hessian = correlated_layer()
    q, scale = round_to_nearest(weight, 6)
    rtn_error = weighted_error(weight, q.float() * scale[:, None], hessian)
    gptq = quantize_matrix(weight, hessian, 6, clips=(None,))
    assert gptq.error < 0.75 * rtn_error
    assert int(gptq.q.abs().max()) <= 31 and gptq.q.dtype == torch.int8 and gptq.scale.dtype == torch.float16


def test_clip_search_keeps_the_best_candidate():
    weight, hessian = correlated_layer(seed=1)
    weight[0, 0] = 2.0  # one outlier: clipping it lets the rest of row 0 use finer steps
    searched = quantize_matrix(weight, hessian, 6)
    for clip in (3.0, 5.0, None):
        single = quantize_matrix(weight, hessian, 6, clips=(clip,))
        assert searched.error <= single.error + 1e-12
    assert searched.error == pytest.approx(weighted_error(weight, searched.dequantize(), hessian))


def test_sdclip_scale_is_k_std_over_levels_and_never_beyond_the_row_max():
    weight = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 8.0]])
    scale = row_scales(weight, 6, 2.0)
    assert scale[0] == pytest.approx(1.0 / 31, rel=1e-3)  # 2·std = 2 > max 1: capped at the max
    assert scale[1] == pytest.approx(2.0 * weight[1].std(correction=0).item() / 31, rel=1e-3)


def test_dead_inputs_and_rank_deficient_hessians_are_handled():
    weight, _ = correlated_layer(rows=8, cols=16)
    hessian = torch.zeros(16, 16)
    hessian[:8, :8] = torch.eye(8)  # inputs 8..15 never active; H singular
    result = quantize_matrix(weight, hessian, 6)
    assert torch.isfinite(result.dequantize()).all() and result.error < 1e-2


@pytest.mark.parametrize("bits", [2, 4, 5, 6, 7, 8])
def test_pack_unpack_round_trip_is_exact(bits):
    generator = torch.Generator().manual_seed(bits)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    values = torch.randint(low, high + 1, (37, 11), generator=generator, dtype=torch.int8)
    packed = pack_bits(values, bits)
    assert len(packed) == -(-values.numel() * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, values.numel()).view(37, 11), values)


def test_pack_rejects_values_out_of_range():
    with pytest.raises(ValueError, match="do not fit"):
        pack_bits(torch.tensor([40], dtype=torch.int8), 6)


def test_shuffle_round_trip_is_bit_exact():
    values = torch.randn(1001).half()
    data = shuffle_bytes(values)
    assert len(data) == 2002
    assert torch.equal(unshuffle_bytes(data, torch.float16, 1001).view(torch.int16), values.view(torch.int16))


def test_compressors_round_trip_and_auto_picks_the_smallest():
    data = bytes(range(256)) * 200 + b"tail"
    for method in COMPRESSORS:
        assert decompress(compress(data, method), method) == data
    method, packed = compress_best(data)
    assert len(packed) == min(len(compress(data, m)) for m in COMPRESSORS)

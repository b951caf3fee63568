"""Fake quantisation for late QAT: the forward pass sees weights on the integer grid `alrt quantize` packs.

The grid is the artifact's (`alrt_core/quant_grid.py`) without clipping: integers q in [-R, R], R = 2^(bits-1) - 1,
and one scale per row, max|row| / R rounded to fp16 (the precision the artifact stores scales in). The backward pass is
the straight-through estimator: the gradient of the rounded weight is passed to the float weight unchanged, so
training keeps moving the float weights while the loss measures the quantised ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alrt_core.quant_grid import absmax_scale, round_to_grid


def quantize_dequantize(weight: Tensor, bits: int) -> Tensor:
    """Round every row of `weight` to its symmetric per-row int grid and map it back to floats (same dtype)."""
    w = weight.detach().float()
    scale = absmax_scale(w, bits)
    return (round_to_grid(w, scale, bits) * scale[:, None]).to(weight.dtype)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, bits: int) -> Tensor:  # noqa: ANN001 - autograd signature
        return quantize_dequantize(weight, bits)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001 - autograd signature
        return grad, None


def fake_quantize(weight: Tensor, bits: int) -> Tensor:
    """`quantize_dequantize(weight)` in the forward pass, the identity in the backward pass."""
    return _StraightThrough.apply(weight, bits)

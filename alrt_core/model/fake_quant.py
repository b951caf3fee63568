"""Fake quantisation for late QAT: the forward pass sees weights on the integer grid `alrt quantize` packs.

The grid is the one of `export/gptq.py` without clipping: integers q in [-R, R], R = 2^(bits-1) - 1, and one
scale per row, max|row| / R rounded to fp16 (the precision the artifact stores scales in). The backward pass is
the straight-through estimator: the gradient of the rounded weight is passed to the float weight unchanged, so
training keeps moving the float weights while the loss measures the quantised ones.
"""

from __future__ import annotations

import torch
from torch import Tensor


def grid_levels(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def quantize_dequantize(weight: Tensor, bits: int) -> Tensor:
    """Round every row of `weight` to its symmetric per-row int grid and map it back to floats (same dtype)."""
    levels = grid_levels(bits)
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / levels).clamp_min(1e-8).half().float().clamp_min(6e-8)[:, None]
    return (torch.clamp(torch.round(w / scale), -levels, levels) * scale).to(weight.dtype)


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

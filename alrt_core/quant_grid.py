"""The integer grid of every quantised tensor of an artifact, defined once.

`alrt quantize` packs onto it (export/gptq.py), late QAT trains on it (model/fake_quant.py), and the size estimate
and the rank budget count its bytes (model/artifact_estimate.py, ranks/budget.py). A tensor of `bits` bits is stored
as integers q in [-R, R], R = 2^(bits-1) - 1 — symmetric, so -2^(bits-1) is never used and zero is exact — with one
scale per row, stored in fp16: Ŵ = q · scale.
"""

from __future__ import annotations

import torch
from torch import Tensor

MATRIX_BITS = 6  # projection matrices: dense, folded, or each factor
EMBED_BITS = 8  # the token embedding, an untied head, the lookup tables and their projections
SCALE_BYTES = 2  # one fp16 scale per row
FP16_BYTES = 2  # every tensor too small to quantise (norm gains, scalars) is stored in fp16
# fp16's smallest subnormal is 6e-8: a scale below it would be stored as zero and lose its row.
_SMALLEST_SCALE = 6e-8


def max_level(bits: int) -> int:
    """R: the largest integer of the `bits`-bit symmetric grid."""
    return 2 ** (bits - 1) - 1


def stored_scale(scale: Tensor) -> Tensor:
    """`scale` as the artifact stores it: rounded to fp16 (returned as fp32) and never zero."""
    return scale.clamp_min(1e-8).half().float().clamp_min(_SMALLEST_SCALE)


def absmax_scale(weight: Tensor, bits: int) -> Tensor:
    """The unclipped per-row scale max|row| / R, as stored."""
    return stored_scale(weight.abs().amax(dim=1) / max_level(bits))


def round_to_grid(weight: Tensor, scale: Tensor, bits: int) -> Tensor:
    """q = clamp(round(w / scale), -R, R) per row (as floats); `scale` holds one value per row of `weight`
    (leading dimensions broadcast: candidates × rows)."""
    levels = max_level(bits)
    return torch.clamp(torch.round(weight / scale[..., None]), -levels, levels)

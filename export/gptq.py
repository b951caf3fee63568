"""Quantising one matrix: symmetric per-row scales, SDClip, GPTQ error propagation, clip search.

A matrix W (rows × cols) that multiplies inputs x (cols) is stored as integers q in [-R, R], R = 2^(bits-1) - 1,
with one fp16 scale per row: Ŵ = q · scale. SDClip sets scale = k · std(row) / R, clipping the few weights beyond
k standard deviations so the rest get finer steps. GPTQ (Frantar et al., 2023) quantises the columns one by one
and spreads each column's rounding error over the columns not yet quantised, weighted by the inverse Hessian
H = Σ x xᵀ of the layer's inputs, which minimises the output error ‖(W − Ŵ) x‖² rather than the weight error.
Clip search runs GPTQ for several k and keeps the one with the least Hessian-weighted error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alrt_core.quant_grid import max_level, round_to_grid, stored_scale

# SDClip multipliers tried per matrix; None = no clipping (scale from the row's max |w|).
DEFAULT_CLIP_CANDIDATES: tuple[float | None, ...] = (3.0, 4.0, 5.0, 6.5, 8.0, 12.0, None)


@dataclass(frozen=True)
class QuantizedMatrix:
    q: Tensor  # int8, values in [-R, R]
    scale: Tensor  # fp16, one per row
    bits: int
    clip: float | None  # the SDClip multiplier chosen (None: row max)
    error: float  # Hessian-weighted relative error tr(ΔH Δᵀ) / tr(W H Wᵀ)

    def dequantize(self) -> Tensor:
        return self.q.float() * self.scale.float()[:, None]


def row_scales(weight: Tensor, bits: int, clip: float | None) -> Tensor:
    """fp16 per-row scales: k·std(row)/R (never beyond what the row's max needs), or max|row|/R."""
    levels = max_level(bits)
    absmax = weight.abs().amax(dim=1)
    if clip is None:
        limit = absmax
    else:
        limit = torch.minimum(clip * weight.std(dim=1, correction=0), absmax)
    return stored_scale(limit / levels)


def weighted_error(weight: Tensor, approx: Tensor, hessian: Tensor) -> float:
    """tr(Δ H Δᵀ) / tr(W H Wᵀ): the output error on the calibration inputs, relative to the output energy."""
    delta = (weight - approx).double()
    h = hessian.double()
    total = float(((weight.double() @ h) * weight.double()).sum())
    return float(((delta @ h) * delta).sum()) / max(total, 1e-30)


def candidate_errors(weight: Tensor, approximations: Tensor, hessian: Tensor) -> list[float]:
    """`weighted_error` of each of several approximations (candidates × rows × cols) of one weight, with the
    output energy tr(W H Wᵀ) computed once (at golf scale these products cost as much as GPTQ itself)."""
    h = hessian.double()
    w = weight.double()
    total = max(float(((w @ h) * w).sum()), 1e-30)
    errors = []
    for approx in approximations:  # one candidate at a time: a (rows × cols) double buffer, not candidates of them
        delta = (weight - approx).double()  # the difference in fp32, as weighted_error takes it
        errors.append(float(((delta @ h) * delta).sum()) / total)
    return errors


def round_to_nearest(weight: Tensor, bits: int, clip: float | None = None) -> tuple[Tensor, Tensor]:
    scale = row_scales(weight.float(), bits, clip)
    return round_to_grid(weight.float(), scale, bits).to(torch.int8), scale


@dataclass(frozen=True)
class InverseHessian:
    """What GPTQ needs of a Hessian, prepared once (it depends on the Hessian alone, not on the weight, the bits or
    the clip): the act-order column order, the dead inputs, and the upper Cholesky factor of the damped inverse in
    that order. At golf scale the three fp64 factorisations of a 2,048² Hessian take ~0.8 s, a third of one MLP
    matrix's GPTQ, and a budget fit re-quantises the same matrices at fewer bits."""

    order: Tensor
    dead: Tensor
    upper: Tensor  # float32

    @classmethod
    def of(cls, hessian: Tensor, *, damp: float = 0.01, act_order: bool = True) -> InverseHessian:
        h = hessian.double().clone()
        dead = torch.diag(h) <= 0
        h[dead, dead] = 1.0  # dead inputs made harmless
        h.diagonal().add_(damp * float(torch.diag(h).mean()))
        cols = h.shape[0]
        order = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(cols, device=h.device)
        h = h[order][:, order]
        try:
            upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
        except torch.linalg.LinAlgError:
            # More damping; a Hessian this ill-conditioned has little error to propagate anyway.
            h.diagonal().add_(0.1 * float(torch.diag(h).mean()))
            upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
        return cls(order, dead, upper.float())


def gptq_quantize(
    weight: Tensor, hessian: Tensor | InverseHessian, bits: int, scales: Tensor, *, block_size: int = 128,
) -> Tensor:
    """GPTQ with fixed per-row scales: int8 values in [-R, R], one result per row of `scales` (candidates × rows),
    all candidates run together so the column loop's Python overhead is paid once. Columns are visited by
    decreasing H diagonal (act-order) in blocks; within a block errors propagate column by column, across blocks
    in one matmul. `hessian` may come prepared (`InverseHessian.of`)."""
    levels = max_level(bits)
    rows, cols = weight.shape
    scales = scales.reshape(-1, rows).float()
    prepared = hessian if isinstance(hessian, InverseHessian) else InverseHessian.of(hessian)
    order, dead, upper = prepared.order, prepared.dead, prepared.upper
    w = weight.float().clone()
    w[:, dead] = 0.0
    w = w[:, order].unsqueeze(0).repeat(scales.shape[0], 1, 1)  # candidates × rows × cols
    s = scales[:, :, None]
    q_all = torch.zeros_like(w)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = w[:, :, start:end].clone()
        errors = torch.zeros_like(block)
        inverse = upper[start:end, start:end]
        for j in range(end - start):
            column = block[:, :, j : j + 1]
            q = torch.clamp(torch.round(column / s), -levels, levels)
            q_all[:, :, start + j : start + j + 1] = q
            error = (column - q * s) / inverse[j, j]
            block[:, :, j:] -= error * inverse[j, j:][None, None, :]
            errors[:, :, j : j + 1] = error
        if end < cols:
            w[:, :, end:] -= errors @ upper[start:end, end:]
    restore = torch.argsort(order)
    return q_all[:, :, restore].to(torch.int8)


def quantize_matrix(
    weight: Tensor,
    hessian: Tensor | None,
    bits: int,
    *,
    clips: tuple[float | None, ...] = DEFAULT_CLIP_CANDIDATES,
    method: str = "gptq",
    inverse: InverseHessian | None = None,
) -> QuantizedMatrix:
    """The best of `clips` by Hessian-weighted error (plain weight error without a Hessian). `inverse`: GPTQ's
    preparation of this `hessian`, when the caller keeps it (`InverseHessian.of`)."""
    weight = weight.float()
    h = hessian if hessian is not None else torch.eye(weight.shape[1], device=weight.device)
    scales = torch.stack([row_scales(weight, bits, clip) for clip in clips])
    if method == "gptq" and hessian is not None:
        candidates = gptq_quantize(weight, inverse if inverse is not None else h, bits, scales)
    else:
        candidates = round_to_grid(weight[None], scales, bits).to(torch.int8)
    best: QuantizedMatrix | None = None
    errors = candidate_errors(weight, candidates.float() * scales[:, :, None].half().float(), h)
    for clip, scale, q, error in zip(clips, scales, candidates, errors, strict=True):
        if best is None or error < best.error:
            best = QuantizedMatrix(q, scale.half(), bits, clip, error)
    assert best is not None
    return best

"""Making an artifact fit its byte budget with the least estimated damage.

Two moves, in this order, each re-measured on the real compressed file:

1. **Fewer bits on the least sensitive tensors.** For every integer tensor the quantiser is re-run one bit lower;
   its damage is the rise of its Hessian-weighted output error, tr(ΔH Δᵀ); its saving is the raw bytes dropped.
   Tensors are lowered in order of damage per byte saved until the estimated size fits, then measured.
2. **Selective ±1 pruning.** Integers of magnitude 1 are set to 0 (zeros compress far better) in order of their
   Hessian-weighted cost scale_row² · H_jj, the smallest first; a binary search finds the fewest prunes that fit.

If even every ±1 pruned does not fit, the budget is impossible: the caller reports the smallest size reached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from export.gptq import QuantizedMatrix


@dataclass
class MatrixPlan:
    """A matrix to quantise: its float weight, input Hessian (per token), class and bit floor."""

    name: str
    weight: Tensor
    hessian: Tensor
    bits: int
    min_bits: int
    tensor_class: str


@dataclass(frozen=True)
class FitAction:
    action: str  # "lower_bits" | "prune"
    detail: str
    size: int


def output_error(plan: MatrixPlan, matrix: QuantizedMatrix) -> float:
    """tr(ΔH Δᵀ) in absolute terms (comparable across tensors of one model)."""
    w = plan.weight.double()
    energy = float(((w @ plan.hessian.double()) * w).sum())
    return matrix.error * energy


def _lower_candidates(
    plans: dict[str, MatrixPlan], quantized: dict[str, QuantizedMatrix], requantize: Callable[[MatrixPlan, int], QuantizedMatrix],
) -> list[tuple[float, str, QuantizedMatrix, int]]:
    """(damage per byte saved, name, lower-bit matrix, raw bytes saved) for every tensor above its floor."""
    candidates = []
    for name, plan in plans.items():
        current = quantized[name]
        if current.bits <= plan.min_bits:
            continue
        lower = requantize(plan, current.bits - 1)
        saved = current.q.numel() / 8  # one bit per value
        damage = max(0.0, output_error(plan, lower) - output_error(plan, current))
        candidates.append((damage / saved, name, lower, int(saved)))
    return sorted(candidates, key=lambda item: item[0])


def prune_order(plans: dict[str, MatrixPlan], quantized: dict[str, QuantizedMatrix]) -> list[tuple[str, Tensor]]:
    """Every ±1 entry as (tensor name, flat index), cheapest to zero first."""
    costs, names, indices = [], [], []
    for index, (name, plan) in enumerate(plans.items()):
        matrix = quantized[name]
        flat = matrix.q.flatten()
        ones = torch.nonzero(flat.abs() == 1).flatten()
        if not ones.numel():
            continue
        rows, cols = ones // matrix.q.shape[1], ones % matrix.q.shape[1]
        h_diag = torch.diag(plan.hessian).float().clamp_min(0)
        costs.append(matrix.scale.float()[rows].square() * h_diag[cols])
        names.append(torch.full_like(ones, index))
        indices.append(ones)
    if not costs:
        return []
    order = torch.argsort(torch.cat(costs), stable=True)
    all_names, all_indices = torch.cat(names)[order], torch.cat(indices)[order]
    keys = list(plans)
    return [(keys[int(n)], i) for n, i in zip(all_names, all_indices, strict=True)]


def apply_prunes(quantized: dict[str, QuantizedMatrix], prunes: list[tuple[str, Tensor]], count: int) -> dict[str, QuantizedMatrix]:
    """A copy of `quantized` with the first `count` prunes applied."""
    chosen: dict[str, list[int]] = {}
    for name, index in prunes[:count]:
        chosen.setdefault(name, []).append(int(index))
    result = dict(quantized)
    for name, flat_indices in chosen.items():
        matrix = quantized[name]
        q = matrix.q.clone().flatten()
        q[torch.tensor(flat_indices)] = 0
        result[name] = QuantizedMatrix(q.view_as(matrix.q), matrix.scale, matrix.bits, matrix.clip, matrix.error)
    return result


def fit_to_budget(
    plans: dict[str, MatrixPlan],
    quantized: dict[str, QuantizedMatrix],
    measure: Callable[[dict[str, QuantizedMatrix]], int],
    budget: int,
    requantize: Callable[[MatrixPlan, int], QuantizedMatrix],
) -> tuple[dict[str, QuantizedMatrix], list[FitAction], int, bool]:
    """(quantized, actions, final size, fits). `measure` returns the whole artifact's bytes."""
    actions: list[FitAction] = []
    size = measure(quantized)
    while size > budget:
        raw_total = sum(m.q.numel() * m.bits / 8 for m in quantized.values())  # for the compressed/raw ratio
        candidates = _lower_candidates(plans, quantized, requantize)
        if not candidates:
            break
        ratio = size / max(raw_total, 1.0)
        needed, picked = (size - budget) * 1.05, []
        for candidate in candidates:
            picked.append(candidate)
            needed -= candidate[3] * ratio
            if needed <= 0:
                break
        for _, name, lower, _saved in picked:
            quantized = {**quantized, name: lower}
        size = measure(quantized)
        names = ", ".join(f"{name}→{lower.bits}b" for _, name, lower, _ in picked)
        actions.append(FitAction("lower_bits", names, size))
    if size <= budget:
        return quantized, actions, size, True
    prunes = prune_order(plans, quantized)
    if not prunes:
        return quantized, actions, size, False
    full = measure(apply_prunes(quantized, prunes, len(prunes)))
    if full > budget:
        actions.append(FitAction("prune", f"all {len(prunes):,} ±1 values", full))
        return quantized, actions, min(size, full), False
    low, high = 0, len(prunes)  # size(low) > budget >= size(high)
    while high - low > max(1, len(prunes) // 2000):
        middle = (low + high) // 2
        if measure(apply_prunes(quantized, prunes, middle)) <= budget:
            high = middle
        else:
            low = middle
    quantized = apply_prunes(quantized, prunes, high)
    size = measure(quantized)
    actions.append(FitAction("prune", f"{high:,} of {len(prunes):,} ±1 values set to 0", size))
    return quantized, actions, size, size <= budget

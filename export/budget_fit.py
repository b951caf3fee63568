"""Making an artifact fit its byte budget with the least estimated damage.

Two moves, in this order, each re-measured on the real compressed file:

1. **Fewer bits on the least sensitive tensors.** For every integer tensor the quantiser is re-run one bit lower;
   its damage is the rise of its Hessian-weighted output error, tr(ΔH Δᵀ); its saving is the raw bytes dropped.
   Tensors are lowered in order of damage per byte saved until the estimated size fits, then measured.
2. **Selective ±1 pruning.** Integers of magnitude 1 are set to 0 (zeros compress far better) in order of their
   Hessian-weighted cost scale_row² · H_jj, the smallest first; a binary search finds the fewest prunes that fit.

If even every ±1 pruned does not fit, the budget is impossible: the caller reports the smallest size reached.

A layer kept as factors stores U·V; U is fitted to the V̂ stored (`fit_factor`), so whenever a move changes V̂,
its U is refitted and requantised: always after lowering V's bits, and after pruning V only where that lowers the
pair's error and the artifact still fits (see `_refresh_after_pruning`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from export.gptq import QuantizedMatrix


@dataclass
class MatrixPlan:
    """A matrix to quantise: its float weight, input Hessian (per token), class and bit floor.

    The `U` of a layer kept as factors reads `V̂·x`, so its plan follows the `V̂` actually stored (`fit_factor`):
    `factor_of` names that `V`, `product` is the trained `U·V` and `layer_hessian` is H of the layer input x.
    """

    name: str
    weight: Tensor
    hessian: Tensor
    bits: int
    min_bits: int
    tensor_class: str
    factor_of: str | None = None
    product: Tensor | None = None
    layer_hessian: Tensor | None = None


@dataclass(frozen=True)
class FitAction:
    action: str  # "lower_bits" | "prune" | "requantize"
    detail: str
    size: int


FACTOR_RIDGE = 1e-4  # relative ridge on V̂·H·V̂ᵀ: keeps the solve stable when V̂'s rows are nearly dependent


def fit_factor(plan: MatrixPlan, v_hat: Tensor) -> None:
    """Fit a kept U's plan to the V̂ it will be stored with: Hessian V̂·H·V̂ᵀ (U's input is V̂x) and, as the matrix
    to quantise, the U that best reproduces the trained product from V̂x: U* = (U·V)·H·V̂ᵀ·(V̂·H·V̂ᵀ)⁻¹.

    The pair's error tr(Δ H Δᵀ), Δ = U·V − Û·V̂, then splits exactly into (U·V − U*·V̂), the part of V's error no
    U can undo, plus (U* − Û)·V̂, which GPTQ with this Hessian minimises. Quantising the trained U instead would
    leave V's error uncorrected; a plan fitted to another V̂ than the stored one (stale) misses both terms.
    """
    assert plan.product is not None and plan.layer_hessian is not None, f"{plan.name} is not a kept factor"
    h, v = plan.layer_hessian.double(), v_hat.double()
    gram = v @ h @ v.T
    ridge = FACTOR_RIDGE * max(float(gram.diagonal().mean()), 1e-30)
    cross = plan.product.double() @ h @ v.T  # (U·V)·H·V̂ᵀ
    gram_damped = gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype)
    plan.weight = torch.linalg.solve(gram_damped, cross.T).T.float()  # the Gram matrix is symmetric
    plan.hessian = gram.float()


def pair_error(product: Tensor, u_hat: Tensor, v_hat: Tensor, hessian: Tensor) -> float:
    """tr(Δ H Δᵀ) with Δ = U·V − Û·V̂: what a kept pair gets wrong on the layer's inputs."""
    delta = product.double() - u_hat.double() @ v_hat.double()
    return float(((delta @ hessian.double()) * delta).sum())


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


def _refreshed_factors(
    plans: dict[str, MatrixPlan], quantized: dict[str, QuantizedMatrix], changed: set[str],
    requantize: Callable[[MatrixPlan, int], QuantizedMatrix],
) -> dict[str, tuple[MatrixPlan, QuantizedMatrix]]:
    """For every kept U whose V is in `changed`: (its plan fitted to the V̂ now stored, U requantised from it at
    its current bits). Nothing is modified: the caller commits what it keeps."""
    refreshed = {}
    for name, plan in plans.items():
        if plan.factor_of is None or plan.factor_of not in changed or plan.factor_of not in quantized:
            continue
        fresh = replace(plan)
        fit_factor(fresh, quantized[plan.factor_of].dequantize())
        refreshed[name] = (fresh, requantize(fresh, quantized[name].bits))
    return refreshed


def _pair_error(plan: MatrixPlan, u_hat: QuantizedMatrix, v_hat: QuantizedMatrix) -> float:
    assert plan.product is not None and plan.layer_hessian is not None
    return pair_error(plan.product, u_hat.dequantize(), v_hat.dequantize(), plan.layer_hessian)


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
        # A kept U was fitted to the V̂ of the bits before: fit and requantise it to the V̂ now stored (its bits
        # unchanged, so the saving estimate holds; the loop measures the result either way).
        refreshed = _refreshed_factors(plans, quantized, {name for _, name, _, _ in picked}, requantize)
        for u_name, (fresh, matrix) in refreshed.items():
            plans[u_name] = fresh
            quantized = {**quantized, u_name: matrix}
        size = measure(quantized)
        names = ", ".join(f"{name}→{lower.bits}b" for _, name, lower, _ in picked)
        if refreshed:
            names += f" ({', '.join(refreshed)} refitted to the new V)"
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
    if size > budget:
        return quantized, actions, size, False
    pruned = {name for name, _ in prunes[:high]}
    quantized, size = _refresh_after_pruning(plans, quantized, pruned, measure, budget, requantize, actions, size)
    return quantized, actions, size, True


def _refresh_after_pruning(
    plans: dict[str, MatrixPlan], quantized: dict[str, QuantizedMatrix], pruned: set[str],
    measure: Callable[[dict[str, QuantizedMatrix]], int], budget: int,
    requantize: Callable[[MatrixPlan, int], QuantizedMatrix], actions: list[FitAction], size: int,
) -> tuple[dict[str, QuantizedMatrix], int]:
    """Refit and requantise the U of each pruned V to the pruned V̂, keeping that only where it lowers the pair's
    error, and only if the artifact still fits (else the pruned artifact, which fits, stays as it is).

    Pruning is the last, measured step: a requantised U has fresh ±1 values (and loses any prunes of its own), so
    it may compress larger and undo the fit. Pruning again could loop; instead the refreshed Us are measured once,
    all together, and dropped if they do not fit.
    """
    refreshed = {}
    for name, (fresh, matrix) in _refreshed_factors(plans, quantized, pruned, requantize).items():
        assert fresh.factor_of is not None
        v_hat = quantized[fresh.factor_of]
        if _pair_error(fresh, matrix, v_hat) <= _pair_error(fresh, quantized[name], v_hat):
            refreshed[name] = (fresh, matrix)
    if not refreshed:
        return quantized, size
    candidate = {**quantized, **{name: matrix for name, (_, matrix) in refreshed.items()}}
    candidate_size = measure(candidate)
    if candidate_size > budget:
        return quantized, size
    for name, (fresh, _) in refreshed.items():
        plans[name] = fresh
    actions.append(FitAction("requantize", f"{', '.join(refreshed)} refitted to the pruned V", candidate_size))
    return candidate, candidate_size

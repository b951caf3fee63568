"""Making an artifact fit its byte budget with the least estimated damage.

Two moves, in this order, each sized by a predicted artifact size (`export.size_prediction`: per-entry proxy
compression anchored to the last real measurement) and confirmed by one real measurement:

1. **Fewer bits on the least sensitive tensors.** One bit less quadruples a tensor's quantisation noise, so the
   damage of lowering it is estimated as three times its Hessian-weighted output error tr(ΔH Δᵀ); its saving is
   the raw bytes dropped. Tensors are lowered (re-quantised) in order of damage per byte saved until the predicted
   size fits; then the artifact is measured.
2. **Selective ±1 pruning.** Integers of magnitude 1 are set to 0 (zeros compress far better) in order of their
   Hessian-weighted cost scale_row² · H_jj, the smallest first; a binary search on predicted sizes finds the fewest
   prunes that fit, and the result is measured.

A measurement over the budget (an optimistic prediction) re-anchors the prediction and the fit takes one more
move, until a measured artifact fits: the result is never over budget. If even every ±1 pruned does not fit, the
budget is impossible: the caller reports the smallest size reached.

A layer kept as factors stores U·V; U is fitted to the V̂ stored (`fit_factor`), so whenever a move changes V̂,
its U is refitted and requantised: always after lowering V's bits, and after pruning V only where that lowers the
pair's error and the artifact still fits (see `_refresh_after_pruning`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

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
    action: str  # "lower_bits" | "prune" | "confirm" | "requantize"
    detail: str
    size: int
    predicted: bool = False  # `size` is a prediction (a "confirm" follows with the measured size)
    seconds: float = 0.0


class ArtifactSize(Protocol):
    """The artifact's bytes for a state of the quantised matrices: measured (slow, exact) or predicted (fast)."""

    def measure(self, quantized: dict[str, QuantizedMatrix]) -> int: ...

    def predict(self, quantized: dict[str, QuantizedMatrix]) -> int: ...

    def refine(self, quantized: dict[str, QuantizedMatrix]) -> None:
        """Re-anchor the prediction on a cheap estimate for this state (a sample), between measurements."""

    def entry_bytes(self, name: str, matrix: QuantizedMatrix) -> float:
        """Predicted compressed bytes of one matrix's entry (what lowering its bits can save from)."""


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
    plans: dict[str, MatrixPlan], quantized: dict[str, QuantizedMatrix], sizes: ArtifactSize,
) -> list[tuple[float, str, float]]:
    """(estimated damage per byte saved, name, compressed bytes saved) for every tensor above its bit floor,
    cheapest first. One bit of b saves about 1/b of the entry's compressed bytes, and its damage is 3× the current
    error (noise power ×4), so nothing is re-quantised here. A tensor that would save almost nothing (a matrix of
    zeros, as an initialised output projection) is no candidate: lowering it costs a re-quantisation for no bytes."""
    entries = {name: sizes.entry_bytes(name, matrix) for name, matrix in quantized.items()}
    negligible = 1e-4 * sum(entries.values())
    candidates = []
    for name, plan in plans.items():
        current = quantized[name]
        saved = entries[name] / current.bits
        if current.bits <= plan.min_bits or saved < negligible:
            continue
        candidates.append((3.0 * output_error(plan, current) / saved, name, saved))
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
    sizes: ArtifactSize,
    budget: int,
    requantize: Callable[[MatrixPlan, int], QuantizedMatrix],
) -> tuple[dict[str, QuantizedMatrix], list[FitAction], int, bool]:
    """(quantized, actions, final measured size, fits). `sizes` must be anchored (measured or estimated)."""
    actions: list[FitAction] = []
    size = sizes.predict(quantized)
    if size <= budget:  # predicted to fit as it is: measure (one pass of the compressor); no move, no action
        size = sizes.measure(quantized)
    while size > budget:
        quantized, moved = _lower_bits_until_predicted_fit(plans, quantized, sizes, budget, requantize, actions)
        if not moved:
            break
        size = _confirm(sizes, quantized, actions)
    if size <= budget:
        return quantized, actions, size, True
    prunes = prune_order(plans, quantized)
    if not prunes:
        size = sizes.measure(quantized)
        return quantized, actions, size, size <= budget
    everything = apply_prunes(quantized, prunes, len(prunes))
    if sizes.predict(everything) > budget:
        full = _confirm(sizes, everything, actions, f"all {len(prunes):,} ±1 values set to 0")
        if full > budget:
            return quantized, actions, min(size, full), False
    low, high = 0, len(prunes)  # predicted: size(low) > budget >= size(high)
    while True:
        started = time.perf_counter()
        while high - low > max(1, len(prunes) // 2000):
            middle = (low + high) // 2
            if sizes.predict(apply_prunes(quantized, prunes, middle)) <= budget:
                high = middle
            else:
                low = middle
        candidate = apply_prunes(quantized, prunes, high)
        actions.append(FitAction("prune", f"{high:,} of {len(prunes):,} ±1 values set to 0", sizes.predict(candidate),
                                 predicted=True, seconds=time.perf_counter() - started))
        size = _confirm(sizes, candidate, actions)
        if size <= budget or high == len(prunes):
            break
        low, high = high, len(prunes)  # optimistic: search again above, around the new anchor
    if size > budget:
        return quantized, actions, size, False
    quantized = candidate
    pruned = {name for name, _ in prunes[:high]}
    quantized, size = _refresh_after_pruning(plans, quantized, pruned, sizes, budget, requantize, actions, size)
    return quantized, actions, size, True


def _confirm(sizes: ArtifactSize, quantized: dict[str, QuantizedMatrix], actions: list[FitAction],
             detail: str = "measured") -> int:
    started = time.perf_counter()
    size = sizes.measure(quantized)
    actions.append(FitAction("confirm", detail, size, seconds=time.perf_counter() - started))
    return size


def _lower_bits_until_predicted_fit(
    plans: dict[str, MatrixPlan], quantized: dict[str, QuantizedMatrix], sizes: ArtifactSize, budget: int,
    requantize: Callable[[MatrixPlan, int], QuantizedMatrix], actions: list[FitAction],
) -> tuple[dict[str, QuantizedMatrix], bool]:
    """Lower the cheapest tensors by one bit, move by move, until the predicted size fits; (quantized, moved)."""
    predicted, moved = sizes.predict(quantized), False
    while predicted > budget:
        started = time.perf_counter()
        candidates = _lower_candidates(plans, quantized, sizes)
        if not candidates:
            break
        needed, picked = (predicted - budget) * 1.05, []
        for _, name, saved in candidates:
            picked.append(name)
            needed -= saved
            if needed <= 0:
                break
        for name in picked:
            quantized = {**quantized, name: requantize(plans[name], quantized[name].bits - 1)}
        # A kept U was fitted to the V̂ of the bits before: fit and requantise it to the V̂ now stored (its bits
        # unchanged, so the saving estimate holds).
        refreshed = _refreshed_factors(plans, quantized, set(picked), requantize)
        for u_name, (fresh, matrix) in refreshed.items():
            plans[u_name] = fresh
            quantized = {**quantized, u_name: matrix}
        sizes.refine(quantized)
        predicted, moved = sizes.predict(quantized), True
        names = ", ".join(f"{name}→{quantized[name].bits}b" for name in picked)
        if refreshed:
            names += f" ({', '.join(refreshed)} refitted to the new V)"
        actions.append(FitAction("lower_bits", names, predicted, predicted=True, seconds=time.perf_counter() - started))
    return quantized, moved


def _refresh_after_pruning(
    plans: dict[str, MatrixPlan], quantized: dict[str, QuantizedMatrix], pruned: set[str],
    sizes: ArtifactSize, budget: int,
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
    if sizes.predict(candidate) > budget:
        return quantized, size
    candidate_size = sizes.measure(candidate)
    if candidate_size > budget:
        return quantized, size
    for name, (fresh, _) in refreshed.items():
        plans[name] = fresh
    actions.append(FitAction("requantize", f"{', '.join(refreshed)} refitted to the pruned V", candidate_size))
    return candidate, candidate_size

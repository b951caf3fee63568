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

A pessimistic prediction lowers more than needed (measured at golf scale: the first anchor, from a sample, was 3%
high, and the fit ended at 15.54 MB for 16 MB). So once lowering bits has a measured fit, **bits are given back**:
tensors lowered during the fit get their earlier matrices again (kept, so nothing is re-quantised), most error
removed per byte first, while the measured size plus the bytes each lowering was estimated to save stays within
the budget less a margin; likewise a measured prune fit with room left searches again, from that measurement, for
fewer prunes. One more measurement confirms it; if it is over, the measured fit before it is the result.

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
    action: str  # "lower_bits" | "raise_bits" | "prune" | "confirm" | "revert" | "requantize"
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


@dataclass(frozen=True, eq=False)  # compared by identity: its matrices are tensors
class Lowering:
    """One tensor lowered by a move, with what it replaced: enough to undo it without re-quantising.

    `partners` are the kept Us refitted to this V̂ by the same move: (name, plan and matrix before, matrix after).
    The undo is valid only while the tensor and its partners still hold the move's matrices (compared by identity).
    """

    name: str
    before: QuantizedMatrix
    after: QuantizedMatrix
    partners: tuple[tuple[str, MatrixPlan, QuantizedMatrix, QuantizedMatrix], ...] = ()
    saved: float = 0.0  # estimated compressed bytes the lowering saved (what undoing it costs)

    def applies_to(self, quantized: dict[str, QuantizedMatrix]) -> bool:
        return quantized.get(self.name) is self.after and all(
            quantized.get(name) is after for name, _, _, after in self.partners)

    def undone(self, quantized: dict[str, QuantizedMatrix]) -> dict[str, QuantizedMatrix]:
        return {**quantized, self.name: self.before, **{name: before for name, _, before, _ in self.partners}}


GIVE_BACK_MARGIN = 0.0025  # of the budget: what a prediction anchored on a measurement may be off by (~40 KB at 16 MB)
# An undo is taken to cost this many times the bytes its lowering was estimated to save. Measured at golf scale
# (35.9M parameters, 16 MB): undoing 4→5-bit lowerings of trained-like weights cost 1.20× the estimate (the undos
# chosen first are those whose cost is most underestimated); of initialised weights, 1.003×.
GIVE_BACK_COST = 1.25
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


@dataclass(frozen=True)
class PruneOrder:
    """Every ±1 entry of the matrices, cheapest to zero first, held per tensor: for each, the entries' ranks in the
    global order (ascending) and their flat indices. The first `count` prunes of a tensor are then a prefix of its
    own list (a binary search), so applying any count costs only the entries it zeroes — at golf scale there are
    ~10M of them, too many for Python objects."""

    ranks: dict[str, Tensor]
    indices: dict[str, Tensor]
    total: int

    def counts(self, count: int) -> dict[str, int]:
        """How many of each tensor's entries the first `count` prunes zero (tensors with none left out)."""
        limit = torch.tensor([count], dtype=torch.int64)
        chosen = {name: int(torch.searchsorted(ranks, limit)) for name, ranks in self.ranks.items()}
        return {name: k for name, k in chosen.items() if k}

    def apply(self, quantized: dict[str, QuantizedMatrix], count: int) -> dict[str, QuantizedMatrix]:
        """A copy of `quantized` with the first `count` prunes applied."""
        result = dict(quantized)
        for name, k in self.counts(count).items():
            matrix = quantized[name]
            q = matrix.q.clone().flatten()
            q[self.indices[name][:k]] = 0
            result[name] = QuantizedMatrix(q.view_as(matrix.q), matrix.scale, matrix.bits, matrix.clip, matrix.error)
        return result


def prune_order(plans: dict[str, MatrixPlan], quantized: dict[str, QuantizedMatrix]) -> PruneOrder:
    """Every ±1 entry, ordered by its Hessian-weighted cost scale_row² · H_jj, the smallest first (ties by tensor
    order, then position)."""
    costs, owners, indices = [], [], []
    keys = list(plans)
    for index, name in enumerate(keys):
        matrix, plan = quantized[name], plans[name]
        ones = torch.nonzero(matrix.q.flatten().abs() == 1).flatten()
        if not ones.numel():
            continue
        rows, cols = ones // matrix.q.shape[1], ones % matrix.q.shape[1]
        h_diag = torch.diag(plan.hessian).float().clamp_min(0)
        costs.append(matrix.scale.float()[rows].square() * h_diag[cols])
        owners.append(torch.full_like(ones, index))
        indices.append(ones)
    if not costs:
        return PruneOrder({}, {}, 0)
    order = torch.argsort(torch.cat(costs), stable=True)
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(order.numel())
    owner, flat = torch.cat(owners), torch.cat(indices)
    ranks, positions = {}, {}
    for index in torch.unique(owner).tolist():
        mine = torch.nonzero(owner == index).flatten()
        mine = mine[torch.argsort(rank_of[mine])]
        ranks[keys[index]], positions[keys[index]] = rank_of[mine], flat[mine]
    return PruneOrder(ranks, positions, order.numel())


def fit_to_budget(
    plans: dict[str, MatrixPlan],
    quantized: dict[str, QuantizedMatrix],
    sizes: ArtifactSize,
    budget: int,
    requantize: Callable[[MatrixPlan, int], QuantizedMatrix],
) -> tuple[dict[str, QuantizedMatrix], list[FitAction], int, bool]:
    """(quantized, actions, final measured size, fits). `sizes` must be anchored (measured or estimated)."""
    actions: list[FitAction] = []
    history: list[Lowering] = []
    size = sizes.predict(quantized)
    if size <= budget:  # predicted to fit as it is: measure (one pass of the compressor); no move, no action
        size = sizes.measure(quantized)
    while size > budget:
        quantized, moved = _lower_bits_until_predicted_fit(plans, quantized, sizes, budget, requantize, actions,
                                                           history)
        if not moved:
            break
        size = _confirm(sizes, quantized, actions)
    if size <= budget:
        quantized, size = _give_back_bits(plans, quantized, size, sizes, budget, history, actions)
        return quantized, actions, size, True
    prunes = prune_order(plans, quantized)
    if not prunes.total:
        size = sizes.measure(quantized)
        return quantized, actions, size, size <= budget
    everything = prunes.apply(quantized, prunes.total)
    if sizes.predict(everything) > budget:
        full = _confirm(sizes, everything, actions, f"all {prunes.total:,} ±1 values set to 0")
        if full > budget:
            return quantized, actions, min(size, full), False
    # The measured size of the unpruned state, when the last action measured it: then each prune search's
    # measurement also gives `effect`, the measured change per predicted change, and the next search (from the new
    # measurement) scales its predictions by it. Measured at golf scale: zeros helped brotli 1.35× more than the
    # proxy predicted, both ways (pruning 3.6M ±1 values, and giving 0.9M of them back).
    anchor: int | None = size if actions and actions[-1].action == "confirm" else None
    effect = 1.0
    low, high, limit = 0, prunes.total, float(budget)  # predicted: size(low) > limit >= size(high)
    while True:
        started = time.perf_counter()
        high = _fewest_prunes(prunes, quantized, low, high, limit, sizes)
        candidate = prunes.apply(quantized, high)
        predicted = sizes.predict(candidate)
        actions.append(FitAction("prune", f"{high:,} of {prunes.total:,} ±1 values set to 0", predicted,
                                 predicted=True, seconds=time.perf_counter() - started))
        size = _confirm(sizes, candidate, actions)
        if anchor is not None and predicted != anchor:
            effect = min(max((size - anchor) / (predicted - anchor), 0.5), 2.0)
        anchor = size
        if size <= budget or high == prunes.total:
            break
        # Optimistic: search again above, from the new measurement.
        low, high, limit = high, prunes.total, size + (budget - size) / effect
    if size > budget:
        return quantized, actions, size, False
    if budget - size > GIVE_BACK_MARGIN * budget:  # pessimistic: fewer prunes, searched from the measured fit
        started = time.perf_counter()
        limit = size + (budget - GIVE_BACK_MARGIN * budget - size) / effect
        fewer = _fewest_prunes(prunes, quantized, 0, high, limit, sizes)
        if fewer < high:
            trial = prunes.apply(quantized, fewer)
            actions.append(FitAction("prune", f"fewer: {fewer:,} of {prunes.total:,} ±1 values set to 0",
                                     sizes.predict(trial), predicted=True, seconds=time.perf_counter() - started))
            measured = _confirm(sizes, trial, actions)
            if measured <= budget:
                candidate, high, size = trial, fewer, measured
            else:
                actions.append(FitAction("revert", "over the budget: the fit measured before is kept", size))
    quantized = candidate
    pruned = set(prunes.counts(high))
    quantized, size = _refresh_after_pruning(plans, quantized, pruned, sizes, budget, requantize, actions, size)
    return quantized, actions, size, True


def _fewest_prunes(prunes: PruneOrder, quantized: dict[str, QuantizedMatrix], low: int, high: int, limit: float,
                   sizes: ArtifactSize) -> int:
    """About the fewest prunes (to 1/2000 of them) predicted within `limit`, by binary search between `low`
    (predicted over, or 0) and `high` (predicted within)."""
    if low == 0 and sizes.predict(quantized) <= limit:
        return 0
    while high - low > max(1, prunes.total // 2000):
        middle = (low + high) // 2
        if sizes.predict(prunes.apply(quantized, middle)) <= limit:
            high = middle
        else:
            low = middle
    return high


def _confirm(sizes: ArtifactSize, quantized: dict[str, QuantizedMatrix], actions: list[FitAction],
             detail: str = "measured") -> int:
    started = time.perf_counter()
    size = sizes.measure(quantized)
    actions.append(FitAction("confirm", detail, size, seconds=time.perf_counter() - started))
    return size


def _lower_bits_until_predicted_fit(
    plans: dict[str, MatrixPlan], quantized: dict[str, QuantizedMatrix], sizes: ArtifactSize, budget: int,
    requantize: Callable[[MatrixPlan, int], QuantizedMatrix], actions: list[FitAction], history: list[Lowering],
) -> tuple[dict[str, QuantizedMatrix], bool]:
    """Lower the cheapest tensors by one bit, move by move, until the predicted size fits; (quantized, moved).
    Every tensor lowered is appended to `history`, with what it replaced and the bytes that saved."""
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
        before, before_plans = dict(quantized), dict(plans)
        # Each entry's bytes as estimated now, at the bits it leaves (the estimate's ratio is this state's).
        bytes_before = {name: sizes.entry_bytes(name, matrix) for name, matrix in quantized.items()}
        for name in picked:
            quantized = {**quantized, name: requantize(plans[name], quantized[name].bits - 1)}
        # A kept U was fitted to the V̂ of the bits before: fit and requantise it to the V̂ now stored (its bits
        # unchanged, so the saving estimate holds).
        refreshed = _refreshed_factors(plans, quantized, set(picked), requantize)
        for u_name, (fresh, matrix) in refreshed.items():
            plans[u_name] = fresh
            quantized = {**quantized, u_name: matrix}
        sizes.refine(quantized)
        for name in picked:
            if name in refreshed:  # a U lowered with its V: undone with that V (alone it would be stale)
                continue
            partners = tuple((u, before_plans[u], before[u], quantized[u])
                             for u in refreshed if plans[u].factor_of == name)
            # Bytes saved, each side estimated in its own state: the compressor's ratio to the proxy drifts with
            # the bits (measured at the `cpu` preset: an undo of 6→4 bits priced at the 4-bit ratio came out 35%
            # short), so an undo is priced with both estimates, not with the ratio of the state it starts from.
            saved = sum(bytes_before[entry] - sizes.entry_bytes(entry, quantized[entry])
                        for entry in (name, *(u for u, _, _, _ in partners)))
            history.append(Lowering(name, before[name], quantized[name], partners, saved))
        predicted, moved = sizes.predict(quantized), True
        names = ", ".join(f"{name}→{quantized[name].bits}b" for name in picked)
        if refreshed:
            names += f" ({', '.join(refreshed)} refitted to the new V)"
        actions.append(FitAction("lower_bits", names, predicted, predicted=True, seconds=time.perf_counter() - started))
    return quantized, moved


def _give_back_bits(
    plans: dict[str, MatrixPlan], quantized: dict[str, QuantizedMatrix], size: int, sizes: ArtifactSize,
    budget: int, history: list[Lowering], actions: list[FitAction],
) -> tuple[dict[str, QuantizedMatrix], int]:
    """Undo lowerings of this fit, most error removed per byte first, while the measured `size` plus what they
    cost (GIVE_BACK_COST × the bytes they saved) stays within the budget less GIVE_BACK_MARGIN; measured once. (quantized, size): the undone state
    if it measures within the budget, else the measured fit given."""
    started = time.perf_counter()
    room = budget - GIVE_BACK_MARGIN * budget - size
    candidate, undone, pending = quantized, [], list(history)
    while True:
        # A tensor lowered twice is raised one bit at a time: only the last lowering that still applies is open.
        best: tuple[float, Lowering] | None = None
        for move in pending:
            if not move.applies_to(candidate) or GIVE_BACK_COST * move.saved > room:
                continue
            plan = plans[move.name]
            value = (output_error(plan, move.after) - output_error(plan, move.before)) / max(move.saved, 1.0)
            if best is None or value > best[0]:
                best = (value, move)
        if best is None:
            break
        move = best[1]
        candidate, room = move.undone(candidate), room - GIVE_BACK_COST * move.saved
        pending.remove(move)
        undone.append(move)
    if not undone:
        return quantized, size
    names = ", ".join(f"{move.name}→{move.before.bits}b" for move in undone)
    expected = round(size + GIVE_BACK_COST * sum(move.saved for move in undone))
    actions.append(FitAction("raise_bits", names, expected, predicted=True, seconds=time.perf_counter() - started))
    measured = _confirm(sizes, candidate, actions)
    if measured > budget:
        actions.append(FitAction("revert", "over the budget: the fit measured before is kept", size))
        return quantized, size
    for move in undone:  # the raised Us go back to the plans fitted to the V̂ they were quantised against
        for name, plan, _, _ in move.partners:
            plans[name] = plan
    return candidate, measured


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

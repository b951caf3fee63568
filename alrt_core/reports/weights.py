"""Statistics of a model's weight matrices: spectra, conditioning, heavy tails and outlier rows/columns.

Definitions (σ₁ ≥ σ₂ ≥ … the singular values a layer holds; a factorised layer `U·V` of rank r holds r of them,
a dense one min(m, n)):

- effective rank: exp(H(p)) with pᵢ = σᵢ / Σσⱼ (the entropy of the normalised singular values; Roy & Vetterli).
  Reported also as a fraction of min(m, n). An exactly rank-k matrix has effective rank ≤ k.
- stable rank: Σσᵢ² / σ₁² (= ‖W‖_F² / ‖W‖₂²), ≤ the rank.
- condition number: σ₁ / σ_min over the singular values the layer holds (∞ when σ_min is 0).
- energy share: Σ_{i<k} σᵢ² / Σσᵢ² for the top 1 and the top ⌈min(m,n)/10⌉ components; rank90: the fewest
  components holding 90% of Σσ².
- kurtosis: excess kurtosis of the entries, E[(w−μ)⁴] / E[(w−μ)²]² − 3 (0 for Gaussian, −1.2 for uniform).
- row peak: max over rows i of max_j |wᵢⱼ| / RMS(row i), with the row index; column peak likewise per column.
- row (column) norm ratio: the largest row (column) RMS over the median, with its index: a whole row or input
  channel that is an outlier.

Spectra of factorised layers come from their factors (an r×r core after QR, `alrt_core.ranks.spectral`); the
entry statistics need the entries, so `U·V` is formed once per layer in float64 (at most a few MB per layer).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from alrt_core.json_values import json_safe
from alrt_core.model.gpt import GPT, PROJECTION_KINDS, layer_kind
from alrt_core.ranks.spectral import singular_values

ENERGY_TARGET = 0.9
_BLOCK = re.compile(r"blocks\.(\d+)\.")


def effective_rank(sigma: Tensor) -> float:
    """exp of the Shannon entropy of σ / Σσ; 0 for a zero matrix."""
    sigma = sigma.double().clamp_min(0)
    total = float(sigma.sum())
    if total <= 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def stable_rank(sigma: Tensor) -> float:
    """Σσ² / σ₁²; 0 for a zero matrix."""
    top = float(sigma.max()) if sigma.numel() else 0.0
    return float(sigma.double().square().sum()) / top**2 if top > 0 else 0.0


def condition_number(sigma: Tensor) -> float:
    """σ_max / σ_min over the given singular values (inf when the smallest is 0)."""
    if not sigma.numel():
        return math.inf
    smallest, largest = float(sigma.min()), float(sigma.max())
    return largest / smallest if smallest > 0 else math.inf


def energy_share(sigma: Tensor, k: int) -> float:
    """Share of Σσ² held by the k largest singular values."""
    energy = torch.sort(sigma.double().square(), descending=True).values
    total = float(energy.sum())
    return float(energy[:k].sum()) / total if total > 0 else 0.0


def rank_for_energy(sigma: Tensor, fraction: float = ENERGY_TARGET) -> int:
    """Fewest components whose σ² add up to at least `fraction` of Σσ²."""
    energy = torch.sort(sigma.double().square(), descending=True).values
    total = float(energy.sum())
    if total <= 0:
        return 0
    cumulative = torch.cumsum(energy, 0) / total
    return int((cumulative < fraction - 1e-12).sum()) + 1


def excess_kurtosis(values: Tensor) -> float:
    """E[(x−μ)⁴] / E[(x−μ)²]² − 3 over all entries (0 for a constant tensor)."""
    x = values.double().flatten()
    centred = x - x.mean()
    variance = float(centred.square().mean())
    return float(centred.pow(4).mean()) / variance**2 - 3.0 if variance > 0 else 0.0


def peak_ratio(matrix: Tensor, dim: int) -> tuple[float, int]:
    """(max over slices of max |w| / RMS of the slice, index of that slice); rows for dim=1, columns for dim=0."""
    w = matrix.double()
    rms = w.square().mean(dim=dim).sqrt()
    peak = w.abs().amax(dim=dim)
    ratio = torch.where(rms > 0, peak / rms.clamp_min(1e-300), torch.zeros_like(rms))
    index = int(ratio.argmax())
    return float(ratio[index]), index


def norm_ratio(matrix: Tensor, dim: int) -> tuple[float, int]:
    """(largest slice RMS / median slice RMS, its index); rows for dim=1, columns for dim=0. A zero matrix has no
    outlier (0); a mostly zero one with a few live slices has an infinite ratio."""
    rms = matrix.double().square().mean(dim=dim).sqrt()
    median, index = float(rms.median()), int(rms.argmax())
    if median > 0:
        return float(rms[index]) / median, index
    return (math.inf if float(rms[index]) > 0 else 0.0), index


@dataclass
class MatrixStats:
    name: str  # e.g. blocks.3.attn.q, or embed.weight
    block: int | None
    kind: str  # q k v o up down, or embed / head
    shape: tuple[int, int]  # (out, in)
    rank: int | None  # None: dense
    max_rank: int
    params: int
    sigma_max: float
    effective_rank: float
    stable_rank: float
    condition: float
    energy_top1: float
    energy_top10pct: float
    rank90: int
    kurtosis: float
    row_peak: float
    row_peak_index: int
    col_peak: float
    col_peak_index: int
    row_norm_ratio: float
    row_norm_index: int
    col_norm_ratio: float
    col_norm_index: int
    spectrum: list[float] = field(default_factory=list, repr=False)  # σ descending (for plots)
    quant_error: float | None = None  # artifacts: ‖Ŵ − W‖_F / ‖W‖_F of the layer against its source checkpoint

    @property
    def effective_rank_fraction(self) -> float:
        return self.effective_rank / self.max_rank

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["shape"] = list(self.shape)
        record["effective_rank_fraction"] = self.effective_rank_fraction
        record["condition"] = json_safe(self.condition)
        record["row_norm_ratio"] = json_safe(self.row_norm_ratio)
        record["col_norm_ratio"] = json_safe(self.col_norm_ratio)
        return record


def matrix_stats(name: str, *, weight: Tensor | None = None, u: Tensor | None = None, v: Tensor | None = None,
                 kind: str | None = None) -> MatrixStats:
    """Every statistic of one matrix, given dense (`weight`) or as factors (`u` m×r, `v` r×n)."""
    if weight is not None:
        dense = weight.detach().double()
        sigma = torch.linalg.svdvals(dense)
        rank, params = None, dense.numel()
    elif u is not None and v is not None:
        u64, v64 = u.detach().double(), v.detach().double()
        sigma = singular_values(u64, v64)  # from the factors: r values, no m×n SVD
        dense = u64 @ v64
        rank, params = u.shape[1], u.numel() + v.numel()
    else:
        raise ValueError("give weight, or both u and v")
    out_features, in_features = dense.shape
    max_rank = min(out_features, in_features)
    row_peak, row_index = peak_ratio(dense, dim=1)
    col_peak, col_index = peak_ratio(dense, dim=0)
    row_norm, row_norm_index = norm_ratio(dense, dim=1)
    col_norm, col_norm_index = norm_ratio(dense, dim=0)
    match = _BLOCK.match(name)
    return MatrixStats(
        name=name, block=int(match.group(1)) if match else None, kind=kind or layer_kind(name),
        shape=(out_features, in_features), rank=rank, max_rank=max_rank, params=params,
        sigma_max=float(sigma.max()) if sigma.numel() else 0.0,
        effective_rank=effective_rank(sigma), stable_rank=stable_rank(sigma), condition=condition_number(sigma),
        energy_top1=energy_share(sigma, 1), energy_top10pct=energy_share(sigma, math.ceil(max_rank / 10)),
        rank90=rank_for_energy(sigma), kurtosis=excess_kurtosis(dense),
        row_peak=row_peak, row_peak_index=row_index, col_peak=col_peak, col_peak_index=col_index,
        row_norm_ratio=row_norm, row_norm_index=row_norm_index, col_norm_ratio=col_norm, col_norm_index=col_norm_index,
        spectrum=[float(s) for s in torch.sort(sigma, descending=True).values],
    )


def model_matrix_stats(model: GPT) -> list[MatrixStats]:
    """Statistics of every projection (block × kind), then the embedding and an untied head."""
    stats = []
    for name, layer in model.projections().items():
        if layer.is_factorized:
            stats.append(matrix_stats(name, u=layer.U, v=layer.V))
        else:
            stats.append(matrix_stats(name, weight=layer.weight))
    stats.append(matrix_stats("embed.weight", weight=model.embed.weight, kind="embed"))
    if model.head is not None:
        stats.append(matrix_stats("head.weight", weight=model.head.weight, kind="head"))
    return stats


def kind_summary(stats: list[MatrixStats]) -> dict[str, dict[str, float | None]]:
    """Per projection kind across blocks: mean effective-rank fraction, median condition number, worst kurtosis."""
    summary: dict[str, dict[str, float | None]] = {}
    for kind in PROJECTION_KINDS:
        members = [s for s in stats if s.kind == kind]
        if not members:
            continue
        conditions = sorted(s.condition for s in members)
        median = conditions[len(conditions) // 2]
        summary[kind] = {
            "mean_effective_rank_fraction": sum(s.effective_rank_fraction for s in members) / len(members),
            "mean_stable_rank": sum(s.stable_rank for s in members) / len(members),
            "median_condition": json_safe(median),
            "max_kurtosis": max(s.kurtosis for s in members),
            "max_row_peak": max(s.row_peak for s in members),
        }
    return summary


# axis -> (index field, ratio field, smallest ratio that counts as an outlier). A Gaussian row of 1,024 entries
# peaks near 3.9 RMS and a uniform one at 1.7; row RMS spreads by a few percent around the median.
OUTLIER_AXES = {"row peak": ("row_peak_index", "row_peak", 6.0), "column peak": ("col_peak_index", "col_peak", 6.0),
                "row norm": ("row_norm_index", "row_norm_ratio", 3.0),
                "column norm": ("col_norm_index", "col_norm_ratio", 3.0)}


def recurring_outliers(stats: list[MatrixStats]) -> list[dict[str, Any]]:
    """Indices that are a kind's worst row/column, by at least the axis's outlier ratio, in at least half of the
    blocks (and at least 2): a channel or unit that is an outlier throughout the stack, not by chance in one layer."""
    findings = []
    for kind in PROJECTION_KINDS:
        members = [s for s in stats if s.kind == kind and s.block is not None]
        if len(members) < 2:
            continue
        for axis, (index_field, ratio_field, threshold) in OUTLIER_AXES.items():
            outliers = [s for s in members if getattr(s, ratio_field) >= threshold]
            counts = Counter(getattr(s, index_field) for s in outliers)
            for index, count in counts.most_common():
                if count < max(2, math.ceil(len(members) / 2)):
                    break
                hits = [s for s in outliers if getattr(s, index_field) == index]
                ratios = [getattr(s, ratio_field) for s in hits]
                findings.append({
                    "kind": kind, "axis": axis, "index": index, "blocks": count, "of_blocks": len(members),
                    "ratio_min": min(ratios), "ratio_max": json_safe(max(ratios)),
                    "which_blocks": sorted(s.block for s in hits),  # type: ignore[type-var]
                })
    return findings

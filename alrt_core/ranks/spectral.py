"""Spectral maths on factorised layers W = U·V, computed from the factors without materialising W.

- `frobenius_sq`: ‖U·V‖_F² = trace((UᵀU)(VVᵀ)) from two r×r Gram matrices, O((m+n)·r²).
- `top_singular_value`: σ_max by power iteration on the factors, warm-started from the previous vector.
- `stable_rank`: ‖W‖_F² / σ_max², a smooth, noise-robust lower bound of the rank.
- `singular_values`: every σ of U·V from an r×r core (for the `energy` policy and reports).
- `truncated_svd`: the best rank-r factors of U·V through QR of each factor (an r×r SVD in the middle),
  returned with the maps that carry the optimizer state into the new basis.
- `grow`: more components that leave the function unchanged at the moment of growth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def frobenius_sq(u: Tensor, v: Tensor) -> Tensor:
    """‖U·V‖_F² for U (m×r), V (r×n); both Grams are symmetric, so the trace of their product is Σ A∘B."""
    return ((u.T @ u) * (v @ v.T)).sum()


def top_singular_value(u: Tensor, v: Tensor, vector: Tensor | None = None, iterations: int = 4) -> tuple[Tensor, Tensor]:
    """(σ_max of U·V, the right singular vector estimate to warm-start the next call)."""
    x = torch.randn(v.shape[1], dtype=v.dtype, device=v.device) if vector is None else vector
    for _ in range(iterations):
        # Wᵀ W x = Vᵀ (Uᵀ (U (V x))): four thin matrix-vector products instead of one m×n matrix.
        x = v.T @ (u.T @ (u @ (v @ x)))
        x = x / x.norm().clamp_min(1e-30)
    sigma = (u @ (v @ x)).norm()
    return sigma, x


def singular_values(u: Tensor, v: Tensor) -> Tensor:
    """All singular values of U·V (descending) from the r×r core of the factors' QR decompositions."""
    work = torch.promote_types(u.dtype, torch.float32)
    _, r_u = torch.linalg.qr(u.to(work))
    _, r_v = torch.linalg.qr(v.to(work).T)
    return torch.linalg.svdvals(r_u @ r_v.T)


def stable_rank(u: Tensor, v: Tensor, vector: Tensor | None = None, iterations: int = 4) -> tuple[float, Tensor]:
    """(‖U·V‖_F² / σ_max², the warm-start vector). A zero matrix has stable rank 0."""
    sigma, vector = top_singular_value(u.float(), v.float(), vector, iterations)
    if sigma <= 0:
        return 0.0, vector
    return float(frobenius_sq(u.float(), v.float()) / sigma.square()), vector


@dataclass(frozen=True)
class Resize:
    """New factors plus the linear maps of the change: U_new = U·a (on the kept subspace), V_new = b·V.

    Gradients (and so momentum, a sum of gradients) transform the other way round: for a fixed gradient G of W,
    ∂L/∂U_new = G·V_newᵀ = (∂L/∂U)·bᵀ and ∂L/∂V_new = U_newᵀ·G = aᵀ·(∂L/∂V).
    """

    u: Tensor
    v: Tensor
    a: Tensor  # r_old × r_new
    b: Tensor  # r_new × r_old

    def project_u_state(self, state_u: Tensor) -> Tensor:
        return state_u @ self.b.T.to(state_u.dtype)

    def project_v_state(self, state_v: Tensor) -> Tensor:
        return self.a.T.to(state_v.dtype) @ state_v


def truncated_svd(u: Tensor, v: Tensor, rank: int) -> tuple[Resize, Tensor]:
    """Best rank-`rank` factors of U·V with the sqrt split, and all singular values of U·V.

    U = Q_u·R_u and Vᵀ = Q_v·R_v give U·V = Q_u·(R_u·R_vᵀ)·Q_vᵀ, so only the r×r core needs an SVD.
    """
    work = torch.promote_types(u.dtype, torch.float32)  # at least fp32 for the decompositions
    q_u, r_u = torch.linalg.qr(u.to(work))
    q_v, r_v = torch.linalg.qr(v.to(work).T)
    p, s, qh = torch.linalg.svd(r_u @ r_v.T)
    keep = min(rank, s.numel())
    root = s[:keep].sqrt()
    new_u = (q_u @ p[:, :keep]) * root
    new_v = root[:, None] * (qh[:keep] @ q_v.T)
    # U_new = U·R_u⁻¹·P·√S and V_new = √S·Qᵀ·R_v⁻ᵀ·V; pinv keeps this defined when a factor is rank-deficient.
    a = torch.linalg.pinv(r_u) @ p[:, :keep] * root
    b = root[:, None] * qh[:keep] @ torch.linalg.pinv(r_v).T
    return Resize(new_u.to(u.dtype), new_v.to(v.dtype), a, b), s


def grow(u: Tensor, v: Tensor, extra: int, scale: float = 1e-3, generator: torch.Generator | None = None) -> Resize:
    """Append `extra` components: zero columns in U and small random rows in V, so U·V is unchanged now while
    the new columns of U still receive gradient (through the new rows of V)."""
    rank = u.shape[1]
    new_rows = torch.randn(extra, v.shape[1], generator=generator, dtype=torch.float64).to(v) * scale
    new_u = torch.cat((u, u.new_zeros(u.shape[0], extra)), dim=1)
    new_v = torch.cat((v, new_rows), dim=0)
    eye = torch.eye(rank, rank + extra, dtype=u.dtype, device=u.device)
    return Resize(new_u, new_v, a=eye, b=eye.T)

"""Muon: momentum SGD whose matrix updates are orthogonalised by a Newton–Schulz iteration.

Used for every projection matrix, including both factors `U` and `V` of factorised layers. Under
torch.distributed the orthogonalisation of the parameters is split across ranks round-robin and the updates are
summed back, so each rank does 1/world of the Newton–Schulz work and all end with identical weights.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from alrt_core.precision import bf16_is_fast

# Quintic Newton–Schulz coefficients tuned for fast convergence of singular values towards 1 (Jordan et al.).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


# A matrix at least this many times wider than tall is orthogonalised through its Gram matrix (fp32 only). Per
# step the plain iteration costs 4·m²·n + 2·m³ FLOPs for m×n (m ≤ n); the Gram form costs 4·m²·n once plus 8·m³ per
# step, which is less from n ≈ 1.9·m on (an MLP's 4:1 matrices: 1.6x fewer FLOPs, ~2x faster measured).
GRAM_MIN_ASPECT = 2.0


def orthogonalize(matrix: Tensor, steps: int = 5, eps: float = 1e-7, bf16: bool | None = None) -> Tensor:
    """Approximately U·Vᵀ of the SVD of `matrix` (or of each matrix of a stack `[..., m, n]`), in bf16 when `bf16`
    (None: where it is measured to be faster)."""
    if bf16 is None:
        bf16 = bf16_is_fast(matrix.device.type)
    x = matrix.bfloat16() if bf16 else matrix.float()
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    # bf16 keeps the plain form: the Gram form's left factor grows like 1/σ for small singular values, which
    # bf16's 8-bit mantissa cannot carry.
    wide = x.shape[-1] >= GRAM_MIN_ASPECT * x.shape[-2]
    x = _gram_newton_schulz(x, steps) if wide and not bf16 else _newton_schulz(x, steps)
    return x.mT if transposed else x


def _newton_schulz(x: Tensor, steps: int) -> Tensor:
    """X ← a·X + (b·XXᵀ + c·(XXᵀ)²)·X, `steps` times, for X of shape [..., m, n] with m ≤ n."""
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def _gram_newton_schulz(x: Tensor, steps: int) -> Tensor:
    """The same iterates as `_newton_schulz`, computed on m×m matrices only. Every iterate is X_k = Q_k·X_0 with
    Q_{k+1} = P_k·Q_k and P_k = a·I + b·A_k + c·A_k², where A_k = X_k·X_kᵀ = P_{k-1}·A_{k-1}·P_{k-1} (P symmetric):
    one m×n product at the start (A_0) and one at the end (Q·X_0)."""
    a, b, c = NS_COEFFICIENTS
    gram = x @ x.mT
    identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    left: Tensor | None = None
    for _ in range(steps):
        poly = a * identity + b * gram + c * gram @ gram
        left = poly if left is None else poly @ left
        gram = poly @ gram @ poly
    return x if left is None else left @ x


def orthogonalize_all(updates: list[Tensor], steps: int, bf16: bool | None) -> list[Tensor]:
    """`orthogonalize` of each matrix, with matrices of one shape stacked into one batched iteration: a model has
    a few shapes and many matrices of each (every block's Q, every block's MLP up), and one batched matmul per
    shape and step costs less than a small matmul per matrix. A tall matrix joins the wide ones of its transposed
    shape (MLP up with MLP down): the iteration commutes with transposition."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, update in enumerate(updates):
        rows, cols = update.shape[-2:]
        by_shape.setdefault((*update.shape[:-2], min(rows, cols), max(rows, cols)), []).append(index)
    result: list[Tensor] = [updates[0]] * len(updates)
    for indices in by_shape.values():
        if len(indices) == 1:
            result[indices[0]] = orthogonalize(updates[indices[0]], steps, bf16=bf16)
            continue
        tall = [updates[i].shape[-2] > updates[i].shape[-1] for i in indices]
        stacked = orthogonalize(torch.stack([u.mT if t else u for u, t in zip((updates[i] for i in indices), tall,
                                                                               strict=True)]), steps, bf16=bf16)
        for position, (index, was_tall) in enumerate(zip(indices, tall, strict=True)):
            result[index] = stacked[position].mT if was_tall else stacked[position]
    return result


def normalize_rows(matrix: Tensor, eps: float = 1e-7) -> Tensor:
    """Every row scaled to unit L2 norm (MuonEq-R). Newton–Schulz treats the update as one matrix, so rows with a
    large gradient dominate its spectrum; equalising them first gives every output unit a comparable step."""
    return matrix / matrix.float().norm(dim=-1, keepdim=True).clamp_min(eps).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, optional row normalisation (MuonEq-R), Newton–Schulz orthogonalised update, decoupled
    weight decay."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.95,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        row_normalize: bool = False,
        ns_bf16: bool | None = None,
    ) -> None:
        """`ns_bf16`: Newton–Schulz in bf16 (True), fp32 (False), or as measured fastest on the device (None)."""
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, weight_decay=weight_decay,
                                      nesterov=nesterov, row_normalize=row_normalize, ns_bf16=ns_bf16))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=torch.float32)
            offsets, offset = [], 0
            owned: list[int] = []
            raw: list[Tensor] = []
            for index, p in enumerate(params):
                offsets.append(offset)
                offset += p.numel()
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                # Every rank keeps the full momentum (cheap, gradients are already identical) so that rank 0's
                # checkpoint holds the whole optimizer state; only the orthogonalisation is split.
                buffer.mul_(group["momentum"]).add_(p.grad)
                if index % world == rank:
                    update = p.grad.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
                    if group.get("row_normalize", False):  # absent in optimizer states saved before MuonEq-R
                        update = normalize_rows(update)
                    owned.append(index)
                    raw.append(update)
            for index, update in zip(owned, orthogonalize_all(raw, group["ns_steps"], group.get("ns_bf16")), strict=True):
                p = params[index]
                # Orthogonal updates of tall matrices have smaller entries; rescale so per-entry size matches.
                # For a thin factor U (m×r) that factor is √(m/r), which makes the product's update
                # dU·V + U·dV several times a dense matrix's; `aspect_scaling=False` leaves factors unscaled.
                if group.get("aspect_scaling", True):
                    update = update * max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                flat[offsets[index] : offsets[index] + p.numel()] = update.flatten().float()
            if world > 1:
                dist.all_reduce(flat)
            offset = 0
            for p in params:
                if group["weight_decay"]:
                    p.mul_(1.0 - group["lr"] * group["weight_decay"])
                p.add_(flat[offset : offset + p.numel()].view_as(p), alpha=-group["lr"])
                offset += p.numel()
        return loss

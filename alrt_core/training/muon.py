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


def orthogonalize(matrix: Tensor, steps: int = 5, eps: float = 1e-7, bf16: bool | None = None) -> Tensor:
    """Approximately U·Vᵀ of the SVD of `matrix` (or of each matrix of a stack `[..., m, n]`), in bf16 when `bf16`
    (None: where it is measured to be faster)."""
    a, b, c = NS_COEFFICIENTS
    if bf16 is None:
        bf16 = bf16_is_fast(matrix.device.type)
    x = matrix.bfloat16() if bf16 else matrix.float()
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if transposed else x


def orthogonalize_all(updates: list[Tensor], steps: int, bf16: bool | None) -> list[Tensor]:
    """`orthogonalize` of each matrix, with matrices of one shape stacked into one batched iteration: a model has
    a few shapes and many matrices of each (every block's Q, every block's MLP up), and one batched matmul per
    shape and step costs less than a small matmul per matrix."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, update in enumerate(updates):
        by_shape.setdefault(tuple(update.shape), []).append(index)
    result: list[Tensor] = [updates[0]] * len(updates)
    for indices in by_shape.values():
        if len(indices) == 1:
            result[indices[0]] = orthogonalize(updates[indices[0]], steps, bf16=bf16)
            continue
        stacked = orthogonalize(torch.stack([updates[i] for i in indices]), steps, bf16=bf16)
        for position, index in enumerate(indices):
            result[index] = stacked[position]
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

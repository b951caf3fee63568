"""Resizing a factorised layer in place while training, with its optimizer state carried into the new basis.

The layer gets new Parameter objects of the new shapes (autograd caches a leaf's shape, so swapping `.data` is
not enough); each optimizer's param groups are pointed at them and every per-parameter state tensor is projected
with the resize's maps (`project`) or restarted at zero (`reset`, the older behaviour kept for comparison).
Wrappers that cache parameters or shapes (DDP buckets, compiled graphs, EMA) must be rebuilt by the caller.
"""

from __future__ import annotations

import math
import typing

import torch

from alrt_core.config import OnResize, ResizeMethod
from alrt_core.model.factorized import FactorizedLinear, sqrt_split_svd
from alrt_core.ranks.spectral import Resize, grow, truncated_svd

RESIZE_METHODS: tuple[ResizeMethod, ...] = typing.get_args(ResizeMethod)
STATE_POLICIES: tuple[OnResize, ...] = typing.get_args(OnResize)


def _truncate(u: torch.Tensor, v: torch.Tensor, rank: int) -> Resize:
    """Keep the first `rank` components as they are (no re-orthogonalisation)."""
    eye = torch.eye(u.shape[1], rank, dtype=u.dtype, device=u.device)
    return Resize(u[:, :rank].clone(), v[:rank].clone(), a=eye, b=eye.T)


SECOND_MOMENT_KEYS = ("exp_avg_sq", "max_exp_avg_sq")


def _carry_state(key: str, value: torch.Tensor, project, new: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Momentum (Muon's buffer, Adam's exp_avg) is a sum of gradients, so the gradient map carries it exactly.
    A second moment is not linear in the gradients; its root (a gradient scale) is carried instead and squared,
    which keeps it non-negative and of the right size (an approximation; factors train with Muon by default)."""
    if key in SECOND_MOMENT_KEYS:
        return project(value.sqrt()).square().contiguous()
    return project(value).contiguous()


@torch.no_grad()
def resize_layer(
    layer: FactorizedLinear,
    new_rank: int,
    optimizers: list[torch.optim.Optimizer],
    *,
    method: ResizeMethod = "svd",
    on_resize: OnResize = "project",
    generator: torch.Generator | None = None,
) -> Resize | None:
    """Change `layer` to `new_rank` (shrink by SVD or truncation, grow with function-preserving components).

    Returns the change's maps (`U' = U·a`, `V' = b·V`), which every other copy of the layer (the weight EMA, the
    SWA mean) must follow with `follow_resize`, or None when the rank was already `new_rank`."""
    if not layer.is_factorized:
        raise ValueError("only factorised layers can be resized")
    if method not in RESIZE_METHODS or on_resize not in STATE_POLICIES:
        raise ValueError(f"method must be one of {RESIZE_METHODS}, on_resize one of {STATE_POLICIES}")
    if not 1 <= new_rank <= layer.max_rank:
        raise ValueError(f"rank {new_rank} outside [1, {layer.max_rank}]")
    u_param, v_param = layer.U, layer.V
    assert u_param is not None and v_param is not None
    old_rank = u_param.shape[1]
    if new_rank == old_rank:
        return None
    if new_rank > old_rank:
        resize = grow(u_param.data, v_param.data, new_rank - old_rank, generator=generator)
    elif method == "svd":
        resize, _ = truncated_svd(u_param.data, v_param.data, new_rank)
    else:
        resize = _truncate(u_param.data, v_param.data, new_rank)
    new_u = torch.nn.Parameter(resize.u.to(u_param.dtype).contiguous())
    new_v = torch.nn.Parameter(resize.v.to(v_param.dtype).contiguous())
    layer.U, layer.V = new_u, new_v
    for optimizer in optimizers:
        for old, new, project in ((u_param, new_u, resize.project_u_state), (v_param, new_v, resize.project_v_state)):
            for group in optimizer.param_groups:
                group["params"] = [new if p is old else p for p in group["params"]]
            state = optimizer.state.pop(old, None)
            if not state:
                continue
            for key, value in list(state.items()):
                if torch.is_tensor(value) and value.dim() == 2:
                    state[key] = _carry_state(key, value, project, new) if on_resize == "project" else torch.zeros_like(new)
                # step counters and scalars carry over unchanged
            optimizer.state[new] = state
    return resize


@torch.no_grad()
def follow_resize(weights: dict[str, torch.Tensor], layer: str, resize: Resize) -> None:
    """Move another copy of a resized layer (in a weight dict: the EMA shadow, the SWA mean) by the live layer's own
    maps: `U_copy ← U_copy·a`, `V_copy ← b·V_copy`. SVD factors are fixed only up to sign and rotation, so a copy
    re-decomposed on its own would no longer match the live factors column for column, and every later average
    `d·copy + (1−d)·live` would mix unrelated components. With the live maps, column j of the copy stays column j
    of the live layer (growth gives the copy zero columns and rows, so its function is unchanged)."""
    u, v = weights[f"{layer}.U"], weights[f"{layer}.V"]
    weights[f"{layer}.U"], weights[f"{layer}.V"] = u @ resize.a.to(u), resize.b.to(v) @ v


@torch.no_grad()
def factorize_layer(layer: FactorizedLinear, rank: int, optimizers: list[torch.optim.Optimizer],
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Turn a dense layer into `U·V` at `rank` (the sqrt split of W's truncated SVD), in place; returns the new V.

    The optimizer state of W is carried into both factors by the gradient maps of `W = U·V` (`G_U = G·Vᵀ`,
    `G_V = Uᵀ·G`): momentum is a sum of gradients, so it maps exactly; a second moment maps by its root. The new
    parameters join the group named "factor" of an optimizer that has one (Muon's factor group), else W's group.
    At `rank = min(m, n)` the layer computes the same function as before (up to float error). A W that is still
    exactly zero (a zero-initialised output projection before any step) has no singular vectors to keep: it starts
    as a zero-initialised factorised layer does, `U = 0` and a random `V` (from `generator`), since `U = V = 0`
    would receive zero gradient in both factors and stay dead."""
    if layer.is_factorized:
        raise ValueError("the layer is already factorised")
    if not 1 <= rank <= layer.max_rank:
        raise ValueError(f"rank {rank} outside [1, {layer.max_rank}]")
    weight = layer.weight
    assert weight is not None
    if torch.count_nonzero(weight.data) == 0:
        bound = 1.0 / math.sqrt(layer.in_features)
        u = torch.zeros(layer.out_features, rank)
        v = torch.rand(rank, layer.in_features, generator=generator).mul_(2 * bound).sub_(bound)
    else:
        u, v = sqrt_split_svd(weight.data, rank)
    new_u = torch.nn.Parameter(u.to(weight.dtype).contiguous())
    new_v = torch.nn.Parameter(v.to(weight.dtype).contiguous())
    layer.weight, layer.U, layer.V = None, new_u, new_v
    for optimizer in optimizers:
        groups = [group for group in optimizer.param_groups if any(p is weight for p in group["params"])]
        if not groups:
            continue
        groups[0]["params"] = [p for p in groups[0]["params"] if p is not weight]
        target = next((group for group in optimizer.param_groups if group.get("name") == "factor"), groups[0])
        target["params"] = [*target["params"], new_u, new_v]
        state = optimizer.state.pop(weight, None)
        if not state:
            continue
        for new, project in ((new_u, lambda m: m @ new_v.T.to(m.dtype)), (new_v, lambda m: new_u.T.to(m.dtype) @ m)):
            carried = {key: _carry_state(key, value, project, new) if torch.is_tensor(value) and value.dim() == 2
                       else value for key, value in state.items()}
            optimizer.state[new] = carried
    return new_v.detach()


@torch.no_grad()
def follow_factorization(weights: dict[str, torch.Tensor], layer: str, v: torch.Tensor) -> None:
    """Another copy of a layer just factorised (EMA shadow, SWA mean): its dense `W_copy` becomes
    `U_copy = W_copy·V⁺` with the live `V`, so `U_copy·V` is `W_copy` on the live layer's kept input subspace and
    the copy's columns match the live factors' from the start."""
    dense = weights.pop(f"{layer}.weight")
    v = v.to(dense)
    weights[f"{layer}.U"] = dense @ torch.linalg.pinv(v)
    weights[f"{layer}.V"] = v.clone()

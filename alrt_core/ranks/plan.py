"""Static parts of the rank policies: starting ranks, per-kind ranks, the `schedule` anneal and the `energy` rank.

The break-even rank m·n/(m+n) is where U·V costs as many parameters as the dense W; ALRT starts there by default,
so the factorised model begins no larger (and no slower) than the dense one and the controller moves from there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alrt_core.config import ModelConfig, RankConfig
from alrt_core.errors import UserError
from alrt_core.model.gpt import PROJECTION_KINDS, layer_name, projection_shape

# Shorthands accepted in rank.kinds besides the six kinds themselves.
KIND_GROUPS = {"attn": ("q", "k", "v", "o"), "mlp": ("up", "down"), "qk": ("q", "k")}


def break_even_rank(out_features: int, in_features: int) -> int:
    return max(1, (out_features * in_features) // (out_features + in_features))


def parse_kind_ranks(text: str | None) -> dict[str, int]:
    """`"q=16,k=16,mlp=128"` -> {"q": 16, "k": 16, "up": 128, "down": 128}."""
    ranks: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        kind, sep, value = item.partition("=")
        kinds = KIND_GROUPS.get(kind.strip(), (kind.strip(),))
        if not sep or any(k not in PROJECTION_KINDS for k in kinds) or not value.strip().isdigit() or int(value) < 1:
            raise UserError(
                f"bad rank.kinds entry {item!r}: expected kind=rank with kind in {', '.join(PROJECTION_KINDS)}, "
                f"attn, mlp or qk"
            )
        ranks.update({k: int(value) for k in kinds})
    return ranks


def initial_layer_ranks(model: ModelConfig, rank: RankConfig) -> dict[str, int | None]:
    """Every projection's starting rank (None = dense) for a new run."""
    per_kind = parse_kind_ranks(rank.kinds)
    ranks: dict[str, int | None] = {}
    for index in range(model.num_layers):
        for kind in PROJECTION_KINDS:
            name = layer_name(index, kind)
            if rank.policy == "dense" or rank.dense_warmup_frac > 0:  # a dense warm start factorises later
                ranks[name] = None
                continue
            out_features, in_features = projection_shape(model, kind)
            start = per_kind.get(kind, rank.init or break_even_rank(out_features, in_features))
            ranks[name] = max(1, min(start, out_features, in_features))
    return ranks


def schedule_rank(step: int, start: int, final: int, warmup_steps: int, anneal_steps: int) -> int:
    """The `schedule` policy's rank at `step`: `start` until warm-up ends, then linear to `final` over the anneal."""
    progress = min(1.0, max(0.0, (step - warmup_steps) / anneal_steps))
    return round(start + (final - start) * progress)


def energy_rank(singular_values: Tensor, fraction: float) -> int:
    """Smallest k with Σ_{i<k} σᵢ² ≥ fraction · Σ σᵢ² (singular values in descending order)."""
    energy = singular_values.double().square()
    total = float(energy.sum())
    if total <= 0:
        return 1
    kept = torch.cumsum(energy, 0) / total
    return min(int(torch.searchsorted(kept, torch.tensor(fraction - 1e-12, dtype=kept.dtype))) + 1, energy.numel())


def ordered_penalty_weights(rank: int, device: torch.device | None = None) -> Tensor:
    """wᵢ = (i+1)/r: later components pay more, so the penalty squeezes the tail and keeps the order."""
    return torch.arange(1, rank + 1, dtype=torch.float32, device=device) / rank


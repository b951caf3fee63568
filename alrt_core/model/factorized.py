"""Factorised linear layer: `y = x · (U·V)ᵀ` with a current rank r, or a dense `y = x · Wᵀ` when rank is None.

Every attention and MLP projection of the GPT is one of these, so the rank controller can resize any of them
(`set_factors`) while training, and checkpoints record the rank of each layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alrt_core.model.fake_quant import fake_quantize


class FactorizedLinear(nn.Module):
    """A bias-free linear map stored either dense (`weight`, out×in) or as factors `U` (out×r) and `V` (r×in)."""

    def __init__(self, in_features: int, out_features: int, rank: int | None, *, zero_init: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.zero_init = zero_init
        # Late QAT (set by the trainer, not saved): while training, the forward pass fake-quantises the stored
        # weights (W, or U and V as the artifact may keep them) to this many bits with a straight-through gradient.
        self.fake_quant_bits: int | None = None
        if rank is None:
            self.weight: nn.Parameter | None = nn.Parameter(torch.empty(out_features, in_features))
            self.U: nn.Parameter | None = None
            self.V: nn.Parameter | None = None
        else:
            if not 1 <= rank <= min(in_features, out_features):
                raise ValueError(f"rank must be in [1, {min(in_features, out_features)}], got {rank}")
            self.weight = None
            self.U = nn.Parameter(torch.empty(out_features, rank))
            self.V = nn.Parameter(torch.empty(rank, in_features))
        self.reset_parameters()

    @property
    def is_factorized(self) -> bool:
        return self.U is not None

    @property
    def rank(self) -> int | None:
        return None if self.U is None else self.U.shape[1]

    @property
    def max_rank(self) -> int:
        return min(self.in_features, self.out_features)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # The same distribution as nn.Linear's default, so dense and factorised models start comparably.
        bound = 1.0 / math.sqrt(self.in_features)
        if self.weight is not None:
            if self.zero_init:
                self.weight.zero_()
            else:
                self.weight.uniform_(-bound, bound)
            return
        assert self.U is not None and self.V is not None
        rank = self.U.shape[1]
        if self.zero_init:
            # U = 0 makes the layer start as the zero map while V still passes gradient to U.
            self.U.zero_()
            self.V.uniform_(-bound, bound)
            return
        dense = torch.empty(self.out_features, self.in_features).uniform_(-bound, bound)
        u, v = sqrt_split_svd(dense, rank)
        self.U.copy_(u)
        self.V.copy_(v)

    def effective_weight(self) -> Tensor:
        """The dense out×in matrix this layer applies (materialised; for export and tests, not the hot path)."""
        if self.weight is not None:
            return self.weight
        assert self.U is not None and self.V is not None
        return self.U @ self.V

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _stored(self, weight: Tensor) -> Tensor:
        if self.fake_quant_bits is not None and self.training:
            return fake_quantize(weight, self.fake_quant_bits)
        return weight

    def forward(self, x: Tensor) -> Tensor:
        if self.weight is not None:
            return F.linear(x, self._stored(self.weight))
        assert self.U is not None and self.V is not None
        return F.linear(F.linear(x, self._stored(self.V)), self._stored(self.U))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank if self.is_factorized else 'dense'}"


def sqrt_split_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-r approximation of `matrix` as U·V with the singular values split evenly: U=P·√S, V=√S·Qᵀ."""
    p, s, qh = torch.linalg.svd(matrix.float(), full_matrices=False)
    root = s[:rank].sqrt()
    return p[:, :rank] * root, root[:, None] * qh[:rank]

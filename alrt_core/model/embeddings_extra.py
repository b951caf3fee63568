"""Optional token-identity features of the embedding stream: BigramHash, SmearGate and value embeddings.

Each reads the current token and (BigramHash, SmearGate) the previous one. A previous token is "none" (-1) at the
start of the context and wherever the current token is BOS, so no feature mixes information across a document
boundary, and a KV-cached call sees the same previous tokens as a full recomputation (the cache keeps the token
history, see `previous_tokens`). BigramHash and SmearGate share one call, `PreviousTokenFeature`, so the model's
input stage applies whichever are on in turn.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor, nn

NO_TOKEN = -1
# Odd multipliers for the bigram hash (any large odd constants spread consecutive ids over the table).
HASH_CURRENT, HASH_PREVIOUS = 36313, 27191


def previous_tokens(input_ids: Tensor, before: Tensor | None, bos_id: int) -> Tensor:
    """(batch, time) id of each position's previous token within its document, NO_TOKEN where there is none.

    `before` holds each row's token just before `input_ids` (from the KV cache), or None at the context start."""
    first = torch.full_like(input_ids[:, :1], NO_TOKEN) if before is None else before[:, None].to(input_ids.dtype)
    previous = torch.cat((first, input_ids[:, :-1]), dim=1)
    return previous.masked_fill(input_ids == bos_id, NO_TOKEN)


class PreviousTokenFeature(Protocol):
    def __call__(self, x: Tensor, input_ids: Tensor, previous: Tensor, embed: nn.Embedding) -> Tensor:
        """The embedding stream x (batch, time, model_dim) with the feature of each (previous, current) pair added;
        `embed` is the model's token embedding."""
        ...


class BigramHash(nn.Module):
    """`x + scale · proj(table[hash(previous, current)])`: a hashed bigram table; the last row stands for "no
    previous"."""

    def __init__(self, rows: int, dim: int, model_dim: int, scale_init: float) -> None:
        super().__init__()
        self.rows = rows
        self.table = nn.Embedding(rows, dim)
        self.proj = nn.Linear(dim, model_dim, bias=False)
        self.scale = nn.Parameter(torch.full((1,), float(scale_init)))
        with torch.no_grad():
            # Zero table: the feature starts as a no-op while the projection (random) still passes it gradient.
            self.table.weight.zero_()
            self.proj.weight.uniform_(-1.0 / math.sqrt(dim), 1.0 / math.sqrt(dim))

    def bucket(self, input_ids: Tensor, previous: Tensor) -> Tensor:
        mixed = torch.bitwise_xor(HASH_CURRENT * input_ids, HASH_PREVIOUS * previous.clamp(min=0)) % (self.rows - 1)
        return torch.where(previous == NO_TOKEN, torch.full_like(mixed, self.rows - 1), mixed)

    def forward(self, x: Tensor, input_ids: Tensor, previous: Tensor, embed: nn.Embedding) -> Tensor:
        hashed = self.proj(self.table(self.bucket(input_ids, previous)))
        return x + self.scale.to(hashed.dtype) * hashed


class SmearGate(nn.Module):
    """`x_t + λ·sigmoid(W·x_t[:dims])·e_prev`: a gated share of the previous token's embedding (none at a BOS)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.dims = dims
        self.gate = nn.Linear(dims, 1, bias=False)
        self.lam = nn.Parameter(torch.zeros(1))
        with torch.no_grad():
            self.gate.weight.zero_()  # with λ = 0 the gate starts as the identity

    def forward(self, x: Tensor, input_ids: Tensor, previous: Tensor, embed: nn.Embedding) -> Tensor:
        previous_embedded = embed(previous.clamp(min=0))
        gate = self.lam.to(x.dtype) * torch.sigmoid(self.gate(x[..., : self.dims]))
        gate = gate.masked_fill((previous == NO_TOKEN)[..., None], 0.0)
        return x + gate * previous_embedded


class ValueEmbedding(nn.Module):
    """`proj(table[token])` of width num_kv_heads·head_dim, shared by the blocks that add it to their V (each with
    its own learned scale, held by the block's attention)."""

    def __init__(self, vocab_size: int, dim: int, kv_dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, dim)
        self.proj = nn.Linear(dim, kv_dim, bias=False)
        with torch.no_grad():
            self.table.weight.normal_(0.0, 0.01)
            self.proj.weight.uniform_(-1.0 / math.sqrt(dim), 1.0 / math.sqrt(dim))

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.proj(self.table(input_ids))

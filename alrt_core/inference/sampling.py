"""Choosing the next token: temperature (0 = greedy), top-k, top-p, repetition penalty, seeded generators."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alrt_core.errors import UserError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.8
    top_k: int = 50  # 0 disables
    top_p: float = 1.0  # 1 disables
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the context (CTRL-style)
    seed: int | None = None

    def validate(self) -> None:
        if self.temperature < 0:
            raise UserError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise UserError(f"--repetition-penalty must be > 0, got {self.repetition_penalty}")


def seeded_generator(seed: int | None, like: Tensor) -> torch.Generator | None:
    """A generator seeded with `seed` on the device of `like`, the tensor it will sample from (None: no seed).

    `torch.multinomial` refuses a generator on another device than its probabilities, so CUDA logits need a CUDA
    generator; a CPU one is the same stream as `torch.Generator()`, so CPU samples stay as they were."""
    return None if seed is None else torch.Generator(device=like.device).manual_seed(seed)


def apply_repetition_penalty(logits: Tensor, context: Tensor, penalty: float) -> Tensor:
    """Divide positive logits (multiply negative ones) of tokens seen in `context` by `penalty`."""
    if penalty == 1.0 or context.numel() == 0:
        return logits
    seen = torch.unique(context)
    chosen = logits[seen]
    logits = logits.clone()
    logits[seen] = torch.where(chosen > 0, chosen / penalty, chosen * penalty)
    return logits


def next_token(logits: Tensor, context: Tensor, config: SamplingConfig, generator: torch.Generator | None) -> int:
    """One token id from the last position's logits (shape: vocab)."""
    logits = apply_repetition_penalty(logits.float(), context, config.repetition_penalty)
    if config.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / config.temperature
    if config.top_k and config.top_k < logits.numel():
        threshold = torch.topk(logits, config.top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the most likely token).
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= config.top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))

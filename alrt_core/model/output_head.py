"""The GPT's output stage: the final residual stream to logits, and the next-token loss.

    logits = softcap(head(rms_norm(x)))   head: the tied embedding's transpose, or the untied `head` matrix
                                          softcap: cap·tanh(logits / cap), or nothing when logit_softcap = 0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OutputHead:
    """A plain object, not a module: it holds the model's own `embed` and `head` modules, whose parameters keep
    their state-dict names. The head and the softcap are chosen when it is built."""

    def __init__(self, embed: nn.Embedding, head: nn.Linear | None, softcap: float) -> None:
        self.embed = embed
        self.softcap = softcap
        self._project = self._tied if head is None else head
        self._cap = self._soft_cap if softcap > 0 else self._uncapped

    def __call__(self, normed: Tensor) -> Tensor:
        """Logits (…, vocab) of the final-normed stream."""
        return self._cap(self._project(normed))

    def _tied(self, normed: Tensor) -> Tensor:
        return F.linear(normed, self.embed.weight)

    def _soft_cap(self, logits: Tensor) -> Tensor:
        return self.softcap * torch.tanh(logits / self.softcap)

    @staticmethod
    def _uncapped(logits: Tensor) -> Tensor:
        return logits


def token_cross_entropy(logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
    """Cross-entropy in float32 of logits (batch, time, vocab) against targets (batch, time): the mean or sum, or
    with reduction "none" one loss per target position, shaped like `targets`."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)
    return losses.view_as(targets) if reduction == "none" else losses

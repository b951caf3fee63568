"""The GPT's skip stage: U-Net skips from the encoder half of the layer applications to the decoder half.

Encoder application i (of the first half of the schedule) keeps its output; the decoder applications join those
outputs last-kept-first, one each, before they run:

    x = x + w·skip                       (model.unet_skips)
    x = lerp(w·skip, x, sigmoid(g))      (model.skip_gates: g = 0 starts at an even mix)

w and g are the model's `skip_weights` and `skip_gates` (one row per skip, sized for the looped schedule; a shorter
schedule uses the first rows). Without skip weights the stage is the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor


def num_skips(applications: int, unet_skips: bool) -> int:
    """Skip weights a model with `applications` layer applications (its looped schedule) needs."""
    return applications // 2 if unet_skips else 0


class UNetSkips:
    """The skips of one forward call: built per call from the model's current parameters (so a traced or exported
    forward reads them through the model), and holding the outputs kept so far."""

    def __init__(self, weights: Tensor | None, gates: Tensor | None, applications: int) -> None:
        self.weights, self.gates = weights, gates
        self.encoder = applications // 2 if weights is not None else 0
        self.kept: list[Tensor] = []

    def join(self, x: Tensor, slot: int) -> Tensor:
        """The input of layer application `slot`: x, joined with the latest kept output in the decoder half."""
        if slot < self.encoder or not self.kept:
            return x
        assert self.weights is not None  # kept outputs exist only with skip weights
        index = slot - self.encoder
        scaled = self.weights[index].to(x.dtype) * self.kept.pop()
        if self.gates is None:
            return x + scaled
        return torch.lerp(scaled, x, torch.sigmoid(self.gates[index].to(x.dtype)))

    def keep(self, x: Tensor, slot: int) -> None:
        """Keep the output of layer application `slot` if it is an encoder application."""
        if slot < self.encoder:
            self.kept.append(x)

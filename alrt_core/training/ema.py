"""Exponential moving average of the weights, kept in fp32 beside the model."""

from __future__ import annotations

import torch
from torch import nn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                self.shadow[name].lerp_(value.float(), 1.0 - self.decay)
            else:
                self.shadow[name].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = {name: value.float().clone() for name, value in state.items()}

    @torch.no_grad()
    def swap_into(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Load the averaged weights into `model`; returns the live weights so `restore` can put them back."""
        live = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.load_state_dict({name: value.to(live[name].dtype) for name, value in self.shadow.items()})
        return live

    @staticmethod
    @torch.no_grad()
    def restore(model: nn.Module, live: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(live)

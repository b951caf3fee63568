"""Exponential moving average of the weights, kept in fp32 beside the model."""

from __future__ import annotations

import torch
from torch import nn

from alrt_core.ranks.resize import follow_factorization, follow_resize
from alrt_core.ranks.spectral import Resize


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

    def follow_resize(self, layer: str, resize: Resize) -> None:
        """Move the averaged factors of `layer` by the live layer's resize maps (`alrt_core.ranks.resize.follow_resize`)."""
        follow_resize(self.shadow, layer, resize)

    def follow_factorization(self, layer: str, v: torch.Tensor) -> None:
        """The averaged dense W of `layer` becomes factors on the live layer's V (`alrt_core.ranks.resize.follow_factorization`)."""
        follow_factorization(self.shadow, layer, v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = {name: value.float().clone() for name, value in state.items()}

    def swap_into(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Load the averaged weights into `model`; returns the live weights so `restore` can put them back."""
        return swap_weights(model, self.shadow)

    @staticmethod
    def restore(model: nn.Module, live: dict[str, torch.Tensor]) -> None:
        restore_weights(model, live)


@torch.no_grad()
def swap_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load `weights` (fp32 averages) into `model` in its own dtypes; returns the live weights for `restore_weights`."""
    live = {name: value.detach().clone() for name, value in model.state_dict().items()}
    model.load_state_dict({name: value.to(live[name].dtype) for name, value in weights.items()})
    return live


@torch.no_grad()
def restore_weights(model: nn.Module, live: dict[str, torch.Tensor]) -> None:
    model.load_state_dict(live)


"""The run's resumable state: one dataclass whose fields are the checkpoint's entries, under the same names.

A checkpoint saves `TrainState.state_dict()`; a resume builds the state for the same config and calls
`load_state_dict` on it. The field list is the one declaration of what a run resumes from: a field that holds a
component (the model, the optimizers, the batch position, ...) is saved and loaded through the component's own
`state_dict`, a plain field (a counter, a flag) as its value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import torch

from alrt_core.model.gpt import GPT
from alrt_core.ranks.manager import RankManager
from alrt_core.training.batches import TrainBatches
from alrt_core.training.ema import WeightEMA
from alrt_core.training.swa import WeightSWA

# Marks an entry that checkpoints may lack or hold as None: files from before SWA, late QAT and the rank manager
# existed, and runs that keep no EMA or SWA. Without it that part resumes as built; every other entry is required.
_OPTIONAL = {"optional": True}


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class GlobalRNG:
    """torch's global generator as a component, so the draws after a resume continue those of the saved run."""

    def state_dict(self) -> torch.Tensor:
        return torch.get_rng_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        torch.set_rng_state(state)


@dataclass(kw_only=True)
class TrainState:
    """Everything a checkpoint saves and a resume restores, in the order a resume restores it."""

    model: GPT
    optimizers: list[torch.optim.Optimizer]
    ema: WeightEMA | None = field(metadata=_OPTIONAL)
    swa: WeightSWA | None = field(metadata=_OPTIONAL)
    qat_active: bool = field(default=False, metadata=_OPTIONAL)
    rank_manager: RankManager = field(metadata=_OPTIONAL)
    batches: TrainBatches
    step: int = 0  # optimizer steps done
    elapsed: float = 0.0  # training seconds, as the wallclock budget counts them
    tokens_seen: int = 0
    best_val_bpb: float = math.inf  # among the evaluations compared for best.pt
    evals_without_improvement: int = 0
    rng: GlobalRNG = field(default_factory=GlobalRNG)

    def state_dict(self) -> dict[str, Any]:
        return {entry.name: _saved(getattr(self, entry.name)) for entry in fields(self)}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        for entry in fields(self):
            value = saved.get(entry.name) if entry.metadata.get("optional") else saved[entry.name]
            current = getattr(self, entry.name)
            if value is None or current is None:
                continue
            if isinstance(current, list):
                for part, part_state in zip(current, value, strict=True):
                    part.load_state_dict(part_state)
            elif isinstance(current, Stateful):
                current.load_state_dict(value)
            else:
                setattr(self, entry.name, value)


def _saved(value: Any) -> Any:
    if isinstance(value, list):
        return [part.state_dict() for part in value]
    return value.state_dict() if isinstance(value, Stateful) else value

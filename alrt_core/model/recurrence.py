"""Depth recurrence: which block runs at each layer application, and who has switched the looping on or off.

With `model.recur_layers` a span of blocks runs `recur_loops` times (the looped schedule). A trainer runs the plain
schedule until `recur_start_frac` of its run and then switches the loop on; every other user of a model (evaluation,
generation, export, test-time training) gets the looped schedule, the function the model is trained towards.
"""

from __future__ import annotations

from enum import Enum

from alrt_core.config import ModelConfig
from alrt_core.model.layer_sets import layer_schedule, parse_span


class RecurrenceMode(Enum):
    ABSENT = "absent"  # no recur_layers: the plain schedule, and nothing to switch
    UNSWITCHED = "unswitched"  # no trainer has switched it: loops, in training mode too (TTT, export)
    TRAINING_OFF = "training_off"  # a trainer switched it off: the plain schedule in training, looped in eval
    ON = "on"  # a trainer switched it on: loops


class DepthRecurrence:
    """The two layer schedules of a model and the recurrence mode that picks one for the next forward call."""

    def __init__(self, config: ModelConfig) -> None:
        span = parse_span(config.recur_layers, config.num_layers)
        self.mode = RecurrenceMode.ABSENT if span is None else RecurrenceMode.UNSWITCHED
        self.plain = list(range(config.num_layers))
        self.looped = layer_schedule(config.num_layers, span, config.recur_loops)

    def switch(self, active: bool) -> bool:
        """A trainer's switch; True when this call turned the loop on (the first call of a run counts as turning on
        when `active`, since the mode before it was not set by a trainer). No-op without a span."""
        if self.mode is RecurrenceMode.ABSENT:
            return False
        switched_on = active and self.mode is not RecurrenceMode.ON
        self.mode = RecurrenceMode.ON if active else RecurrenceMode.TRAINING_OFF
        return switched_on

    def schedule(self, training: bool) -> list[int]:
        """The block run at each layer application of the next forward call."""
        plain = self.mode is RecurrenceMode.ABSENT or (training and self.mode is RecurrenceMode.TRAINING_OFF)
        return self.plain if plain else self.looped

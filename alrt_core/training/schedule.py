"""Learning-rate and momentum schedules: warmup, flat, then linear warmdown.

Progress is measured in steps, in wallclock, or both (whichever ends first), so a `--max-minutes` run still
warms down to zero at its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    warmup_steps: int
    warmdown_frac: float
    max_steps: int | None
    max_seconds: float | None

    def progress(self, step: int, elapsed: float) -> float:
        """Fraction of the run done, in [0, 1]: the larger of the step and the wallclock fractions."""
        fractions = [0.0]
        if self.max_steps:
            fractions.append(step / self.max_steps)
        if self.max_seconds:
            fractions.append(elapsed / self.max_seconds)
        return min(1.0, max(fractions))

    def finished(self, step: int, elapsed: float) -> str | None:
        """The reason the run is over, or None."""
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        if self.max_seconds is not None and elapsed >= self.max_seconds:
            return "max_minutes"
        return None

    def lr_scale(self, step: int, elapsed: float) -> float:
        """Multiplier on every group's base LR for the step about to run (`step` steps already done)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.warmdown_frac <= 0:
            return 1.0
        remaining = 1.0 - self.progress(step, elapsed)
        return max(0.0, min(1.0, remaining / self.warmdown_frac))


def muon_momentum(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Muon momentum ramps linearly from `start` to `end`: low momentum helps the noisy first steps."""
    if warmup_steps <= 0:
        return end
    fraction = min(1.0, step / warmup_steps)
    return start + (end - start) * fraction

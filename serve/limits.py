"""What one `alrt serve` process accepts: queue depth, token caps, decoding threads. Kept apart from the HTTP
server so that the CLI checks them before FastAPI and uvicorn load."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from alrt_core.errors import UserError


@dataclass(frozen=True)
class ServeLimits:
    """Every limit is a count of at least 1; `None` where allowed means "no limit of our own"."""

    parallel: int = 1  # requests decoding at once (continuous batching); `alrt serve` sizes it to the machine
    max_queue: int = 16  # requests waiting for a slot; one more is a 429
    max_tokens_cap: int = 512  # the largest max_tokens a request may ask for
    max_prompt_tokens: int | None = None  # None: the model's context
    threads: int | None = 1  # torch intra-op threads for decoding (None: leave torch's setting)

    def __post_init__(self) -> None:
        for limit in fields(self):
            value = getattr(self, limit.name)
            if value is not None and value < 1:
                raise UserError(f"--{limit.name.replace('_', '-')} must be at least 1, got {value}")


def default_parallel() -> int:
    """Decoding slots for this machine: a CPU decode step of a small model is overhead-bound, so 8 rows per core
    cost little more than one (measured: `benchmarks/serve_latency.py`), up to 32."""
    return min(32, 8 * (os.cpu_count() or 1))

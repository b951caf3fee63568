"""The run's event log: one JSON object per line in `train.jsonl`, mirrored to in-process listeners.

Every event has `event`, `step` and `time` (Unix seconds). Listeners (the console renderer, tests) receive the
same dicts; a listener may ask the trainer to stop but must not change the event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from alrt_core.json_values import json_safe

Listener = Callable[[dict[str, Any]], None]


class EventLog:
    def __init__(self, path: Path | None, listeners: list[Listener] | None = None) -> None:
        """`path=None` records nothing to disk (non-zero ranks); listeners still hear events."""
        self.listeners = list(listeners or [])
        self._file: TextIO | None = path.open("a", encoding="utf-8") if path is not None else None

    def emit(self, event: str, step: int, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "step": step, "time": round(time.time(), 3), **fields}
        if self._file is not None:
            self._file.write(json.dumps(json_safe(record)) + "\n")
            self._file.flush()
        for listener in self.listeners:
            listener(record)
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a train.jsonl (a line being written by a live run is skipped)."""
    events = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events

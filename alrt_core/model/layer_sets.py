"""Layer-set specs of the architecture switches (`model.xsa_layers="7-10"`) and the depth-recurrence schedule.

A spec names block indices: `""` none, `"all"` every block, and comma-separated items `"3"`, `"2-5"` (inclusive)
or `"8-"` (8 to the last block). The recurrence schedule lists which block runs at each layer application.
"""

from __future__ import annotations

from alrt_core.errors import UserError


def parse_layer_set(spec: str, num_layers: int, *, key: str = "layers") -> frozenset[int]:
    """The block indices a spec names; a malformed or out-of-range spec is a UserError naming `key`."""
    text = spec.strip().lower()
    if not text:
        return frozenset()
    if text == "all":
        return frozenset(range(num_layers))
    chosen: set[int] = set()
    for item in text.split(","):
        first, dash, last = item.strip().partition("-")
        try:
            low = int(first)
            high = (int(last) if last.strip() else num_layers - 1) if dash else low
        except ValueError:
            raise UserError(f"model.{key}={spec!r}: expected '', 'all' or items like '3', '2-5', '8-'") from None
        if not 0 <= low <= high < num_layers:
            raise UserError(f"model.{key}={spec!r}: {item.strip()!r} is not a range inside blocks 0..{num_layers - 1}")
        chosen.update(range(low, high + 1))
    return frozenset(chosen)


def parse_span(spec: str, num_layers: int, *, key: str = "recur_layers") -> tuple[int, int] | None:
    """(first, last) block of a contiguous span, or None for an empty spec."""
    layers = parse_layer_set(spec, num_layers, key=key)
    if not layers:
        return None
    first, last = min(layers), max(layers)
    if len(layers) != last - first + 1:
        raise UserError(f"model.{key}={spec!r} must be one contiguous span of blocks, e.g. '3-5'")
    return first, last


def layer_schedule(num_layers: int, span: tuple[int, int] | None, loops: int) -> list[int]:
    """The block run at each layer application: 0..first-1, then the span `loops` times, then the rest."""
    if span is None:
        return list(range(num_layers))
    first, last = span
    looped = list(range(first, last + 1)) * loops
    return [*range(first), *looped, *range(last + 1, num_layers)]

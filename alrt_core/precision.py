"""Which arithmetic precision runs fastest here, and the autocast context that applies it.

On CUDA bf16 is always the faster path. On a CPU it depends on the chip, not its vendor: Intel with AMX runs bf16
matmuls ~5× fp32, AMD Zen 4 (AVX-512 BF16) ~2.2×, Intel AVX-512 without AMX and AVX2-only chips run them slower
than fp32. So `auto` on a CPU is decided by a short timed probe of both precisions at the model's own matmul
shapes (a few hundred milliseconds), never by a CPU family table.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

# bf16 is chosen only when its matmuls beat fp32's by this factor: autocast also pays casts and the fp32 work
# around the matmuls (norms, softmax, the optimizer), which the probe does not time.
BF16_MIN_SPEEDUP = 1.1
PROBE_SECONDS = 0.4  # both precisions together, split over the shapes
MAX_PROBE_ROWS = 2048  # matmuls of this many rows already run at the kernels' full rate
MAX_PROBE_SHAPES = 4
# When no model is at hand (Muon's Newton–Schulz, a bare call): the `cpu` preset's typical matmuls.
DEFAULT_SHAPES: tuple[tuple[int, int, int], ...] = ((1024, 256, 256), (1024, 256, 1024), (1024, 1024, 256))


@dataclass(frozen=True)
class PrecisionProbe:
    """What the probe measured on this device, and what `auto` chose."""

    device: str
    fp32_gflops: float | None  # None when nothing was timed (CUDA: bf16 without measuring)
    bf16_gflops: float | None
    bf16: bool
    seconds: float
    shapes: tuple[tuple[int, int, int], ...]

    @property
    def label(self) -> str:
        return "bf16 autocast" if self.bf16 else "fp32"

    def describe(self) -> str:
        if self.fp32_gflops is None or self.bf16_gflops is None:
            return f"{self.label} ({self.device})"
        return (f"{self.label} (probe: fp32 {self.fp32_gflops:,.0f} vs bf16 {self.bf16_gflops:,.0f} GFLOP/s "
                f"in {self.seconds:.2f} s)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "chosen": "bf16" if self.bf16 else "fp32"}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> PrecisionProbe:
        return cls(str(saved["device"]), saved["fp32_gflops"], saved["bf16_gflops"], bool(saved["bf16"]),
                   float(saved["seconds"]), tuple(tuple(int(d) for d in shape) for shape in saved["shapes"]))


def matmul_shapes(layers: Iterable[tuple[int, int]], rows: int) -> tuple[tuple[int, int, int], ...]:
    """(rows, in, out) of the distinct (in, out) matmuls given, the most expensive first, at most a few."""
    rows = max(1, min(rows, MAX_PROBE_ROWS))
    distinct = sorted(set(layers), key=lambda shape: (-shape[0] * shape[1], shape))[:MAX_PROBE_SHAPES]
    return tuple((rows, k, n) for k, n in distinct)


def _rate(shapes: tuple[tuple[int, int, int], ...], bf16: bool, seconds: float) -> float:
    """GFLOP/s of `x @ w` over the shapes, fp32 inputs under autocast when `bf16` (as training runs them).

    Bounded in time even where one precision is pathologically slow (bf16 without hardware support can run at
    ~1 GFLOP/s): each shape climbs a ladder of row counts (64, 256, 1024, ...) and stops climbing when the next
    rung would not fit its share of `seconds`; the rate is the last rung's, timed after a warm-up call.
    """
    generator = torch.Generator().manual_seed(0)
    rates = []
    for target_rows, k, n in shapes:
        w = torch.randn(k, n, generator=generator)
        deadline = time.perf_counter() + seconds / len(shapes)
        rows, rate = min(64, target_rows), 0.0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            while True:
                x = torch.randn(rows, k, generator=generator)
                x @ w  # warm-up at this size: kernel choice, allocation
                calls, started = 0, time.perf_counter()
                while calls < 2 or (calls < 50 and time.perf_counter() - started < (deadline - started) / 4):
                    x @ w
                    calls += 1
                elapsed = time.perf_counter() - started
                rate = 2.0 * rows * k * n * calls / elapsed / 1e9
                next_rows = min(rows * 4, target_rows)
                # The next rung costs a warm-up and two calls at 4x the work each.
                if next_rows == rows or time.perf_counter() + 3 * elapsed / calls * next_rows / rows > deadline:
                    break
                rows = next_rows
        rates.append(rate)
    return sum(rates) / len(rates)


@functools.cache
def probe_precision(device_type: str, shapes: tuple[tuple[int, int, int], ...] = DEFAULT_SHAPES) -> PrecisionProbe:
    """Time fp32 and bf16 matmuls at `shapes` on this device (once per process and shape set) and choose."""
    if device_type == "cuda":
        return PrecisionProbe("cuda", None, None, True, 0.0, shapes)
    if device_type != "cpu":
        return PrecisionProbe(device_type, None, None, False, 0.0, shapes)
    started = time.perf_counter()
    # One thread: the choice depends on the ratio of the kernels' rates, which one core shows, and a single thread
    # cannot stall in an OpenMP barrier when another process holds the other core (with two threads on a busy
    # machine, fp32 matmuls were measured at 0.03 GFLOP/s for moments, which would have chosen bf16 at 1 GFLOP/s).
    # Interleaved rounds (fp32, bf16, fp32, bf16), best of each, so a burst of load touches both alike and a
    # slowed round does not decide.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        quarter = PROBE_SECONDS / 4
        rounds = [(_rate(shapes, False, quarter), _rate(shapes, True, quarter)) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    fp32 = max(max(r[0] for r in rounds), 1e-9)
    bf16 = max(r[1] for r in rounds)
    return PrecisionProbe("cpu", fp32, bf16, bf16 > BF16_MIN_SPEEDUP * fp32, time.perf_counter() - started, shapes)


def bf16_is_fast(device_type: str, shapes: tuple[tuple[int, int, int], ...] = DEFAULT_SHAPES) -> bool:
    """Whether bf16 matmuls are measurably faster than fp32 on this device type."""
    return probe_precision(device_type, shapes).bf16


def resolve_autocast(mode: str, device: torch.device,
                     shapes: tuple[tuple[int, int, int], ...] = DEFAULT_SHAPES) -> bool:
    """Whether to run under bf16 autocast for train.autocast = auto | bf16 | off."""
    if mode == "auto":
        return probe_precision(device.type, shapes).bf16
    return mode == "bf16"


def autocast_context(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)

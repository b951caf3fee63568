"""`train.autocast=auto`: bf16 or fp32 decided by a timed matmul probe at the model's shapes, never by CPU family."""

from __future__ import annotations

import pytest
import torch

from alrt_core import precision
from alrt_core.precision import PrecisionProbe, matmul_shapes, probe_precision, resolve_autocast


@pytest.fixture(autouse=True)
def fresh_probe():
    probe_precision.cache_clear()
    yield
    probe_precision.cache_clear()


@pytest.mark.parametrize(("fp32", "bf16", "chosen"), [(197.0, 433.0, True), (248.0, 158.0, False),
                                                      (200.0, 215.0, False), (40.0, 1.0, False)])
def test_auto_picks_bf16_only_when_its_matmuls_are_measurably_faster(monkeypatch, fp32, bf16, chosen):
    # Zen 4 with AVX-512 BF16 (2.2x), Intel AVX-512 without AMX (slower), a tie within the margin, AVX2 only.
    monkeypatch.setattr(precision, "_rate", lambda shapes, use_bf16, seconds: bf16 if use_bf16 else fp32)
    probe = probe_precision("cpu", ((64, 32, 32),))
    assert (probe.fp32_gflops, probe.bf16_gflops, probe.bf16) == (fp32, bf16, chosen)
    assert resolve_autocast("auto", torch.device("cpu"), ((64, 32, 32),)) is chosen
    assert resolve_autocast("off", torch.device("cpu")) is False and resolve_autocast("bf16", torch.device("cpu")) is True
    assert probe.label == ("bf16 autocast" if chosen else "fp32") and f"{fp32:,.0f}" in probe.describe()


def test_cuda_uses_bf16_without_probing(monkeypatch):
    monkeypatch.setattr(precision, "_rate", lambda *args: pytest.fail("CUDA needs no probe"))
    assert probe_precision("cuda").bf16 and probe_precision("cuda").fp32_gflops is None


def test_the_real_probe_measures_both_precisions_at_the_given_shapes():
    shapes = matmul_shapes([(64, 48), (48, 64), (64, 48), (64, 256)], rows=10_000)
    assert shapes == ((2048, 64, 256), (2048, 48, 64), (2048, 64, 48))  # distinct, largest first, rows capped
    probe = probe_precision("cpu", shapes)
    assert probe.fp32_gflops > 0 and probe.bf16_gflops > 0 and probe.shapes == shapes
    assert probe.bf16 == (probe.bf16_gflops > precision.BF16_MIN_SPEEDUP * probe.fp32_gflops)
    assert PrecisionProbe.from_dict(probe.to_dict()) == probe  # as a checkpoint stores it

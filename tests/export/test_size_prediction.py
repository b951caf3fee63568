"""The size predictor: exact at its anchor, each matrix's proxy computed once, and changes followed in direction."""

from __future__ import annotations

import torch

from export import size_prediction
from export.gptq import QuantizedMatrix, quantize_matrix
from export.size_prediction import SizePredictor


def _matrices() -> dict[str, QuantizedMatrix]:
    generator = torch.Generator().manual_seed(0)
    return {f"m{i}": quantize_matrix(torch.randn(64, 96, generator=generator), None, 6) for i in range(3)}


def test_prediction_is_exact_at_the_anchor_and_follows_a_change(monkeypatch):
    calls = []
    original = size_prediction.proxy_size
    monkeypatch.setattr(size_prediction, "proxy_size", lambda data: calls.append(len(data)) or original(data))
    measured = {"n": 0}

    def measure(current):  # a stand-in for the compressed artifact: 1.5 bytes per proxy byte plus a header
        measured["n"] += 1
        return int(1.5 * sum(original(m.q.numpy().tobytes()) for m in current.values())) + 1000

    predictor = SizePredictor({"small": torch.ones(8)}, b"tokenizer", "bytes", measure, lambda current: 1.5, 1000)
    matrices = _matrices()
    size = predictor.measure(matrices)
    assert predictor.predict(matrices) == size and measured["n"] == 1
    proxied = len(calls)
    predictor.predict(matrices)
    assert len(calls) == proxied  # unchanged matrices are not compressed again
    zeroed = dict(matrices)
    m = matrices["m1"]
    zeroed["m1"] = QuantizedMatrix(torch.zeros_like(m.q), m.scale, m.bits, m.clip, m.error)
    predicted = predictor.predict(zeroed)
    assert len(calls) == proxied + 2  # only the changed matrix: its integers and its scales
    truth = measure(zeroed)
    assert predicted < size and abs(predicted - truth) < 0.1 * (size - truth)


def test_refine_anchors_on_the_sample_ratio_over_the_whole_proxy():
    matrices = _matrices()
    predictor = SizePredictor({}, b"", "packed", lambda current: 0, lambda current: 0.8, 500)
    predictor.refine(matrices)
    assert predictor.predict(matrices) == round(0.8 * predictor.proxy_total(matrices)) + 500
    assert predictor.refinements == 1 and predictor.measurements == 0

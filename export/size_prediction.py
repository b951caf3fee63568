"""The artifact's compressed size, predicted from its entries without running the final compressor.

At golf scale the payload is ~25–36 MB of integers, and the final compressor (brotli-11, zstd-22 or lzma-9e) takes
tens of seconds to minutes per pass on two cores. The budget fit changes a few tensors per move, so compressing
the whole payload after each move made the fit cost many passes. Instead each payload entry is compressed alone
by a fast proxy (zstd level 3, ~100× faster) and cached with the matrix it was computed from, so a move costs the
proxy of the entries it changed. The prediction is anchored to the last real measurement:

    predicted = measured + ratio · (proxy now − proxy at the measurement),  ratio = measured / proxy there,

which is exact at the anchor and follows each entry's change in compressibility (fewer bits, zeroed ±1 values).
Before any measurement the anchor is an estimate: the final compressor's bytes per proxy byte on a sample of the
payload (evenly spaced rows of every matrix, ~4 MB), times the whole payload's proxy bytes. The proxy's ratio to
the final compressor drifts as bits are lowered (at 4–5 bits zstd 3 falls further behind brotli 11 than at 6), so
after every move of bits the fit re-estimates the anchor on the sample of the new state (`refine`: one sample
pass, ~1/8 of a full one at golf scale). The fit confirms every predicted fit with one real compression;
if the prediction was optimistic, that measurement re-anchors it and the fit takes one more move
(`export.budget_fit`). The final file is measured.
"""

from __future__ import annotations

from collections.abc import Callable

import zstandard
from torch import Tensor

from export.gptq import QuantizedMatrix
from export.payload import Storage, fp16_bytes, integer_bytes, scale_bytes

PROXY_LEVEL = 3


def proxy_size(data: bytes) -> int:
    """Bytes of `data` under the fast proxy compressor."""
    return len(zstandard.ZstdCompressor(level=PROXY_LEVEL).compress(data)) if data else 0


class SizePredictor:
    """Predicted artifact bytes for any state of the quantised matrices; `measure` gives the real bytes (and anchors
    the prediction), `predict` the estimate from per-entry proxy sizes."""

    def __init__(self, passthrough: dict[str, Tensor], tokenizer: bytes, storage: Storage,
                 measure: Callable[[dict[str, QuantizedMatrix]], int],
                 sample_ratio: Callable[[dict[str, QuantizedMatrix]], float], overhead: int) -> None:
        """`measure`: the real artifact bytes of a state; `sample_ratio`: the final compressor's bytes per proxy byte
        on the sample of a state; `overhead`: bytes outside the payload (manifest, counted code)."""
        self.storage = storage
        self._measure, self._sample_ratio, self.overhead = measure, sample_ratio, overhead
        self.fixed = {name: proxy_size(fp16_bytes(tensor)) for name, tensor in passthrough.items()}
        self.fixed["tokenizer.model"] = proxy_size(tokenizer)
        self._cache: dict[str, tuple[QuantizedMatrix, int]] = {}
        self.anchor_size: int | None = None
        self.anchor_proxy = 0
        self.ratio = 1.0  # compressed bytes per proxy byte
        self.measurements = self.refinements = 0

    def refine(self, quantized: dict[str, QuantizedMatrix], ratio: float | None = None) -> None:
        """Anchor on an estimate for this state: the sample's ratio (`ratio` when it is already measured) over the
        whole payload's proxy bytes."""
        ratio = self._sample_ratio(quantized) if ratio is None else ratio
        self.anchor_proxy = self.proxy_total(quantized)
        self.anchor_size, self.ratio = round(ratio * self.anchor_proxy) + self.overhead, ratio
        self.refinements += 1

    def entry_proxy(self, name: str, matrix: QuantizedMatrix) -> int:
        """Proxy bytes of one matrix's entry (integers and scales), computed once per matrix object."""
        cached = self._cache.get(name)
        if cached is None or cached[0] is not matrix:
            size = proxy_size(integer_bytes(matrix, self.storage)) + proxy_size(scale_bytes(matrix))
            cached = self._cache[name] = (matrix, size)
        return cached[1]

    def proxy_total(self, quantized: dict[str, QuantizedMatrix]) -> int:
        return sum(self.entry_proxy(name, matrix) for name, matrix in quantized.items()) + sum(self.fixed.values())

    def measure(self, quantized: dict[str, QuantizedMatrix]) -> int:
        """The real artifact bytes of this state (one pass of the final compressor); the new anchor."""
        size = self._measure(quantized)
        self.anchor_size, self.anchor_proxy = size, self.proxy_total(quantized)
        self.ratio = size / max(self.anchor_proxy, 1)
        self.measurements += 1
        return size

    def predict(self, quantized: dict[str, QuantizedMatrix]) -> int:
        if self.anchor_size is None:
            raise RuntimeError("predict needs an anchor: a measurement or an estimate")
        return round(self.anchor_size + self.ratio * (self.proxy_total(quantized) - self.anchor_proxy))

    def entry_bytes(self, name: str, matrix: QuantizedMatrix) -> float:
        """Predicted compressed bytes of one matrix's entry."""
        return self.ratio * self.entry_proxy(name, matrix)

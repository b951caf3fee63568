"""What the int6 artifact of a model will weigh, printed when training starts.

Two numbers, of different kinds:

- `packed_bytes` is exact arithmetic on the shapes (the rank-budget cost model): projection matrices at 6 bits
  with an fp16 scale per row (kept as factors only when smaller than dense), the embedding and the optional
  lookup tables at 8 bits with a scale per row, every other tensor in fp16: the integers before compression.
- `compressed_bytes` is an estimate for *trained* weights, not for the initial ones (uniform initial weights fill
  the grid evenly and barely compress). Trained rows are close to Gaussian; quantised with the parameter-golf
  records' SDClip step (scale = k·std(row)/R, k = 12.85 for int6 matrices and 20 for the int8 embedding) they
  cost the entropy of a discretised Gaussian with standard deviation R/k steps: 3.33 bits per int6 value and 4.72
  per int8 value. Brotli reached that entropy within 1.5% on Gaussian test matrices, hence `COMPRESSOR_OVERHEAD`.
  With these steps the 2026-04-09 record's 35.9M-parameter model came to 15,975,300 bytes (estimate: +0.6%).

Running the real quantizer on the initial model is exact but says little (see above) and takes ~2 minutes at the
golf shape on CPU, so neither number is that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from alrt_core.model.gpt import GPT
from alrt_core.quant_grid import EMBED_BITS, FP16_BYTES, MATRIX_BITS, SCALE_BYTES, max_level
from alrt_core.ranks.budget import CostModel

MATRIX_CLIP_SIGMAS = 12.85  # the 2026-04-09 record's SDClip multipliers
EMBED_CLIP_SIGMAS = 20.0
COMPRESSOR_OVERHEAD = 1.015  # brotli-11 bytes over the entropy, measured on Gaussian int6/int8 matrices


@dataclass(frozen=True)
class ArtifactEstimate:
    packed_bytes: int  # exact: integers and scales before compression
    compressed_bytes: int  # estimate for trained weights quantised with the records' SDClip steps


@lru_cache(maxsize=16)
def gaussian_code_bits(bits: int, clip_sigmas: float) -> float:
    """Entropy in bits of a Gaussian quantised on the symmetric grid [-R, R], R = 2^(bits-1) - 1, with step
    clip_sigmas·σ/R (values beyond the grid land on its ends)."""
    levels = max_level(bits)
    sigma = levels / clip_sigmas  # the Gaussian's standard deviation in grid steps

    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / (sigma * math.sqrt(2.0))))

    entropy = 0.0
    for level in range(-levels, levels + 1):
        low = 0.0 if level == -levels else cdf(level - 0.5)
        high = 1.0 if level == levels else cdf(level + 0.5)
        p = high - low
        if p > 0:
            entropy -= p * math.log2(p)
    return entropy


def estimate_artifact(model: GPT) -> ArtifactEstimate:
    costs = CostModel.of(model)
    ranks = model.layer_ranks()
    matrix_bits = gaussian_code_bits(MATRIX_BITS, MATRIX_CLIP_SIGMAS) * COMPRESSOR_OVERHEAD
    embed_bits = gaussian_code_bits(EMBED_BITS, EMBED_CLIP_SIGMAS) * COMPRESSOR_OVERHEAD
    compressed = 0.0
    for name, rank in ranks.items():
        out_features, in_features = costs.shapes[name]
        dense_values, dense_rows = out_features * in_features, out_features
        # The quantizer keeps factors only when they pack smaller than the dense matrix (the cost model's rule).
        keep_factors = rank is not None and costs.layer_bytes(name, rank) < costs.layer_bytes(name, None)
        values = rank * (out_features + in_features) if keep_factors else dense_values
        rows = out_features + rank if keep_factors else dense_rows
        compressed += values * matrix_bits / 8 + rows * SCALE_BYTES
    # The embedding, an untied head and the extra lookup tables and their projections are stored at 8 bits.
    embedding_like = [model.embed.weight] + ([model.head.weight] if model.head is not None else [])
    embedding_like += [*model.extra_tables().values(), *model.extra_matrices().values()]
    for weight in embedding_like:
        compressed += weight.numel() * embed_bits / 8 + weight.shape[0] * SCALE_BYTES
    small_values = costs.fixed_params - sum(weight.numel() for weight in embedding_like)
    compressed += small_values * FP16_BYTES
    return ArtifactEstimate(packed_bytes=round(costs.total(ranks, "bytes")), compressed_bytes=round(compressed))

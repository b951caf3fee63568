"""What a set of ranks costs: trained parameters, or artifact bytes.

Used by the budget-driven mode (`rank.target_params` / `rank.target_bytes`) to choose the global pressure, and by
reports. Bytes follow how `alrt quantize` stores a model: projection matrices as int6 with an fp16 scale per row,
kept as factors when that is smaller than dense and folded otherwise; the embedding (and an untied head, and the
lookup tables) as int8 with a scale per row; every other tensor in fp16. Two rates per stored value:

- `PACKED`: the exact packing before compression (6 and 8 bits), an upper bound of the payload;
- `ARTIFACT` (what `rank.target_bytes` budgets by default): the compressed cost measured on trained artifacts of
  this project's `cpu`-shape family (4 blocks, widths 64–256, GPTQ with clip search, brotli): int6 values took 4.6–
  5.3 bits each besides their row scales, the int8 embedding 6.6–7.6 bits; plus what every artifact carries besides
  the weights (header, compressed manifest, compressed tokenizer: `overhead_bytes`). The rates sit at the high end
  of the measurements, so the estimate errs towards fitting; `alrt quantize --budget` still measures the real file.
"""

from __future__ import annotations

from dataclasses import dataclass

from alrt_core.model.gpt import GPT
from alrt_core.quant_grid import EMBED_BITS, FP16_BYTES, MATRIX_BITS, SCALE_BYTES


@dataclass(frozen=True)
class StorageRates:
    """Bits per stored value of each kind, and bytes per row scale and per fp16 value."""

    matrix_bits: float
    embed_bits: float
    scale_bytes: float = SCALE_BYTES
    small_tensor_bytes: float = FP16_BYTES


PACKED = StorageRates(matrix_bits=MATRIX_BITS, embed_bits=EMBED_BITS)
ARTIFACT = StorageRates(matrix_bits=5.3, embed_bits=7.6)
# Header (56 B) and compressed manifest (~2–3 KB measured for 24–40 tensors), before the tokenizer.
ARTIFACT_FIXED_BYTES = 3_500
TOKENIZER_COMPRESSION = 0.35  # brotli on a sentencepiece model: 14,271 → 4,349 bytes measured (0.30)


def artifact_overhead_bytes(tokenizer_bytes: int) -> float:
    """What an artifact carries besides the weights: header, manifest and the compressed tokenizer."""
    return ARTIFACT_FIXED_BYTES + TOKENIZER_COMPRESSION * tokenizer_bytes


@dataclass(frozen=True)
class CostModel:
    """Fixed costs of everything that is not a factorisable projection, plus each projection's shape."""

    shapes: dict[str, tuple[int, int]]  # name -> (out, in)
    fixed_params: int
    fixed_bytes: float
    rates: StorageRates = PACKED

    @classmethod
    def of(cls, model: GPT, rates: StorageRates = PACKED, overhead_bytes: float = 0.0) -> CostModel:
        projections = model.projections()
        shapes = {name: (layer.out_features, layer.in_features) for name, layer in projections.items()}
        taken = {id(p) for layer in projections.values() for p in layer.parameters()}
        fixed_params, fixed_bytes = 0, float(overhead_bytes)
        embedding_like = {id(model.embed.weight)} | ({id(model.head.weight)} if model.head is not None else set())
        # BigramHash / value-embedding tables and projections are stored at the embedding's bits too.
        embedding_like |= {id(p) for p in (*model.extra_tables().values(), *model.extra_matrices().values())}
        for parameter in model.parameters():
            if id(parameter) in taken:
                continue
            fixed_params += parameter.numel()
            if id(parameter) in embedding_like:
                rows = parameter.shape[0]
                fixed_bytes += parameter.numel() * rates.embed_bits / 8 + rows * rates.scale_bytes
            else:
                fixed_bytes += parameter.numel() * rates.small_tensor_bytes
        return cls(shapes, fixed_params, fixed_bytes, rates)

    def layer_params(self, name: str, rank: int | None) -> int:
        out_features, in_features = self.shapes[name]
        return out_features * in_features if rank is None else rank * (out_features + in_features)

    def layer_bytes(self, name: str, rank: int | None) -> float:
        out_features, in_features = self.shapes[name]
        bits, scale = self.rates.matrix_bits, self.rates.scale_bytes
        dense = out_features * in_features * bits / 8 + out_features * scale
        if rank is None:
            return dense
        factors = rank * (out_features + in_features) * bits / 8 + (out_features + rank) * scale
        return min(dense, factors)

    def total(self, ranks: dict[str, int | None], unit: str) -> float:
        """Whole-model cost in `params` or `bytes`."""
        if unit == "params":
            return self.fixed_params + sum(self.layer_params(name, rank) for name, rank in ranks.items())
        return self.fixed_bytes + sum(self.layer_bytes(name, rank) for name, rank in ranks.items())

    def projection_params(self, ranks: dict[str, int | None]) -> int:
        """Parameters in the attention and MLP projections only (what ALRT compresses)."""
        return sum(self.layer_params(name, rank) for name, rank in ranks.items())

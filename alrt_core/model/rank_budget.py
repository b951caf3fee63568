"""What a set of ranks costs: trained parameters, or artifact bytes at the int6 packing rate.

Used by the budget-driven mode (`rank.target_params` / `rank.target_bytes`) to choose the global pressure, and by
reports. The byte estimate mirrors what `alrt quantize` packs before compression: projection matrices at 6 bits with
an fp16 scale per row, kept as factors when r·(m+n) < m·n and folded to dense otherwise; the embedding (and an
untied head) at 8 bits with a scale per row; every other tensor in fp16. Compression usually saves a little more,
so the estimate errs on the safe side.
"""

from __future__ import annotations

from dataclasses import dataclass

from alrt_core.model.gpt import GPT

MATRIX_BITS = 6
EMBED_BITS = 8
SCALE_BYTES = 2
SMALL_TENSOR_BYTES = 2


@dataclass(frozen=True)
class CostModel:
    """Fixed costs of everything that is not a factorisable projection, plus each projection's shape."""

    shapes: dict[str, tuple[int, int]]  # name -> (out, in)
    fixed_params: int
    fixed_bytes: float

    @classmethod
    def of(cls, model: GPT) -> CostModel:
        projections = model.projections()
        shapes = {name: (layer.out_features, layer.in_features) for name, layer in projections.items()}
        taken = {id(p) for layer in projections.values() for p in layer.parameters()}
        fixed_params, fixed_bytes = 0, 0.0
        embedding_like = {id(model.embed.weight)} | ({id(model.head.weight)} if model.head is not None else set())
        # BigramHash / value-embedding tables and projections are stored at the embedding's bits too.
        embedding_like |= {id(p) for p in (*model.extra_tables().values(), *model.extra_matrices().values())}
        for parameter in model.parameters():
            if id(parameter) in taken:
                continue
            fixed_params += parameter.numel()
            if id(parameter) in embedding_like:
                rows = parameter.shape[0]
                fixed_bytes += parameter.numel() * EMBED_BITS / 8 + rows * SCALE_BYTES
            else:
                fixed_bytes += parameter.numel() * SMALL_TENSOR_BYTES
        return cls(shapes, fixed_params, fixed_bytes)

    def layer_params(self, name: str, rank: int | None) -> int:
        out_features, in_features = self.shapes[name]
        return out_features * in_features if rank is None else rank * (out_features + in_features)

    def layer_bytes(self, name: str, rank: int | None) -> float:
        out_features, in_features = self.shapes[name]
        dense = out_features * in_features * MATRIX_BITS / 8 + out_features * SCALE_BYTES
        if rank is None:
            return dense
        factors = rank * (out_features + in_features) * MATRIX_BITS / 8 + (out_features + rank) * SCALE_BYTES
        return min(dense, factors)

    def total(self, ranks: dict[str, int | None], unit: str) -> float:
        """Whole-model cost in `params` or `bytes`."""
        if unit == "params":
            return self.fixed_params + sum(self.layer_params(name, rank) for name, rank in ranks.items())
        return self.fixed_bytes + sum(self.layer_bytes(name, rank) for name, rank in ranks.items())

    def projection_params(self, ranks: dict[str, int | None]) -> int:
        """Parameters in the attention and MLP projections only (what ALRT compresses)."""
        return sum(self.layer_params(name, rank) for name, rank in ranks.items())

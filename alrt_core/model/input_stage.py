"""The GPT's input stage: token ids to the normalised embedding stream x0 that the first block and every
`resid_mix` read.

    x0 = rms_norm(features(embed(ids)))   features: SmearGate, then BigramHash, each only when switched on

With neither feature on the stage is the embedding and the norm alone, and it never looks at previous tokens.
"""

from __future__ import annotations

from torch import Tensor, nn

from alrt_core.model.attention import ForwardContext, rms_norm
from alrt_core.model.embeddings_extra import BigramHash, PreviousTokenFeature, SmearGate, previous_tokens
from alrt_core.model.kv_cache import KVCache


class InputStage:
    """A plain object, not a module: it holds the model's own `embed`, `smear` and `bigram` modules, whose
    parameters keep their state-dict names (`embed.weight`, `smear.lam`, `bigram.table.weight`, ...)."""

    def __init__(self, embed: nn.Embedding, smear: SmearGate | None, bigram: BigramHash | None, bos_id: int) -> None:
        self.embed = embed
        self.bos_id = bos_id
        self.features: list[PreviousTokenFeature] = [feature for feature in (smear, bigram) if feature is not None]

    @property
    def reads_previous_tokens(self) -> bool:
        """Whether a KV-cached call needs the cache's token history (the token before the call)."""
        return bool(self.features)

    def __call__(self, input_ids: Tensor, ctx: ForwardContext, cache: KVCache | None) -> Tensor:
        """x0 for `input_ids` at the call's positions; `cache` holds the earlier tokens of a cached call."""
        x = self.embed(input_ids)
        if self.features:
            before = ctx.previous_tokens  # rows at different lengths: each row's own previous token
            if before is None and cache is not None and ctx.start > 0:
                before = cache.tokens[:, ctx.start - 1]
            previous = previous_tokens(input_ids, before, self.bos_id)
            for feature in self.features:
                x = feature(x, input_ids, previous, self.embed)
        return rms_norm(x)

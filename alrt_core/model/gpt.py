"""The GPT: one class, one forward path, configured by `ModelConfig`.

Training, evaluation, generation (through `KVCache`) and export all call `GPT.forward`. Every Q/K/V/O and MLP
projection is a `FactorizedLinear`, dense or `U·V` with its own rank. The architecture switches of `ModelConfig`
(XSA, attention gates, depth scaling, skip gates, parallel residuals, depth recurrence, BigramHash, SmearGate,
value embeddings, value residual, document mask) are branches of this one path; all off is the plain model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alrt_core.config import ModelConfig
from alrt_core.model.attention import Attention, ForwardContext, Rotary, attention_mask, rms_norm
from alrt_core.model.embeddings_extra import BigramHash, SmearGate, ValueEmbedding, previous_tokens
from alrt_core.model.factorized import FactorizedLinear
from alrt_core.model.kv_cache import KVCache
from alrt_core.model.layer_sets import layer_schedule, parse_layer_set, parse_span

__all__ = ["GPT", "PROJECTION_KINDS", "Rotary", "layer_kind", "layer_name", "projection_shape", "rms_norm"]

PROJECTION_KINDS = ("q", "k", "v", "o", "up", "down")


class MLP(nn.Module):
    """LeakyReLU(0.5)² MLP: keeps a small gradient for negative pre-activations, unlike relu²."""

    def __init__(self, config: ModelConfig, ranks: dict[str, int | None]) -> None:
        super().__init__()
        self.up = FactorizedLinear(config.model_dim, config.mlp_hidden, ranks["up"])
        self.down = FactorizedLinear(config.mlp_hidden, config.model_dim, ranks["down"], zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.leaky_relu(self.up(x), negative_slope=0.5).square())


class Block(nn.Module):
    def __init__(
        self, config: ModelConfig, ranks: dict[str, int | None], rotary: Rotary, index: int, *, xsa: bool = False,
        value_embed: bool = False,
    ) -> None:
        super().__init__()
        dim = config.model_dim
        self.attn = Attention(config, ranks, rotary, xsa=xsa, value_embed=value_embed)
        self.mlp = MLP(config, ranks)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        # resid_mix[0] weighs the running stream, resid_mix[1] the initial embedding stream x0.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim)))) if config.resid_mix else None
        # depth_norm_scale: deeper blocks read a smaller normed input, 1/sqrt(index+1) (by block, not application).
        self.input_scale = 1.0 / math.sqrt(index + 1) if config.depth_norm_scale else 1.0
        # Parallel residual: attention and MLP both read the (mixed) block input; their outputs are added.
        self.parallel = config.parallel_from is not None and index >= config.parallel_from

    def _norm(self, x: Tensor) -> Tensor:
        normed = rms_norm(x)
        return normed * self.input_scale if self.input_scale != 1.0 else normed

    def forward(self, x: Tensor, x0: Tensor, slot: int, cache: KVCache | None, ctx: ForwardContext) -> Tensor:
        if self.resid_mix is not None:
            mix = self.resid_mix.to(x.dtype)
            x = mix[0] * x + mix[1] * x0
        normed = self._norm(x)
        attended = self.attn_scale.to(x.dtype) * self.attn(normed, slot, cache, ctx)
        if self.parallel:
            return x + attended + self.mlp_scale.to(x.dtype) * self.mlp(normed)
        x = x + attended
        return x + self.mlp_scale.to(x.dtype) * self.mlp(self._norm(x))


class FinalNorm(nn.Module):
    """The RMSNorm before the head, as a module so that calibration can hook the head's input."""

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, layer_ranks: Mapping[str, int | None] | int | None = None) -> None:
        """Build the model. `layer_ranks` gives each projection's rank by name (e.g. from a checkpoint; names not
        given are dense), or one rank for every projection (capped at each one's smaller dimension); None = dense."""
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size must be resolved (from the tokenizer) before building the model")
        config.validate()
        self.config = config
        layers = config.num_layers
        rotary = Rotary(config.head_dim, config.rope_dims or config.head_dim, config.seq_len, config.rope_base)
        self.embed = nn.Embedding(config.vocab_size, config.model_dim)
        xsa = parse_layer_set(config.xsa_layers, layers, key="xsa_layers")
        value_embed = parse_layer_set(config.value_embed_layers, layers, key="value_embed_layers")
        blocks = []
        for index in range(layers):
            ranks: dict[str, int | None] = {}
            for kind in PROJECTION_KINDS:
                if isinstance(layer_ranks, int):
                    ranks[kind] = min(layer_ranks, *projection_shape(config, kind))
                else:
                    ranks[kind] = (layer_ranks or {}).get(layer_name(index, kind))
            blocks.append(Block(config, ranks, rotary, index, xsa=index in xsa, value_embed=index in value_embed))
        self.blocks = nn.ModuleList(blocks)
        # Depth recurrence: the looped schedule runs the span recur_loops times. Training uses it once the trainer
        # calls set_recurrence(True) (at recur_start_frac); eval mode, and any model no trainer switched off
        # (loaded for generation, export or TTT), always loops. The KV cache has a slot per application.
        self.recur_span = parse_span(config.recur_layers, layers)
        self.recur_active: bool | None = None  # None: never set by a trainer (loops)
        self._plain_schedule = list(range(layers))
        self._looped_schedule = layer_schedule(layers, self.recur_span, config.recur_loops)
        # U-Net skips pair the first half of the layer applications with the second half, in reverse.
        applications = len(self._looped_schedule)
        encoder = applications // 2 if config.unet_skips else 0
        num_skips = min(encoder, applications - encoder)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, config.model_dim)) if num_skips else None
        self.head = None if config.tie_embeddings else nn.Linear(config.model_dim, config.vocab_size, bias=False)
        # skip_gates: x = lerp(w·skip, x, sigmoid(g)); g = 0 starts at an even mix.
        self.skip_gates = nn.Parameter(torch.zeros(num_skips, config.model_dim)) if num_skips and config.skip_gates else None
        self.bigram = (BigramHash(config.bigram_hash_size, config.bigram_dim, config.model_dim, config.bigram_scale_init)
                       if config.bigram_hash_size else None)
        self.smear = SmearGate(config.attn_gate_dims) if config.smear_gate else None
        kv_dim = config.num_kv_heads * config.head_dim
        self.value_embed = ValueEmbedding(config.vocab_size, config.value_embed_dim, kv_dim) if value_embed else None
        self.final_norm = FinalNorm()
        with torch.no_grad():
            self.embed.weight.normal_(0.0, config.embed_init_std)
            if self.head is not None:
                self.head.weight.zero_()

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def projections(self) -> dict[str, FactorizedLinear]:
        """Every factorisable projection by its stable name, e.g. `blocks.3.attn.q`."""
        return {name: module for name, module in self.named_modules() if isinstance(module, FactorizedLinear)}

    def extra_tables(self) -> dict[str, nn.Parameter]:
        """Lookup tables besides the token embedding (BigramHash, value embeddings): trained like the embedding,
        stored at the embedding's bits."""
        modules = {"bigram": self.bigram, "value_embed": self.value_embed}
        return {f"{name}.table.weight": module.table.weight for name, module in modules.items() if module is not None}

    def extra_matrices(self) -> dict[str, nn.Parameter]:
        """Those tables' projections to the model width: Muon matrices, never factorised, stored at 8 bits."""
        modules = {"bigram": self.bigram, "value_embed": self.value_embed}
        return {f"{name}.proj.weight": module.proj.weight for name, module in modules.items() if module is not None}

    def layer_ranks(self) -> dict[str, int | None]:
        return {name: module.rank for name, module in self.projections().items()}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_recurrence(self, active: bool) -> bool:
        """Switch depth recurrence on or off for training (eval always loops); True when this call turned it on
        (the first call of a run counts as turning on when `active`). No-op without `recur_layers`."""
        if self.recur_span is None:
            return False
        switched_on = active and self.recur_active is not True
        self.recur_active = active
        return switched_on

    def layer_schedule(self) -> list[int]:
        """The block run at each layer application of the next forward call."""
        looped = self.recur_span is not None and (self.recur_active is not False or not self.training)
        return self._looped_schedule if looped else self._plain_schedule

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype = torch.float32) -> KVCache:
        config = self.config
        return KVCache(
            len(self._looped_schedule), batch_size, config.num_kv_heads, max_len or config.seq_len, config.head_dim,
            dtype=dtype, device=self.embed.weight.device,
        )

    def forward(
        self,
        input_ids: Tensor,
        targets: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        reduction: str = "mean",
        logits_from: int = 0,
    ) -> Tensor:
        """Logits (batch, time, vocab) without targets; the cross-entropy (mean, sum or per token) with them.

        `logits_from=k` computes logits only for positions k.. (the head is skipped for context-only positions,
        as in sliding-window scoring); targets then cover those positions only."""
        config = self.config
        start = cache.length if cache is not None else 0
        if cache is not None and (self.smear is not None or self.bigram is not None or config.doc_mask):
            cache.write_tokens(input_ids)  # these features read earlier tokens
        x = self.embed(input_ids)
        if self.smear is not None or self.bigram is not None:
            before = cache.tokens[:, start - 1] if cache is not None and start > 0 else None
            previous = previous_tokens(input_ids, before, config.bos_id)
            if self.smear is not None:
                x = self.smear(x, self.embed(previous.clamp(min=0)), previous)
            if self.bigram is not None:
                x = x + self.bigram(input_ids, previous)
        x = rms_norm(x)
        history = None
        if config.doc_mask:
            history = cache.tokens[:, : start + input_ids.shape[1]] if cache is not None else input_ids
        mask, causal = attention_mask(input_ids.shape[1], start, history, config.bos_id, input_ids.device)
        value_embed = self.value_embed(input_ids) if self.value_embed is not None else None
        ctx = ForwardContext(start, mask, causal, value_embed)
        x0 = x
        schedule = self.layer_schedule()
        num_encoder = len(schedule) // 2 if self.skip_weights is not None else 0
        skips: list[Tensor] = []
        for slot, index in enumerate(schedule):
            if slot >= num_encoder and skips:
                x = self._join_skip(x, skips.pop(), slot - num_encoder)
            x = self.blocks[index](x, x0, slot, cache, ctx)
            if slot < num_encoder:
                skips.append(x)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        x = self.final_norm(x[:, logits_from:] if logits_from else x)
        logits = F.linear(x, self.embed.weight) if self.head is None else self.head(x)
        cap = self.config.logit_softcap
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)
        return losses.view_as(targets) if reduction == "none" else losses

    def _join_skip(self, x: Tensor, skip: Tensor, index: int) -> Tensor:
        assert self.skip_weights is not None
        scaled = self.skip_weights[index].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + scaled
        return torch.lerp(scaled, x, torch.sigmoid(self.skip_gates[index].to(x.dtype)))


def projection_shape(config: ModelConfig, kind: str) -> tuple[int, int]:
    """(out_features, in_features) of a projection kind."""
    kv_dim = config.num_kv_heads * config.head_dim
    return {
        "q": (config.model_dim, config.model_dim),
        "k": (kv_dim, config.model_dim),
        "v": (kv_dim, config.model_dim),
        "o": (config.model_dim, config.model_dim),
        "up": (config.mlp_hidden, config.model_dim),
        "down": (config.model_dim, config.mlp_hidden),
    }[kind]


def layer_kind(name: str) -> str:
    """The projection kind of a layer name: `blocks.3.attn.q` -> `q`."""
    return name.rsplit(".", 1)[-1]


def layer_name(index: int, kind: str) -> str:
    return f"blocks.{index}.{'mlp' if kind in ('up', 'down') else 'attn'}.{kind}"


def uniform_baseline_nats(vocab_size: int) -> float:
    """Loss of a model that predicts every token with probability 1/V."""
    return math.log(vocab_size)

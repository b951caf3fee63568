"""The GPT: one class, one forward path, configured by `ModelConfig`.

Training, evaluation, generation (through `KVCache`) and export all call `GPT.forward`. Every Q/K/V/O and MLP
projection is a `FactorizedLinear`, dense or `U·V` with its own rank. The architecture switches of `ModelConfig`
(XSA, attention gates, depth scaling, skip gates, parallel residuals, depth recurrence, BigramHash, SmearGate,
value embeddings, value residual, document mask) are settled when the model is built: the input stage
(`input_stage.py`), the skip stage (`unet_skips.py`), the recurrence mode (`recurrence.py`) and the output head
(`output_head.py`) are each the identity, or the plain variant, when their switches are off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alrt_core.config import ModelConfig
from alrt_core.model.attention import Attention, ForwardContext, Rotary, attention_mask, rms_norm
from alrt_core.model.embeddings_extra import BigramHash, SmearGate, ValueEmbedding
from alrt_core.model.factorized import FactorizedLinear
from alrt_core.model.input_stage import InputStage
from alrt_core.model.kv_cache import KVCache, StaticKVCache
from alrt_core.model.layer_sets import parse_layer_set
from alrt_core.model.output_head import OutputHead, token_cross_entropy
from alrt_core.model.recurrence import DepthRecurrence
from alrt_core.model.unet_skips import UNetSkips, num_skips

__all__ = ["GPT", "PROJECTION_KINDS", "Rotary", "layer_kind", "layer_name", "projection_shape", "rms_norm",
           "uniform_ranks"]

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
    def __init__(self, config: ModelConfig, layer_ranks: Mapping[str, int | None] | None = None) -> None:
        """Build the model. `layer_ranks` gives projections their ranks by name (e.g. from a checkpoint, or
        `uniform_ranks`); a name it does not give, or None for all, is dense."""
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size must be resolved (from the tokenizer) before building the model")
        config.validate()
        self.config = config
        layers = config.num_layers
        ranks = layer_ranks or {}
        rotary = Rotary(config.head_dim, config.rope_dims or config.head_dim, config.seq_len, config.rope_base)
        self.embed = nn.Embedding(config.vocab_size, config.model_dim)
        xsa = parse_layer_set(config.xsa_layers, layers, key="xsa_layers")
        value_embed = parse_layer_set(config.value_embed_layers, layers, key="value_embed_layers")
        self.blocks = nn.ModuleList(
            Block(config, {kind: ranks.get(layer_name(index, kind)) for kind in PROJECTION_KINDS}, rotary, index,
                  xsa=index in xsa, value_embed=index in value_embed)
            for index in range(layers)
        )
        self.recurrence = DepthRecurrence(config)
        # U-Net skip weights and gates (unet_skips.py): one row per skip of the looped schedule.
        skips = num_skips(len(self.recurrence.looped), config.unet_skips)
        self.skip_weights = nn.Parameter(torch.ones(skips, config.model_dim)) if skips else None
        self.head = None if config.tie_embeddings else nn.Linear(config.model_dim, config.vocab_size, bias=False)
        self.skip_gates = nn.Parameter(torch.zeros(skips, config.model_dim)) if skips and config.skip_gates else None
        self.bigram = (BigramHash(config.bigram_hash_size, config.bigram_dim, config.model_dim, config.bigram_scale_init)
                       if config.bigram_hash_size else None)
        self.smear = SmearGate(config.attn_gate_dims) if config.smear_gate else None
        kv_dim = config.num_kv_heads * config.head_dim
        self.value_embed = ValueEmbedding(config.vocab_size, config.value_embed_dim, kv_dim) if value_embed else None
        self.final_norm = FinalNorm()
        # The stages hold the modules above without registering them again, so every parameter keeps its one name.
        self.input_stage = InputStage(self.embed, self.smear, self.bigram, config.bos_id)
        self.output_head = OutputHead(self.embed, self.head, config.logit_softcap)
        # The cache records the token history for the switches that read earlier tokens.
        self.reads_token_history = self.input_stage.reads_previous_tokens or config.doc_mask
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
        """A trainer switches depth recurrence on or off for training (eval always loops); True when this call
        turned it on. No-op without `recur_layers` (see `DepthRecurrence.switch`)."""
        return self.recurrence.switch(active)

    def layer_schedule(self) -> list[int]:
        """The block run at each layer application of the next forward call."""
        return self.recurrence.schedule(self.training)

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype = torch.float32, *,
                  static: bool = False) -> KVCache:
        """A cache for `batch_size` rows; `static` gives fixed shapes for a compiled decode step (`StaticKVCache`)."""
        config = self.config
        kind = StaticKVCache if static else KVCache
        return kind(
            len(self.recurrence.looped), batch_size, config.num_kv_heads, max_len or config.seq_len, config.head_dim,
            dtype=dtype, device=self.embed.weight.device,
        )

    def forward(self, input_ids: Tensor, targets: Tensor | None = None, *, cache: KVCache | None = None,
                reduction: str = "mean", logits_from: int = 0) -> Tensor:
        """Logits (batch, time, vocab), or with `targets` their cross-entropy (`reduction`: mean, sum or none);
        `logits_from=k` runs the head on positions k.. only (targets then cover those). The residual stream:

            ids ─▶ input_stage ─▶ x0 ──┬──────────────────────────────────▶ x0 into every block (resid_mix)
                                       ▼ x
              ┌─▶ skips.join ─▶ blocks[index] ─▶ skips.keep ─┐   for each (slot, index) of the layer schedule:
              └────────────────────── x ◀────────────────────┘   join in the decoder half, keep in the encoder half
            x ─▶ final_norm ─▶ output_head (head, softcap) ─▶ logits ─▶ cross-entropy with targets"""
        ctx = self._context(input_ids, cache)
        x = x0 = self.input_stage(input_ids, ctx, cache)
        schedule = self.layer_schedule()
        skips = UNetSkips(self.skip_weights, self.skip_gates, len(schedule))
        for slot, index in enumerate(schedule):
            x = self.blocks[index](skips.join(x, slot), x0, slot, cache, ctx)
            skips.keep(x, slot)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        logits = self.output_head(self.final_norm(x[:, logits_from:] if logits_from else x))
        return logits if targets is None else token_cross_entropy(logits, targets, reduction)

    def _context(self, input_ids: Tensor, cache: KVCache | None) -> ForwardContext:
        """What the layer applications of a call share; first records the call's tokens where the cache keeps them."""
        # Rows of a cache at different lengths (batched serving), or of a static cache, get per-row positions;
        # otherwise the call has one start.
        length = input_ids.shape[1]
        if cache is not None:
            cache.check_room(length)
        row_starts = cache.row_starts() if cache is not None else None
        positions = None if row_starts is None else row_starts[:, None] + torch.arange(length, device=input_ids.device)
        start = cache.length if cache is not None and row_starts is None else 0
        per_row = cache is not None and cache.per_row  # rows read at their own positions
        previous = cache.previous_tokens() if per_row and self.reads_token_history else None
        if cache is not None and self.reads_token_history:
            cache.write_tokens(input_ids)
        key_count = None if cache is None or positions is None else cache.key_count(positions)
        history = None
        if self.config.doc_mask:
            end = start + length if key_count is None else key_count
            history = input_ids if cache is None else cache.selected_tokens(end) if per_row else cache.tokens[:, :end]
        mask, causal = attention_mask(length, start, history, self.config.bos_id, input_ids.device, positions=positions,
                                      key_count=key_count)
        value_embed = self.value_embed(input_ids) if self.value_embed is not None else None
        return ForwardContext(start, mask, causal, value_embed, positions=positions, previous_tokens=previous)


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


def uniform_ranks(config: ModelConfig, rank: int | None) -> dict[str, int | None]:
    """`GPT` layer ranks giving every projection `rank`, capped at each one's smaller dimension; None: all dense."""
    return {
        layer_name(index, kind): None if rank is None else min(rank, *projection_shape(config, kind))
        for index in range(config.num_layers) for kind in PROJECTION_KINDS
    }


def uniform_baseline_nats(vocab_size: int) -> float:
    """Loss of a model that predicts every token with probability 1/V."""
    return math.log(vocab_size)

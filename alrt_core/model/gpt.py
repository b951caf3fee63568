"""The GPT: one class, one forward path, configured by `ModelConfig`.

Training, evaluation, generation (through `KVCache`) and export all call `GPT.forward`. Every Q/K/V/O and MLP
projection is a `FactorizedLinear`, dense or `U·V` with its own rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alrt_core.config import ModelConfig
from alrt_core.model.factorized import FactorizedLinear
from alrt_core.model.kv_cache import KVCache

PROJECTION_KINDS = ("q", "k", "v", "o", "up", "down")


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """RoPE tables for the first `rotary_dims` channels of each head, sized to the trained context."""

    def __init__(self, head_dim: int, rotary_dims: int, max_len: int, base: float) -> None:
        super().__init__()
        self.rotary_dims = rotary_dims
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dims, 2, dtype=torch.float32) / rotary_dims))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, start: int) -> Tensor:
        """Rotate x of shape (batch, heads, time, head_dim) for positions start .. start+time-1."""
        length = x.shape[2]
        if start + length > self.cos.shape[0]:
            raise ValueError(f"positions up to {start + length} exceed the RoPE table of {self.cos.shape[0]}")
        cos = self.cos[start : start + length].to(x.dtype)
        sin = self.sin[start : start + length].to(x.dtype)
        rotated, passthrough = x[..., : self.rotary_dims], x[..., self.rotary_dims :]
        half = self.rotary_dims // 2
        x1, x2 = rotated[..., :half], rotated[..., half:]
        out = torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
        return torch.cat((out, passthrough), dim=-1) if passthrough.numel() else out


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, ranks: dict[str, int | None], rotary: Rotary) -> None:
        super().__init__()
        dim, kv_dim = config.model_dim, config.num_kv_heads * config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.qk_norm = config.qk_norm
        self.q = FactorizedLinear(dim, dim, ranks["q"])
        self.k = FactorizedLinear(dim, kv_dim, ranks["k"])
        self.v = FactorizedLinear(dim, kv_dim, ranks["v"])
        self.o = FactorizedLinear(dim, dim, ranks["o"], zero_init=True)
        self.q_gain = nn.Parameter(torch.full((config.num_heads,), config.qk_gain_init))
        self.rotary = rotary

    def forward(self, x: Tensor, layer: int, cache: KVCache | None) -> Tensor:
        batch, length, dim = x.shape
        q = self.q(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        start = cache.length if cache is not None else 0
        q, k = self.rotary(q, start), self.rotary(k, start)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        if cache is not None:
            k, v = cache.write(layer, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)
        mask, causal = None, True
        if start > 0:
            # Cached prefix: queries at start.. see every cached key and the causal part of the new ones.
            causal = False
            if length > 1:
                key_pos = torch.arange(k.shape[2], device=x.device)
                mask = key_pos[None, :] <= (start + torch.arange(length, device=x.device))[:, None]
        if self.num_kv_heads != self.num_heads:
            # Repeating K/V keeps the fused SDPA kernels available on every backend (enable_gqa is not everywhere).
            repeat = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.o(y.transpose(1, 2).reshape(batch, length, dim))


class MLP(nn.Module):
    """LeakyReLU(0.5)² MLP: keeps a small gradient for negative pre-activations, unlike relu²."""

    def __init__(self, config: ModelConfig, ranks: dict[str, int | None]) -> None:
        super().__init__()
        self.up = FactorizedLinear(config.model_dim, config.mlp_hidden, ranks["up"])
        self.down = FactorizedLinear(config.mlp_hidden, config.model_dim, ranks["down"], zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.leaky_relu(self.up(x), negative_slope=0.5).square())


class Block(nn.Module):
    def __init__(self, config: ModelConfig, ranks: dict[str, int | None], rotary: Rotary) -> None:
        super().__init__()
        dim = config.model_dim
        self.attn = Attention(config, ranks, rotary)
        self.mlp = MLP(config, ranks)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        # resid_mix[0] weighs the running stream, resid_mix[1] the initial embedding stream x0.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim)))) if config.resid_mix else None

    def forward(self, x: Tensor, x0: Tensor, layer: int, cache: KVCache | None) -> Tensor:
        if self.resid_mix is not None:
            mix = self.resid_mix.to(x.dtype)
            x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x), layer, cache)
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, layer_ranks: Mapping[str, int | None] | int | None = None) -> None:
        """Build the model. `layer_ranks` gives each projection's rank by name (e.g. from a checkpoint; names not
        given are dense), or one rank for every projection (capped at each one's smaller dimension); None = dense."""
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size must be resolved (from the tokenizer) before building the model")
        config.validate()
        self.config = config
        rotary = Rotary(config.head_dim, config.rope_dims or config.head_dim, config.seq_len, config.rope_base)
        self.embed = nn.Embedding(config.vocab_size, config.model_dim)
        blocks = []
        for index in range(config.num_layers):
            ranks: dict[str, int | None] = {}
            for kind in PROJECTION_KINDS:
                if isinstance(layer_ranks, int):
                    ranks[kind] = min(layer_ranks, *projection_shape(config, kind))
                else:
                    ranks[kind] = (layer_ranks or {}).get(layer_name(index, kind))
            blocks.append(Block(config, ranks, rotary))
        self.blocks = nn.ModuleList(blocks)
        self.num_encoder = config.num_layers // 2 if config.unet_skips else 0
        num_skips = min(self.num_encoder, config.num_layers - self.num_encoder)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, config.model_dim)) if num_skips else None
        self.head = None if config.tie_embeddings else nn.Linear(config.model_dim, config.vocab_size, bias=False)
        with torch.no_grad():
            self.embed.weight.normal_(0.0, config.embed_init_std)
            if self.head is not None:
                self.head.weight.zero_()

    def projections(self) -> dict[str, FactorizedLinear]:
        """Every factorisable projection by its stable name, e.g. `blocks.3.attn.q`."""
        return {name: module for name, module in self.named_modules() if isinstance(module, FactorizedLinear)}

    def layer_ranks(self) -> dict[str, int | None]:
        return {name: module.rank for name, module in self.projections().items()}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype = torch.float32) -> KVCache:
        config = self.config
        return KVCache(
            config.num_layers, batch_size, config.num_kv_heads, max_len or config.seq_len, config.head_dim,
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
        x = rms_norm(self.embed(input_ids))
        x0 = x
        skips: list[Tensor] = []
        for index, block in enumerate(self.blocks):
            if index < self.num_encoder:
                x = block(x, x0, index, cache)
                skips.append(x)
                continue
            if skips and self.skip_weights is not None:
                x = x + self.skip_weights[index - self.num_encoder].to(x.dtype) * skips.pop()
            x = block(x, x0, index, cache)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        x = rms_norm(x[:, logits_from:] if logits_from else x)
        logits = F.linear(x, self.embed.weight) if self.head is None else self.head(x)
        cap = self.config.logit_softcap
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)
        return losses.view_as(targets) if reduction == "none" else losses


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

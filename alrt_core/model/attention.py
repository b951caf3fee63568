"""Causal self-attention of the GPT: RoPE, QK-norm with per-head query gain, GQA, KV cache, and the attention
switches (XSA, output gate, value embeddings, value residual) plus the document mask shared by all layers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alrt_core.config import ModelConfig
from alrt_core.model.factorized import FactorizedLinear
from alrt_core.model.kv_cache import KVCache


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

    def forward(self, x: Tensor, start: int, positions: Tensor | None = None) -> Tensor:
        """Rotate x of shape (batch, heads, time, head_dim) for positions start .. start+time-1, or for the per-row
        `positions` (batch, time) of cached rows at different lengths (the cache has bounded them)."""
        length = x.shape[2]
        if positions is None:
            if start + length > self.cos.shape[0]:
                raise ValueError(f"positions up to {start + length} exceed the RoPE table of {self.cos.shape[0]}")
            cos = self.cos[start : start + length].to(x.dtype)
            sin = self.sin[start : start + length].to(x.dtype)
        else:  # (batch, 1, time, rotary/2): the same table entries, gathered per row
            cos, sin = self.cos[positions][:, None].to(x.dtype), self.sin[positions][:, None].to(x.dtype)
        rotated, passthrough = x[..., : self.rotary_dims], x[..., self.rotary_dims :]
        half = self.rotary_dims // 2
        x1, x2 = rotated[..., :half], rotated[..., half:]
        out = torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
        return torch.cat((out, passthrough), dim=-1) if passthrough.numel() else out


@dataclass
class ForwardContext:
    """What every layer application of one forward call shares."""

    start: int  # position of the call's first token (the cache length before the call)
    mask: Tensor | None  # boolean attention mask (…, time, keys), True = may attend; None: see `causal`
    causal: bool  # SDPA's is_causal when there is no mask
    value_embed: Tensor | None = None  # (batch, time, kv_dim) value embeddings, when some block adds them
    v_first: Tensor | None = None  # value residual: the first layer application's V, set by it
    positions: Tensor | None = None  # (batch, time) each row's query positions when cached rows differ in length
    previous_tokens: Tensor | None = None  # (batch,) each such row's token before the call (SmearGate, BigramHash)


def attention_mask(length: int, start: int, history: Tensor | None, bos_id: int, device: torch.device, *,
                   positions: Tensor | None = None, key_count: int | None = None) -> tuple[Tensor | None, bool]:
    """(mask, is_causal) for `length` queries after `start` cached positions (or at `positions`, batch × time).

    `history` (batch, start + length), the token ids of the cached prefix and the call, turns on the document
    mask: a query sees only keys of its own document, where a document starts at each BOS (cumulative BOS count).
    Rows at different lengths: a query at position p of its row sees keys up to p, so a shorter row never reads the
    positions past its own end that the longer rows' keys fill. Per-row calls read `key_count` cached keys (the
    longest row's, or all of a static cache's)."""
    if positions is not None:
        assert key_count is not None
        keys = torch.arange(key_count, device=device)
        allowed = keys[None, None, :] <= positions[:, :, None]
        if history is not None:
            document = torch.cumsum((history == bos_id).to(torch.int32), dim=1)
            allowed = allowed & (document[:, None, :] == document.gather(1, positions)[:, :, None])
        return allowed[:, None], False
    if history is None:
        if start == 0:
            return None, True
        if length == 1:
            return None, False  # one new query after a cached prefix sees every key
    keys = torch.arange(start + length, device=device)
    allowed = keys[None, :] <= keys[start:, None]  # (queries, keys): causal over the cached prefix and the call
    if history is None:
        return allowed, False
    document = torch.cumsum((history == bos_id).to(torch.int32), dim=1)
    same_document = document[:, None, :] == document[:, start:, None]
    return (same_document & allowed)[:, None], False


def exclude_self_value(y: Tensor, v: Tensor) -> Tensor:
    """XSA: y (batch, heads, time, d) minus each head's component along its own position's unit value vector
    (v: batch, kv_heads, time, d; the query heads of a KV group share that group's value)."""
    batch, heads, length, dim = y.shape
    grouped = y.reshape(batch, v.shape[1], heads // v.shape[1], length, dim)
    unit = F.normalize(v, dim=-1).unsqueeze(2)
    return (grouped - (grouped * unit).sum(dim=-1, keepdim=True) * unit).reshape(batch, heads, length, dim)


class Attention(nn.Module):
    def __init__(
        self, config: ModelConfig, ranks: dict[str, int | None], rotary: Rotary, *, xsa: bool = False,
        value_embed: bool = False,
    ) -> None:
        super().__init__()
        dim, kv_dim = config.model_dim, config.num_kv_heads * config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        # QK-norm: each head's queries and keys are RMS-normed before RoPE; without it they pass as they are.
        self.qk_norm: Callable[[Tensor], Tensor] = rms_norm if config.qk_norm else unchanged
        self.q = FactorizedLinear(dim, dim, ranks["q"])
        self.k = FactorizedLinear(dim, kv_dim, ranks["k"])
        self.v = FactorizedLinear(dim, kv_dim, ranks["v"])
        self.o = FactorizedLinear(dim, dim, ranks["o"], zero_init=True)
        self.q_gain = nn.Parameter(torch.full((config.num_heads,), config.qk_gain_init))
        self.rotary = rotary
        self.xsa = xsa
        # Output gate sigmoid(W·x) per head: dense reads the whole input (small random init), sparse only its first
        # attn_gate_dims channels (zero init). Either starts near 0.5; attn_scale absorbs the factor.
        self.gate_dims = config.attn_gate_dims if config.attn_gate == "sparse" else dim
        self.gate = nn.Linear(self.gate_dims, config.num_heads, bias=False) if config.attn_gate != "none" else None
        if self.gate is not None:
            with torch.no_grad():
                if config.attn_gate == "dense":
                    self.gate.weight.normal_(0.0, 0.01)
                else:
                    self.gate.weight.zero_()
        self.value_embed_scale = nn.Parameter(torch.full((1,), 0.1)) if value_embed else None
        # Value residual: V = l0·V_first + l1·V (the first application mixes its V with itself, so l0 + l1 = 1 there).
        self.value_mix = nn.Parameter(torch.tensor([0.5, 0.5])) if config.value_residual else None

    def forward(self, x: Tensor, slot: int, cache: KVCache | None, ctx: ForwardContext) -> Tensor:
        """Attention of x (batch, time, model_dim) at layer application `slot`, which is also its KV-cache slot."""
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self._values(x, ctx)
        q = self.rotary(self.qk_norm(q), ctx.start, ctx.positions)
        k = self.rotary(self.qk_norm(k), ctx.start, ctx.positions)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        keys, values = (k, v) if cache is None else cached_keys_values(cache, slot, k, v, q.dtype)
        return self._output(grouped_attention(q, keys, values, ctx), v, x)

    def _values(self, x: Tensor, ctx: ForwardContext) -> Tensor:
        """V (batch, kv_heads, time, head_dim), with this block's value embedding and the value residual when on."""
        batch, length, _ = x.shape
        v = self.v(x)
        if self.value_embed_scale is not None:
            assert ctx.value_embed is not None
            v = v + (self.value_embed_scale * ctx.value_embed).to(v.dtype)
        v = v.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.value_mix is None:
            return v
        if ctx.v_first is None:
            ctx.v_first = v
        mix = self.value_mix.to(v.dtype)
        return mix[0] * ctx.v_first + mix[1] * v

    def _output(self, y: Tensor, own_v: Tensor, x: Tensor) -> Tensor:
        """The heads' outputs y (batch, heads, time, head_dim) after XSA and the output gate when on, projected."""
        if self.xsa:
            y = exclude_self_value(y, own_v)
        if self.gate is not None:
            gate = torch.sigmoid(self.gate(x[..., : self.gate_dims]))  # (batch, time, heads)
            y = y * gate.transpose(1, 2)[..., None]
        return self.o(y.transpose(1, 2).reshape(x.shape))


def unchanged(x: Tensor) -> Tensor:
    return x


def cached_keys_values(cache: KVCache, slot: int, k: Tensor, v: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Every cached key and value of `slot` after writing this call's, in the queries' dtype."""
    keys, values = cache.write(slot, k, v)
    return keys.to(dtype), values.to(dtype)


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, ctx: ForwardContext) -> Tensor:
    """SDPA of q (batch, heads, time, d) over k, v (batch, kv_heads, keys, d), a KV head serving heads/kv_heads
    query heads."""
    batch, heads, length, dim = q.shape
    repeat = heads // k.shape[1]
    if repeat > 1 and length == 1:
        # One decoding query per head: the `repeat` query heads of a KV group become `repeat` queries of that
        # group, so SDPA reads the cached K/V in place instead of a copy repeated over the whole context. A
        # per-row mask (batch, 1, 1, keys) applies to every query of the group alike.
        grouped = q.view(batch, k.shape[1], repeat, dim)
        return F.scaled_dot_product_attention(grouped, k, v, attn_mask=ctx.mask).view(batch, heads, 1, dim)
    if repeat > 1:
        # Repeating K/V keeps the fused SDPA kernels on every backend (enable_gqa is not everywhere).
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, is_causal=ctx.causal and ctx.mask is None)

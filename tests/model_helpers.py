"""Helpers shared by model and generation tests: the architecture switches to test, perturbed weights, greedy
decoding by full recomputation, and feeding a sequence through the KV cache in pieces."""

from __future__ import annotations

import torch
from torch import Tensor

from alrt_core.config import ModelConfig
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.model.factorized import FactorizedLinear
from alrt_core.model.gpt import GPT, uniform_ranks
from alrt_core.training.muon import Muon

# Each architecture switch (ModelConfig changes for a 4-block model) with the parameters it adds (name substrings).
SWITCHES: dict[str, tuple[dict, tuple[str, ...]]] = {
    "xsa": ({"xsa_layers": "1-"}, ()),
    "attn_gate_dense": ({"attn_gate": "dense"}, ("attn.gate.weight",)),
    "attn_gate_sparse": ({"attn_gate": "sparse", "attn_gate_dims": 8}, ("attn.gate.weight",)),
    "depth_norm_scale": ({"depth_norm_scale": True}, ()),
    "skip_gates": ({"skip_gates": True}, ("skip_gates",)),
    "parallel": ({"parallel_from": 2}, ()),
    "recurrence": ({"recur_layers": "1-2", "recur_loops": 3}, ()),
    "bigram": ({"bigram_hash_size": 61, "bigram_dim": 16}, ("bigram.table.weight", "bigram.proj.weight", "bigram.scale")),
    "smear": ({"smear_gate": True, "attn_gate_dims": 8}, ("smear.gate.weight", "smear.lam")),
    "value_embed": ({"value_embed_layers": "0,3", "value_embed_dim": 16},
                    ("value_embed.table.weight", "value_embed.proj.weight", "attn.value_embed_scale")),
    "value_residual": ({"value_residual": True}, ("attn.value_mix",)),
    "doc_mask": ({"doc_mask": True}, ()),
}
ALL_ON = {
    "xsa_layers": "all", "attn_gate": "sparse", "attn_gate_dims": 8, "depth_norm_scale": True, "skip_gates": True,
    "parallel_from": 2, "recur_layers": "1-2", "recur_loops": 2, "bigram_hash_size": 61, "bigram_dim": 16,
    "smear_gate": True, "value_embed_layers": "0,2", "value_embed_dim": 16, "value_residual": True, "doc_mask": True,
}


def perturb(model: GPT, scale: float = 0.05, seed: int = 0) -> GPT:
    """Add noise to every parameter, so zero-initialised parts (gates, tables, output projections) contribute."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def greedy_by_recompute(model: GPT, ids: list[int], steps: int) -> list[int]:
    """Greedy continuation of `ids`, recomputing the whole sequence for every token (no cache)."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([out]))[0, -1]
            out.append(int(torch.argmax(logits)))
    return out[len(ids) :]


def logits_through_cache(model: GPT, tokens: Tensor, cuts: list[int]) -> Tensor:
    """Logits of `tokens` (batch, time) fed through one KV cache in pieces ending at each cut, then one by one."""
    cache = model.new_cache(batch_size=tokens.shape[0])
    pieces, begin = [], 0
    with torch.no_grad():
        for end in [*cuts, *range(cuts[-1] + 1, tokens.shape[1] + 1)]:
            pieces.append(model(tokens[:, begin:end], cache=cache))
            begin = end
    assert cache.length == tokens.shape[1]
    return torch.cat(pieces, dim=1)


def small_decoder(tokenizer: Tokenizer, seq_len: int = 64, **changes) -> GPT:
    """A 2×32 model with seeded, strongly perturbed weights (varied, non-degenerate greedy text), in eval mode;
    `ranks=R` factorises every projection at rank R, other keys change the ModelConfig."""
    torch.manual_seed(0)
    ranks = changes.pop("ranks", None)
    shape = {"vocab_size": tokenizer.vocab_size, "num_layers": 2, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2,
             "seq_len": seq_len}
    config = ModelConfig(**{**shape, **changes})
    model = GPT(config, layer_ranks=uniform_ranks(config, ranks))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return model.eval()


def train_a_few_steps(layer: FactorizedLinear, optimizer: Muon, steps: int = 3) -> None:
    """Momentum in the optimizer's state, weights moved off their initialisation."""
    for _ in range(steps):
        layer(torch.randn(8, layer.in_features)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()

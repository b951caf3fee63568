"""Hugging Face `LlamaForCausalLM` of our model's shape: the reference side of the throughput benchmarks."""

from __future__ import annotations

from torch import nn

from alrt_core.model.gpt import GPT


def build_reference(ours: GPT, seq_len: int) -> nn.Module:
    """Same width, depth, heads, KV heads and vocabulary, tied embeddings, SDPA; the (gated, 3-matrix) MLP width
    is solved so the parameter counts match ours (a factorised model of ours gets a correspondingly smaller MLP)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    m = ours.config

    def make(intermediate: int) -> nn.Module:
        config = LlamaConfig(
            vocab_size=m.vocab_size, hidden_size=m.model_dim, intermediate_size=intermediate,
            num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
            max_position_embeddings=seq_len, tie_word_embeddings=True, attn_implementation="sdpa", use_cache=False,
        )
        return LlamaForCausalLM(config)

    per_unit = m.num_layers * 3 * m.model_dim  # parameters added per unit of intermediate_size
    base = make(1).num_parameters() - per_unit
    return make(max(1, round((ours.num_parameters() - base) / per_unit)))

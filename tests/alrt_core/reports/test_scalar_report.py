"""Learned scalars: generic discovery, grouping per layer, and the near-zero rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alrt_core.config import ModelConfig
from alrt_core.model.gpt import GPT, uniform_ranks
from alrt_core.reports.scalars import per_layer_groups, scalar_parameters, scalar_report


def tiny(**switches) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2.0,
                         seq_len=16, **switches)
    return GPT(config, layer_ranks=uniform_ranks(config, 8))


def test_scalars_are_found_grouped_and_flagged():
    model = tiny()
    with torch.no_grad():
        model.blocks[1].attn_scale.fill_(0.004)  # driven to 0 from an init of 1
        model.blocks[0].attn.q_gain.copy_(torch.tensor([1.0, 2.0]))
    entries = {entry.name: entry for entry in scalar_report(model)}
    assert set(entries) == {
        *(f"blocks.{b}.{name}" for b in (0, 1) for name in
          ("attn_scale", "mlp_scale", "resid_mix[0]", "resid_mix[1]", "attn.q_gain")),
        "skip_weights[0]",
    }
    assert entries["blocks.1.attn_scale"].flag == "driven to 0"
    assert entries["blocks.1.attn_scale"].init_mean_abs == pytest.approx(1.0)
    # resid_mix[1] starts at 0 and was never trained here: it "stayed at 0"; its [0] row is the ones it started as.
    assert entries["blocks.0.resid_mix[1]"].flag == "stayed at 0"
    assert entries["blocks.0.resid_mix[0]"].flag is None and entries["blocks.0.resid_mix[0]"].mean == 1.0
    q_gain = entries["blocks.0.attn.q_gain"]
    assert q_gain.values == [1.0, 2.0] and q_gain.mean == 1.5 and q_gain.flag is None
    assert q_gain.group == "attn.q_gain" and q_gain.block == 0 and q_gain.description.startswith("query gain")
    assert entries["skip_weights[0]"].block is None and entries["skip_weights[0]"].numel == 32
    groups = per_layer_groups(list(entries.values()))
    assert list(groups["attn_scale"]) == [0, 1] and "skip_weights[0]" not in groups


def test_new_gates_are_discovered_and_sigmoid_gates_are_not_flagged():
    model = tiny(skip_gates=True, smear_gate=True, attn_gate_dims=8, bigram_hash_size=31, bigram_dim=8,
                 value_residual=True)
    model.blocks[0].my_new_gate = nn.Parameter(torch.full((3,), 0.001))  # a feature nobody told the report about
    names = set(scalar_parameters(model))
    assert {"skip_gates", "smear.lam", "smear.gate.weight", "bigram.scale", "blocks.0.attn.value_mix",
            "blocks.0.my_new_gate"} <= names
    # Tables and their projections are matrices, not scalars, however small.
    assert not any(name.startswith(("bigram.table", "bigram.proj", "embed", "blocks.0.attn.q.")) for name in names)
    entries = {entry.name: entry for entry in scalar_report(model)}
    assert entries["skip_gates[0]"].mean == 0.0 and entries["skip_gates[0]"].flag is None  # sigmoid(0): half open
    assert entries["smear.lam"].flag == "stayed at 0"  # λ starts at 0: the feature is off until it is learned
    assert entries["blocks.0.my_new_gate"].flag == "driven to 0"  # no known init: judged by its value alone
    assert entries["bigram.scale"].values == [pytest.approx(0.05)] and entries["bigram.scale"].flag is None
    assert entries["blocks.1.attn.value_mix"].values == [0.5, 0.5]

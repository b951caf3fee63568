"""Choosing the next token: top-k, top-p and the repetition penalty."""

from __future__ import annotations

import torch

from alrt_core.inference.sampling import SamplingConfig, apply_repetition_penalty, next_token


def test_top_k_top_p_and_repetition_penalty():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    picks = {next_token(logits, torch.tensor([]), SamplingConfig(1.0, 2, 1.0, 1.0), torch.Generator().manual_seed(s)) for s in range(50)}
    assert picks == {0, 1}
    nucleus = {next_token(logits, torch.tensor([]), SamplingConfig(1.0, 0, 0.5, 1.0), torch.Generator().manual_seed(s)) for s in range(50)}
    assert nucleus == {0}  # p(0) = 0.64 already covers 0.5
    penalised = apply_repetition_penalty(logits, torch.tensor([0, 4]), 2.0)
    assert penalised.tolist() == [1.5, 2.0, 1.0, 0.0, -2.0]

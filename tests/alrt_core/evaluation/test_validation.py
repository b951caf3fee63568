"""Validation bpb: every token scored exactly once, bytes from the tokenizer, NLL summed exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alrt_core.config import ModelConfig
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.evaluation.validation import evaluate
from alrt_core.model.gpt import GPT


def context_sensitive_model(vocab_size: int, seq_len: int) -> GPT:
    """A small GPT with every weight non-zero, so each prediction depends on its context (a fresh GPT's zero-init
    output projections would make it a bigram model and hide window mistakes)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=vocab_size, num_layers=1, model_dim=16, num_heads=2, num_kv_heads=1, seq_len=seq_len))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    return model.eval()


@pytest.mark.parametrize(("length", "batch"), [(97, 2), (72, 3), (10, 4)])
def test_every_token_is_scored_once_including_a_partial_last_window(small_dataset, length, batch):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = context_sensitive_model(tokenizer.vocab_size, seq_len=24)
    stream = np.asarray([tokenizer.bos_id, *tokenizer.encode("Fair is foul, and foul is fair.\n" * 12)][:length])
    result = evaluate(model, stream, tokenizer, seq_len=24, batch_sequences=batch, device=torch.device("cpu"), autocast=False)
    assert result.tokens == length - 1
    assert result.bytes == tokenizer.count_bytes(stream[:-1], stream[1:])
    expected = 0.0
    with torch.no_grad():
        for begin in range(0, length - 1, 24):
            end = min(begin + 24, length - 1)  # last target of this window
            # Non-overlapping windows; the last one reaches back for a full 24 tokens of context when it can.
            start = max(0, end - 24)
            window = torch.from_numpy(stream[start : end + 1]).long()[None]
            losses = model(window[:, :-1], window[:, 1:], reduction="none")[0]
            expected += float(losses[begin - start :].sum())
    assert result.loss == pytest.approx(expected / (length - 1), rel=1e-5)
    assert result.bpb == pytest.approx(expected / (math.log(2) * result.bytes), rel=1e-5)


def test_max_tokens_evaluates_a_prefix(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=1, model_dim=16, num_heads=2, num_kv_heads=1, seq_len=16))
    stream = np.asarray([tokenizer.bos_id, *tokenizer.encode("To be, or not to be: that is the question.\n" * 8)])
    result = evaluate(model, stream, tokenizer, seq_len=16, batch_sequences=4, device=torch.device("cpu"), autocast=False, max_tokens=40)
    assert result.tokens == 40
    assert result.bytes == tokenizer.count_bytes(stream[:40], stream[1:41])

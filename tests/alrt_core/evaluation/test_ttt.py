"""Legal score-first TTT: nothing is scored after training on it (nor on anything after it), and it adapts."""

from __future__ import annotations

import copy

import numpy as np
import torch
from test_validation import context_sensitive_model

from alrt_core.data.tokenizer import Tokenizer
from alrt_core.evaluation.scoring import score_windows, sliding_windows
from alrt_core.evaluation.ttt import TTTConfig, chunk_windows, score_first_ttt

CONFIG = TTTConfig(chunk_tokens=48, lr=0.05, epochs=2, batch_sequences=2, freeze_blocks=0)


def stream(tokenizer: Tokenizer, length: int = 200) -> np.ndarray:
    text = "Double, double toil and trouble; fire burn and cauldron bubble.\n" * 20
    return np.asarray([tokenizer.bos_id, *tokenizer.encode(text)][: length + 1], dtype=np.int64)


def run_ttt(model, tokens, events=None) -> np.ndarray:
    windows = sliding_windows(tokens.shape[0] - 1, 16, 8)
    return score_first_ttt(copy.deepcopy(model), tokens, windows, CONFIG, seq_len=16, batch_windows=4,
                           device=torch.device("cpu"), autocast=False,
                           on_event=(lambda *e: events.append(e)) if events is not None else None)


def test_every_target_is_scored_before_any_training_that_used_it(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model, tokens = context_sensitive_model(tokenizer.vocab_size, 16), stream(tokenizer)
    events: list[tuple[str, int, int]] = []
    run_ttt(model, tokens, events)
    trained_up_to = 0
    scored = set()
    for kind, first, last in events:
        if kind == "score":
            assert first > trained_up_to  # nothing scored here was trained on before
            scored |= set(range(first, last + 1))
        else:
            assert set(range(first, last + 1)) <= scored  # training only on already-scored targets
            trained_up_to = max(trained_up_to, last)
    assert scored == set(range(1, 201)) and trained_up_to > 0
    assert [e[0] for e in events].count("train") == 200 // 48  # every chunk but the last one


def test_a_token_never_changes_the_scores_before_it(small_dataset):
    """Black box: change token u; every target before u must score exactly the same (causal windows, and no
    update that used u or anything after it happened before those scores)."""
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model, tokens = context_sensitive_model(tokenizer.vocab_size, 16), stream(tokenizer)
    base = run_ttt(model, tokens)
    for u in (30, 60, 130):
        changed = tokens.copy()
        changed[u] = (changed[u] + 7) % tokenizer.vocab_size
        other = run_ttt(model, changed)
        assert np.array_equal(other[: u - 1], base[: u - 1])  # targets 1..u-1
        assert not np.array_equal(other[u - 1 :], base[u - 1 :])  # u itself and later ones do move


def test_ttt_adapts_and_leaves_the_callers_model_alone(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model, tokens = context_sensitive_model(tokenizer.vocab_size, 16), stream(tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    windows = sliding_windows(200, 16, 8)
    plain = score_windows(model, tokens, windows, batch_windows=4, device=torch.device("cpu"), autocast=False)["nll"]
    adapted = run_ttt(model, tokens)
    first_chunk = slice(0, 48)
    np.testing.assert_allclose(adapted[first_chunk], plain[first_chunk], rtol=1e-6)  # scored before any update
    assert adapted[96:].sum() < plain[96:].sum()  # the repetitive text is learnt from the scored chunks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_windows_are_grouped_by_their_first_scored_target():
    windows = sliding_windows(100, 16, 8)
    groups = chunk_windows(windows, 100, 32)
    assert len(groups) == 4 and sum(len(g) for g in groups) == len(windows)
    for index, group in enumerate(groups):
        assert all(min((w.first_target - 1) // 32, 3) == index for w in group)

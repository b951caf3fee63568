"""Windows, per-token scoring, bpb with standard error, and the eval report's byte accounting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_validation import context_sensitive_model

from alrt_core.config import RunConfig
from alrt_core.data.shards import read_shard
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.evaluation.report import EvalOptions, run_eval
from alrt_core.evaluation.scoring import score_windows, sliding_windows, summarize


@pytest.mark.parametrize(("targets", "seq_len", "stride"), [(100, 16, 4), (101, 16, 16), (7, 16, 4), (64, 16, 5), (33, 8, 1)])
def test_sliding_windows_score_every_target_once_with_maximal_context(targets, seq_len, stride):
    windows = sliding_windows(targets, seq_len, stride)
    counts = np.zeros(targets + 1, dtype=int)
    for window in windows:
        assert 1 <= window.length <= seq_len and window.begin >= 0
        assert window.begin == max(0, window.end - seq_len)  # as much left context as fits
        counts[window.first_target : window.end + 1] += 1
    assert counts[0] == 0 and (counts[1:] == 1).all()
    assert windows[-1].end == targets
    assert all(w.end - w.first_target + 1 <= stride for w in windows[1:])


def test_sliding_scores_match_running_the_model_on_each_window(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = context_sensitive_model(tokenizer.vocab_size, seq_len=16)
    tokens = np.asarray([tokenizer.bos_id, *tokenizer.encode("When shall we three meet again?\n" * 6)])[:60]
    windows = sliding_windows(59, 16, 5)
    nll = score_windows(model, tokens, windows, batch_windows=3, device=torch.device("cpu"), autocast=False)["nll"]
    for window in windows:
        inputs = torch.from_numpy(tokens[window.begin : window.end + 1]).long()[None]
        with torch.no_grad():
            direct = model(inputs[:, :-1], inputs[:, 1:], reduction="none")[0, window.score_from :]
        np.testing.assert_allclose(nll[window.first_target - 1 : window.end], direct.double().numpy(), rtol=1e-5)


def test_summary_standard_error_is_the_ratio_estimators():
    nll = np.array([1.0, 2.0, 3.0, 1.0, 1.0, 2.0, 4.0, 1.0, 2.0, 2.0, 3.0, 1.0])
    byte_counts = np.array([2, 3, 1, 2, 2, 4, 1, 1, 3, 2, 2, 1])
    targets = np.array([5, 1, 5, 1, 5, 1, 5, 1, 5, 1, 5, 1])  # BOS (id 1) ends each 2-token document: 12 units
    result = summarize(nll, byte_counts, targets, bos_id=1, min_documents=5)
    assert result.bpb == pytest.approx(nll.sum() / byte_counts.sum() / math.log(2))
    assert result.stderr_units == "documents" and result.units == 7  # split before each BOS target
    bounds = [0, 1, 3, 5, 7, 9, 11, 12]
    unit_nll = np.array([nll[a:b].sum() for a, b in zip(bounds, bounds[1:], strict=False)])
    unit_bytes = np.array([byte_counts[a:b].sum() for a, b in zip(bounds, bounds[1:], strict=False)])
    ratio = nll.sum() / byte_counts.sum()
    expected = math.sqrt(7 / 6 * ((unit_nll - ratio * unit_bytes) ** 2).sum()) / byte_counts.sum() / math.log(2)
    assert result.bpb_stderr == pytest.approx(expected)
    blocks = summarize(nll, byte_counts, targets, bos_id=1)  # fewer than 10 documents: 12 blocks of 1 target
    assert blocks.units == 12 and blocks.stderr_units == "blocks of 1 tokens" and blocks.bpb == result.bpb


def test_byte_accounting_matches_the_decoded_text_with_multibyte_utf8(small_dataset, tmp_path):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    text = "Naïve café — 日本語の文章 😀 and plain words.\nSecond line: ½ ≠ ∞.\n"
    path = tmp_path / "multibyte.jsonl"
    path.write_text("\n".join(json.dumps({"text": doc}) for doc in (text, text * 2, "ümlaut")), encoding="utf-8")
    config = RunConfig()
    config.model.vocab_size, config.model.seq_len = tokenizer.vocab_size, 16
    model = context_sensitive_model(tokenizer.vocab_size, seq_len=16)
    report = run_eval(model, tokenizer, config, EvalOptions(data=str(path), stride=4))
    expected_bytes = len(text.encode()) * 3 + len("ümlaut".encode())
    assert report["bytes"] == report["decoded_bytes"] == expected_bytes and report["bytes_match_decoded_text"]
    assert report["mode"] == "sliding" and report["tokens"] == len(tokenizer.encode(text)) + len(tokenizer.encode(text * 2)) + len(tokenizer.encode("ümlaut")) + 2


def test_stride_equal_to_seq_len_is_plain_evaluation(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    config = RunConfig()
    config.model.vocab_size, config.model.seq_len = tokenizer.vocab_size, 16
    config.data.path = str(small_dataset.root)
    model = context_sensitive_model(tokenizer.vocab_size, seq_len=16)
    plain = run_eval(model, tokenizer, config, EvalOptions(data=str(small_dataset.root), max_tokens=160))
    same = run_eval(model, tokenizer, config, EvalOptions(data=str(small_dataset.root), max_tokens=160, stride=16))
    sliding = run_eval(model, tokenizer, config, EvalOptions(data=str(small_dataset.root), max_tokens=160, stride=4))
    assert plain["bpb"] == same["bpb"] and plain["mode"] == same["mode"] == "plain" and plain["windows"] == 10
    tokens = np.concatenate([np.asarray(read_shard(f), dtype=np.int64) for f in small_dataset.val_files])[:161]
    direct = 0.0
    with torch.no_grad():
        for begin in range(0, 160, 16):
            window = torch.from_numpy(tokens[begin : begin + 17])[None]
            direct += float(model(window[:, :-1], window[:, 1:], reduction="sum"))
    assert plain["loss"] == pytest.approx(direct / 160, rel=1e-6)
    assert sliding["bpb"] != plain["bpb"] and sliding["tokens"] == plain["tokens"] == 160

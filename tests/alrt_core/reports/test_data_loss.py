"""Loss breakdowns: token classes on a hand-made vocabulary, bins, calibration, and scoring against `alrt eval`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alrt_core.config import ModelConfig
from alrt_core.evaluation.scoring import score_windows, sliding_windows
from alrt_core.model.gpt import GPT, uniform_ranks
from alrt_core.reports.data_loss import (
    CLASS_NAMES,
    PieceTable,
    calibration,
    class_breakdown,
    hardest_pieces,
    position_curve,
    score_predictions,
    token_classes,
    top_confusions,
)

PIECES = ["<pad>", "<s>", "</s>", "<0xC3>", "▁the", "cat", "s", ",", "\n", "▁", "Hello", "'", "▁'tis", "▁▁▁", "ing,"]
ID = {piece: index for index, piece in enumerate(PIECES)}


def table() -> PieceTable:
    return PieceTable.from_pieces(PIECES, byte_ids={3}, boundary_ids={0, 1, 2})


def test_token_classes_on_a_hand_made_vocabulary():
    stream = ["<s>", "Hello", ",", "▁the", "cat", "s", "\n", "cat", "▁", "'", "s", "▁'tis", "▁▁▁", "<0xC3>", "ing,",
              "<s>", "cat", "</s>"]
    ids = np.array([ID[p] for p in stream])
    classes = [CLASS_NAMES[c] for c in token_classes(table(), ids[:-1], ids[1:])]
    assert classes == [
        "word start",    # Hello after BOS
        "punct/space",   # ,
        "word start",    # ▁the
        "continuation",  # cat after "the"
        "continuation",  # s after "cat"
        "punct/space",   # \n
        "word start",    # cat after a newline
        "punct/space",   # ▁ (a lone space)
        "punct/space",   # '
        "word start",    # s after an apostrophe (not a letter)
        "word start",    # ▁'tis
        "punct/space",   # ▁▁▁
        "byte",          # <0xC3>
        "continuation",  # ing, after a byte piece (part of a multi-byte letter)
        "boundary",      # <s>
        "word start",    # cat after BOS
        "boundary",      # </s>
    ]
    assert table().label(ID["▁the"]) == "␣the" and table().label(ID["\n"]) == "\\n" and table().label(3) == "<byte 3>"


def test_class_breakdown_adds_up():
    nll = np.array([1.0, 2.0, 3.0, 4.0])
    num_bytes = np.array([1, 2, 0, 5])
    classes = np.array([0, 0, 4, 1], dtype=np.int8)
    rows = {row["class"]: row for row in class_breakdown(nll, num_bytes, classes)}
    assert set(rows) == {"word start", "continuation", "boundary"}
    assert rows["word start"]["tokens"] == 2 and rows["word start"]["token_share"] == 0.5
    assert rows["word start"]["loss_share"] == pytest.approx(0.3) and rows["word start"]["bpb"] == pytest.approx(3 / (3 * math.log(2)))
    assert rows["boundary"]["bpb"] is None and rows["boundary"]["bytes"] == 0
    assert sum(row["loss_share"] for row in rows.values()) == pytest.approx(1.0)


def test_position_bins_calibration_and_confusions():
    positions = np.tile(np.arange(8), 3)
    nll = positions.astype(float)
    rows = position_curve(nll, np.ones(24, dtype=np.int64), positions, seq_len=8, bins=4)
    assert [(r["start"], r["end"], r["tokens"], r["mean_loss"]) for r in rows] == [
        (0, 2, 6, 0.5), (2, 4, 6, 2.5), (4, 6, 6, 4.5), (6, 8, 6, 6.5)]
    assert rows[1]["bpb"] == pytest.approx(2.5 / math.log(2))

    confidence = np.array([0.95] * 10 + [0.15] * 10)
    correct = np.array([1] * 9 + [0] + [1] * 2 + [0] * 8, dtype=bool)
    result = calibration(confidence, correct)
    assert [(b["low"], b["tokens"], b["accuracy"]) for b in result["bins"]] == [
        (pytest.approx(0.1), 10, pytest.approx(0.2)), (pytest.approx(0.9), 10, pytest.approx(0.9))]
    assert result["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)

    targets = np.array([ID["cat"], ID["cat"], ID["s"], ID[","], ID["cat"]])
    predicted = np.array([ID["s"], ID["s"], ID["s"], ID["cat"], ID["s"]])
    confusions = top_confusions(targets, predicted, table())
    assert [(c["actual"], c["predicted"], c["count"]) for c in confusions] == [("cat", "s", 3), (",", "cat", 1)]
    assert confusions[0]["share_of_errors"] == 0.75
    hardest = hardest_pieces(np.array([1.0, 1.0, 5.0, 0.5, 1.0]), targets, table(), limit=2)
    assert [(h["piece"], h["count"]) for h in hardest] == [("s", 1), ("cat", 3)]


def test_scores_match_the_eval_scorer():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2.0, seq_len=16)
    model = GPT(config, layer_ranks=uniform_ranks(config, 8)).eval()
    with torch.no_grad():  # give the zero-initialised output projections something to do
        for layer in model.projections().values():
            layer.U.normal_(0, 0.3)
    tokens = np.random.default_rng(0).integers(0, 64, size=75)
    predictions = score_predictions(model, tokens, seq_len=16, batch_windows=3)
    reference = score_windows(model, tokens, sliding_windows(74, 16, 16), batch_windows=8,
                              device=torch.device("cpu"), autocast=False)
    np.testing.assert_allclose(predictions.nll, reference["nll"], rtol=1e-6)
    # 74 targets in windows of 16: four full windows, then one that reaches back and scores its last 10 positions.
    np.testing.assert_array_equal(predictions.position, np.concatenate([np.tile(np.arange(16), 4), np.arange(6, 16)]))
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens[None, :16]))[0]
    np.testing.assert_array_equal(predictions.top1[:16], logits.argmax(-1).numpy())
    np.testing.assert_allclose(predictions.confidence[:16], logits.softmax(-1).max(-1).values.numpy(), rtol=1e-5)
    top1_correct = predictions.top1 == tokens[1:]
    assert np.all(predictions.in_top5[top1_correct]) and predictions.in_top5.mean() >= top1_correct.mean()

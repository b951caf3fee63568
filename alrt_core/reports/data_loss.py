"""Where a model's loss goes on real data: by token class, by position in the context window, which tokens it
confuses, and how well its confidence is calibrated.

Targets are scored once each in plain (non-overlapping) windows of the trained context (`scoring.sliding_windows`
with stride = length), so a target's position is its index in its window (0 = predicted from one token). Bytes
per target come from the tokenizer's byte tables, as for `alrt eval`, so class and position bpb add up to the
overall bpb.

Token classes (from the tokenizer's pieces; `▁` reads as a space):
- word start: a piece with a letter or digit that begins with whitespace, or follows a boundary token or a piece
  ending in something other than a letter or digit;
- continuation: a piece with a letter or digit that directly follows a piece ending in a letter or digit (or a
  byte-fallback piece, which is mostly a part of a multi-byte letter);
- punct/space: a piece with no letter or digit (punctuation, newlines, runs of spaces);
- byte: a byte-fallback piece `<0xNN>`; boundary: BOS/EOS and other control tokens (0 bytes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alrt_core.data.tokenizer import Tokenizer
from alrt_core.evaluation.scoring import LN2, sliding_windows, summarize, window_batches
from alrt_core.model.gpt import GPT
from alrt_core.precision import autocast_context

CLASS_NAMES = ("word start", "continuation", "punct/space", "byte", "boundary")
WORD_START, CONTINUATION, PUNCT_SPACE, BYTE, BOUNDARY = range(len(CLASS_NAMES))
TOP_K = 5


@dataclass(frozen=True)
class PieceTable:
    """What the classes need to know about each vocabulary entry."""

    texts: list[str]  # the piece with "▁" as a space ("" for byte and control pieces)
    is_byte: np.ndarray  # bool[V]
    is_boundary: np.ndarray  # bool[V]

    @classmethod
    def from_pieces(cls, pieces: list[str], *, byte_ids: Collection[int] = (), boundary_ids: Collection[int] = ()) -> PieceTable:
        size = len(pieces)
        is_byte = np.zeros(size, dtype=bool)
        is_boundary = np.zeros(size, dtype=bool)
        is_byte[list(byte_ids)] = True
        is_boundary[list(boundary_ids)] = True
        texts = ["" if is_byte[i] or is_boundary[i] else piece.replace("▁", " ") for i, piece in enumerate(pieces)]
        return cls(texts, is_byte, is_boundary)

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> PieceTable:
        sp = tokenizer.sp
        pieces = [sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
        byte_ids = {i for i in range(tokenizer.vocab_size) if sp.is_byte(i)}
        return cls.from_pieces(pieces, byte_ids=byte_ids, boundary_ids=set(np.flatnonzero(tokenizer.is_boundary).tolist()))

    def label(self, token: int) -> str:
        """A printable form of a piece: repr-like escapes for whitespace, <0xNN> for bytes."""
        if self.is_boundary[token]:
            return f"<ctl {token}>"
        if self.is_byte[token]:
            return f"<byte {token}>"
        return self.texts[token].replace("\n", "\\n").replace("\t", "\\t").replace(" ", "␣")


def token_classes(table: PieceTable, prev_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
    """The class (index into CLASS_NAMES) of each target given the token before it."""
    has_word = np.array([any(ch.isalnum() for ch in text) for text in table.texts])
    starts_space = np.array([bool(text) and text[0].isspace() for text in table.texts])
    # Boundary pieces have no text, so whatever follows them starts a word.
    ends_word = np.array([bool(text) and text[-1].isalnum() for text in table.texts]) | table.is_byte
    prev_ids, target_ids = np.asarray(prev_ids), np.asarray(target_ids)
    classes = np.where(ends_word[prev_ids] & ~starts_space[target_ids], CONTINUATION, WORD_START)
    classes = np.where(has_word[target_ids], classes, PUNCT_SPACE)
    classes = np.where(table.is_byte[target_ids], BYTE, classes)
    return np.where(table.is_boundary[target_ids], BOUNDARY, classes).astype(np.int8)


@dataclass
class Predictions:
    """Per target (index i = target i+1 of the stream)."""

    nll: np.ndarray  # float64 nats
    position: np.ndarray  # index in its window
    top1: np.ndarray  # argmax prediction
    in_top5: np.ndarray  # bool
    confidence: np.ndarray  # probability of the argmax


def score_predictions(model: GPT, tokens: np.ndarray, seq_len: int, *, batch_windows: int = 8,
                      device: torch.device | None = None, autocast: bool = False) -> Predictions:
    device = device or torch.device("cpu")
    num_targets = tokens.shape[0] - 1
    windows = sliding_windows(num_targets, seq_len, seq_len)
    out = Predictions(np.zeros(num_targets), np.zeros(num_targets, np.int32), np.zeros(num_targets, np.int64),
                      np.zeros(num_targets, bool), np.zeros(num_targets, np.float32))
    model.eval()
    with torch.no_grad():
        for batch in window_batches(tokens, windows, batch_windows):
            rows, skip = torch.from_numpy(batch.rows), batch.score_from
            targets = rows[:, 1 + skip :].to(device)
            with autocast_context(device, autocast):
                logits = model(rows[:, :-1].to(device), logits_from=skip)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            nll = -log_probs.gather(-1, targets[..., None]).squeeze(-1)
            top = log_probs.topk(TOP_K, dim=-1)
            in_top = (top.indices == targets[..., None]).any(-1)
            for row, window in enumerate(batch.windows):
                span = slice(window.first_target - 1, window.end)
                out.nll[span] = nll[row].double().cpu().numpy()
                out.position[span] = np.arange(skip, window.length)
                out.top1[span] = top.indices[row, :, 0].cpu().numpy()
                out.in_top5[span] = in_top[row].cpu().numpy()
                out.confidence[span] = top.values[row, :, 0].exp().cpu().numpy()
    return out


def _bpb(nll: float, num_bytes: int) -> float | None:
    return nll / (LN2 * num_bytes) if num_bytes > 0 else None


def class_breakdown(nll: np.ndarray, target_bytes: np.ndarray, classes: np.ndarray) -> list[dict[str, Any]]:
    total_nll, total = float(nll.sum()), nll.shape[0]
    rows = []
    for index, name in enumerate(CLASS_NAMES):
        mask = classes == index
        count = int(mask.sum())
        if not count:
            continue
        class_nll, class_bytes = float(nll[mask].sum()), int(target_bytes[mask].sum())
        rows.append({"class": name, "tokens": count, "token_share": count / total,
                     "loss_share": class_nll / total_nll if total_nll > 0 else 0.0, "mean_loss": class_nll / count,
                     "bytes": class_bytes, "bpb": _bpb(class_nll, class_bytes)})
    return rows


def position_curve(nll: np.ndarray, target_bytes: np.ndarray, position: np.ndarray, seq_len: int, bins: int = 16) -> list[dict[str, Any]]:
    """Mean loss and bpb of targets binned by position in the window (equal-width bins over [0, seq_len))."""
    bins = max(1, min(bins, seq_len))
    edges = np.linspace(0, seq_len, bins + 1).round().astype(int)
    rows = []
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        mask = (position >= start) & (position < end)
        count = int(mask.sum())
        if count:
            rows.append({"start": int(start), "end": int(end), "tokens": count, "mean_loss": float(nll[mask].mean()),
                         "bpb": _bpb(float(nll[mask].sum()), int(target_bytes[mask].sum()))})
    return rows


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability bins of the top-1 probability: mean confidence vs accuracy, and the expected calibration error
    ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b|."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        if not count:
            continue
        mean_conf, accuracy = float(confidence[mask].mean()), float(correct[mask].mean())
        ece += count / confidence.shape[0] * abs(accuracy - mean_conf)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "tokens": count,
                     "confidence": mean_conf, "accuracy": accuracy})
    return {"bins": rows, "ece": ece}


def top_confusions(targets: np.ndarray, top1: np.ndarray, table: PieceTable, limit: int = 10) -> list[dict[str, Any]]:
    """The most frequent (actual, predicted) pairs among wrong top-1 predictions."""
    wrong = targets != top1
    pairs = Counter(zip(targets[wrong].tolist(), top1[wrong].tolist(), strict=True))
    errors = max(int(wrong.sum()), 1)
    return [{"actual": table.label(a), "predicted": table.label(p), "actual_id": a, "predicted_id": p,
             "count": n, "share_of_errors": n / errors} for (a, p), n in pairs.most_common(limit)]


def hardest_pieces(nll: np.ndarray, targets: np.ndarray, table: PieceTable, limit: int = 10) -> list[dict[str, Any]]:
    """Pieces with the largest share of the total loss."""
    totals = np.bincount(targets, weights=nll, minlength=len(table.texts))
    counts = np.bincount(targets, minlength=len(table.texts))
    order = np.argsort(-totals)[:limit]
    total = max(float(nll.sum()), 1e-300)
    return [{"piece": table.label(int(t)), "id": int(t), "count": int(counts[t]), "mean_loss": float(totals[t] / counts[t]),
             "loss_share": float(totals[t]) / total} for t in order if counts[t]]


def data_report(model: GPT, tokenizer: Tokenizer, tokens: np.ndarray, seq_len: int, *, position_bins: int = 16,
                batch_tokens: int = 8192, device: torch.device | None = None, autocast: bool = False) -> dict[str, Any]:
    """Every --data statistic of `inspect model` for the token stream `tokens` (BOS-separated documents)."""
    predictions = score_predictions(model, tokens, seq_len, batch_windows=max(1, batch_tokens // seq_len),
                                    device=device, autocast=autocast)
    prev, targets = tokens[:-1], tokens[1:]
    target_bytes = tokenizer.target_bytes(prev, targets)
    table = PieceTable.from_tokenizer(tokenizer)
    summary = summarize(predictions.nll, target_bytes, targets, tokenizer.bos_id)
    correct = predictions.top1 == targets
    return {
        "tokens": summary.tokens, "bytes": summary.bytes, "loss": summary.loss, "bpb": summary.bpb,
        "bpb_stderr": summary.bpb_stderr, "seq_len": seq_len,
        "top1_accuracy": float(correct.mean()), "top5_accuracy": float(predictions.in_top5.mean()),
        "classes": class_breakdown(predictions.nll, target_bytes, token_classes(table, prev, targets)),
        "positions": position_curve(predictions.nll, target_bytes, predictions.position, seq_len, position_bins),
        "calibration": calibration(predictions.confidence, correct),
        "confusions": top_confusions(targets, predictions.top1, table),
        "hardest_pieces": hardest_pieces(predictions.nll, targets, table),
    }

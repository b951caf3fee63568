"""Scoring a token stream: windows, per-token NLL, bits per byte with its standard error, model comparison.

Targets are the tokens 1..N of the stream (token 0 is context only). A window feeds `length` tokens starting at
`begin` and scores the predictions of targets `begin+score_from+1 .. begin+length`. `sliding_windows` covers every
target exactly once: the first window scores all it sees; each next one ends `stride` targets later and scores
only what is new, with as much left context as the window length allows; the last one ends exactly at N. With
`stride == seq_len` this is plain evaluation (non-overlapping windows; the last one reaches back for context
instead of being short).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from alrt_core.model.gpt import GPT
from alrt_core.precision import autocast_context
from alrt_core.training.distributed import DistributedContext

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Window:
    begin: int  # index of the first input token
    length: int  # input tokens (= predictions made)
    score_from: int  # first scored position within the window

    @property
    def first_target(self) -> int:
        return self.begin + self.score_from + 1

    @property
    def end(self) -> int:
        """Last target scored (inclusive)."""
        return self.begin + self.length


def sliding_windows(num_targets: int, seq_len: int, stride: int) -> list[Window]:
    if num_targets < 1:
        raise ValueError("need at least two tokens to score")
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in [1, {seq_len}], got {stride}")
    first = min(seq_len, num_targets)
    windows = [Window(0, first, 0)]
    scored = first
    while scored < num_targets:
        end = min(scored + stride, num_targets)
        begin = max(0, end - seq_len)
        windows.append(Window(begin, end - begin, scored - begin))
        scored = end
    return windows


@dataclass
class TokenScores:
    """Per-target results over the scored range 1..N (index i holds target i+1)."""

    nll: np.ndarray  # float64 nats
    bytes: np.ndarray  # int64 UTF-8 bytes each target adds
    kl: np.ndarray | None = None  # KL(reference ‖ model) per target, when compared
    agree: np.ndarray | None = None  # top-1 agreement with the reference, when compared
    reference_nll: np.ndarray | None = None


@dataclass(frozen=True)
class WindowBatch:
    """Windows of one length and one scored offset, stacked: one forward pass, logits only where scored."""

    windows: list[Window]
    rows: np.ndarray  # int64 [len(windows), length + 1]: each window's inputs and, shifted by one, its targets
    score_from: int  # the first scored position of every row


def window_batches(tokens: np.ndarray, windows: list[Window], batch_windows: int) -> Iterator[WindowBatch]:
    """Consecutive runs of `windows` that share length and scored offset, at most `batch_windows` at a time."""
    index = 0
    while index < len(windows):
        key = (windows[index].length, windows[index].score_from)
        end = index + 1
        while end < len(windows) and end - index < batch_windows and (windows[end].length, windows[end].score_from) == key:
            end += 1
        batch = windows[index:end]
        length = key[0]
        rows = np.stack([np.asarray(tokens[w.begin : w.begin + length + 1], dtype=np.int64) for w in batch])
        yield WindowBatch(batch, rows, key[1])
        index = end


def score_windows(
    model: GPT,
    tokens: np.ndarray,
    windows: list[Window],
    *,
    batch_windows: int,
    device: torch.device,
    autocast: bool,
    reference: GPT | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Score `windows` (same-length windows batched together); arrays over targets 1..N, zero where unscored."""
    num_targets = tokens.shape[0] - 1
    nll = np.zeros(num_targets, dtype=np.float64)
    extra = {k: np.zeros(num_targets, dtype=np.float64) for k in ("kl", "agree", "reference_nll")} if reference else {}
    was_training = model.training
    model.eval()
    if reference is not None:
        reference.eval()
    try:
        with torch.no_grad():
            for batch in window_batches(tokens, windows, batch_windows):
                rows, skip = batch.rows, batch.score_from
                inputs = torch.from_numpy(rows[:, :-1]).to(device)
                targets = torch.from_numpy(rows[:, 1 + skip :]).to(device)
                with autocast_context(device, autocast):
                    logits = model(inputs, logits_from=skip)
                log_probs = F.log_softmax(logits.float(), dim=-1)
                token_nll = -log_probs.gather(-1, targets[..., None]).squeeze(-1).double().cpu().numpy()
                if reference is not None:
                    with autocast_context(device, autocast):
                        ref_log_probs = F.log_softmax(reference(inputs, logits_from=skip).float(), dim=-1)
                    kl = (ref_log_probs.exp() * (ref_log_probs - log_probs)).sum(-1).double().cpu().numpy()
                    agree = (ref_log_probs.argmax(-1) == log_probs.argmax(-1)).double().cpu().numpy()
                    ref_nll = -ref_log_probs.gather(-1, targets[..., None]).squeeze(-1).double().cpu().numpy()
                for row, window in enumerate(batch.windows):
                    span = slice(window.first_target - 1, window.end)
                    nll[span] = token_nll[row]
                    if reference is not None:
                        extra["kl"][span] = kl[row]
                        extra["agree"][span] = agree[row]
                        extra["reference_nll"][span] = ref_nll[row]
                if on_progress is not None:
                    on_progress(sum(w.length - w.score_from for w in batch.windows))
    finally:
        model.train(was_training)
    return {"nll": nll, **extra}


def split_for_rank(windows: list[Window], ctx: DistributedContext | None) -> list[Window]:
    if ctx is None or not ctx.enabled:
        return windows
    return windows[len(windows) * ctx.rank // ctx.world_size : len(windows) * (ctx.rank + 1) // ctx.world_size]


def gather_scores(arrays: dict[str, np.ndarray], ctx: DistributedContext | None) -> dict[str, np.ndarray]:
    """Each rank scored a disjoint set of targets (zeros elsewhere): a sum over ranks puts them together."""
    if ctx is None or not ctx.enabled:
        return arrays
    return {k: ctx.all_reduce(torch.from_numpy(v).to(ctx.device)).cpu().numpy() for k, v in arrays.items()}


@dataclass(frozen=True)
class BpbSummary:
    tokens: int
    bytes: int
    loss: float  # nats per token
    bpb: float
    bpb_stderr: float  # over documents (or token blocks when there are few documents)
    stderr_units: str
    units: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def summarize(
    nll: np.ndarray, target_bytes: np.ndarray, targets: np.ndarray, bos_id: int, *, min_documents: int = 10,
) -> BpbSummary:
    """bpb = Σ nll / (ln 2 · Σ bytes), with the standard error of that ratio over documents (split where the
    target is BOS) when there are at least `min_documents`, else over blocks of min(4096, N/20) targets."""
    total_nll, total_bytes = float(nll.sum()), int(target_bytes.sum())
    starts = np.flatnonzero(targets == bos_id)
    unit_name = "documents"
    if starts.size + 1 < min_documents:
        block_tokens = max(1, min(4096, nll.shape[0] // 20))
        starts = np.arange(block_tokens, nll.shape[0], block_tokens)
        unit_name = f"blocks of {block_tokens} tokens"
    bounds = np.concatenate(([0], starts[starts > 0], [nll.shape[0]]))
    unit_nll = np.add.reduceat(nll, bounds[:-1]) if nll.size else np.zeros(0)
    unit_bytes = np.add.reduceat(target_bytes.astype(np.float64), bounds[:-1]) if nll.size else np.zeros(0)
    units = unit_nll.shape[0]
    ratio = total_nll / max(total_bytes, 1)
    if units > 1:
        # Delta-method standard error of a ratio estimator: residuals of each unit's NLL against ratio × bytes.
        residual = unit_nll - ratio * unit_bytes
        stderr = math.sqrt(units / (units - 1) * float((residual**2).sum())) / max(total_bytes, 1) / LN2
    else:
        stderr = float("nan")
    return BpbSummary(
        tokens=int(nll.shape[0]), bytes=total_bytes, loss=total_nll / max(nll.shape[0], 1),
        bpb=ratio / LN2, bpb_stderr=stderr, stderr_units=unit_name, units=units,
    )

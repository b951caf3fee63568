"""`alrt eval`: which tokens to score, how, and the report (bpb ± stderr, byte check, TTT, comparison).

Validation data is the run's held-out split (default), a shard folder (ours or parameter golf's FineWeb val
shards), or a text/jsonl file or folder tokenised with the model's own tokenizer as `BOS doc BOS doc ...`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alrt_core.config import RunConfig
from alrt_core.data.documents import Document, read_documents
from alrt_core.data.prepare import default_cache_dir, resolve_dataset
from alrt_core.data.shards import list_shards, read_shard
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.errors import UserError
from alrt_core.evaluation.scoring import gather_scores, score_windows, sliding_windows, split_for_rank, summarize
from alrt_core.evaluation.ttt import TTTConfig, score_first_ttt
from alrt_core.model.gpt import GPT
from alrt_core.training.distributed import DistributedContext


@dataclass
class EvalOptions:
    data: str | None = None
    seq_len: int | None = None  # default: the trained context
    stride: int | None = None  # None: plain (non-overlapping) windows
    max_tokens: int | None = None
    batch_windows: int = 8
    ttt: TTTConfig | None = None
    autocast: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def same_tokenizer(path: Path, tokenizer: Tokenizer) -> bool:
    """Whether the sentencepiece model at `path` is the model's, byte for byte (ids mean the same tokens)."""
    return path.read_bytes() == tokenizer.model_bytes()


def document_tokens(documents: list[Document], tokenizer: Tokenizer) -> np.ndarray:
    """`BOS doc BOS doc ...` in the model's tokenizer: how shards hold documents, so text scores like shards."""
    stream: list[int] = []
    for ids in tokenizer.encode_batch([doc.text for doc in documents]):
        stream += [tokenizer.bos_id, *ids]
    return np.asarray(stream, dtype=np.int64)


def shard_tokens(files: list[Path], tokenizer: Tokenizer) -> np.ndarray:
    """The shards' tokens as one stream, refused when an id is beyond the model's vocabulary."""
    tokens = np.concatenate([np.asarray(read_shard(file), dtype=np.int64) for file in files])
    if tokens.size and int(tokens.max()) >= tokenizer.vocab_size:
        raise UserError(f"validation tokens reach id {int(tokens.max())}, beyond the model's vocabulary of {tokenizer.vocab_size}")
    return tokens


def validation_tokens(data: str | None, tokenizer: Tokenizer, config: RunConfig) -> tuple[np.ndarray, str]:
    """(token stream, description) of the validation data, in the model's tokenizer."""
    if data is None:
        info = resolve_dataset(config.data.path, config.data.tokenizer, default_cache_dir(), config.data.vocab_size,
                               progress=False)
        if not same_tokenizer(info.tokenizer_path, tokenizer):
            raise UserError(f"the run's data at {info.root} uses another tokenizer than the model; pass --data")
        files, description = info.val_files, f"{config.data.path or 'embedded Shakespeare'} (validation split)"
    else:
        path = Path(data)
        if not path.exists():
            raise UserError(f"validation data not found: {path}")
        files = list_shards(path, "val") if path.is_dir() else []
        if files:
            beside = path / "tokenizer.model"
            if beside.is_file() and not same_tokenizer(beside, tokenizer):
                raise UserError(f"{path} was tokenised with another tokenizer than the model's")
            description = f"{path} ({len(files)} val shard(s))"
        else:
            documents = read_documents([path])
            return document_tokens(documents, tokenizer), f"{path} ({len(documents)} document(s), tokenised)"
    return shard_tokens(files, tokenizer), description


def decoded_byte_count(tokens: np.ndarray, tokenizer: Tokenizer) -> int:
    """UTF-8 length of the evaluated text: targets 1..N decoded document by document (split at BOS)."""
    targets = tokens[1:]
    total, start = 0, 0
    boundaries = list(np.flatnonzero(targets == tokenizer.bos_id)) + [targets.shape[0]]
    for end in boundaries:
        piece = targets[start:end]
        piece = piece[piece != tokenizer.bos_id]
        if piece.size:
            total += len(tokenizer.decode(piece.tolist()).encode("utf-8"))
        start = end + 1
    return total


def run_eval(
    model: GPT,
    tokenizer: Tokenizer,
    config: RunConfig,
    options: EvalOptions,
    *,
    reference: GPT | None = None,
    ctx: DistributedContext | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    stream: tuple[np.ndarray, str] | None = None,
) -> dict[str, Any]:
    """Every number `alrt eval` reports, as a JSON-ready dict; `stream` (tokens, description) is scored instead
    of `options.data`'s validation tokens (`alrt quantize --eval` scores exactly the data it held out)."""
    trained = config.model.seq_len
    seq_len = options.seq_len or trained
    if seq_len > trained:
        raise UserError(f"--seq-len {seq_len} is longer than the trained context of {trained} (the RoPE tables' size)")
    stride = options.stride or seq_len
    if not 1 <= stride <= seq_len:
        raise UserError(f"--stride must be between 1 and the sequence length {seq_len}, got {stride}")
    tokens, description = stream if stream is not None else validation_tokens(options.data, tokenizer, config)
    if options.max_tokens is not None:
        tokens = tokens[: options.max_tokens + 1]
    if tokens.shape[0] < 2:
        raise UserError("validation data has fewer than two tokens")
    num_targets = tokens.shape[0] - 1
    windows = sliding_windows(num_targets, seq_len, stride)
    target_bytes = tokenizer.target_bytes(tokens[:-1], tokens[1:])
    done = [0]

    def progress(count: int) -> None:
        done[0] += count
        if on_progress is not None:
            on_progress("score", min(done[0], num_targets), num_targets)

    started = time.perf_counter()
    scores = gather_scores(
        score_windows(model, tokens, split_for_rank(windows, ctx), batch_windows=options.batch_windows,
                      device=options.device, autocast=options.autocast, reference=reference, on_progress=progress),
        ctx,
    )
    seconds = time.perf_counter() - started
    summary = summarize(scores["nll"], target_bytes, tokens[1:], tokenizer.bos_id)
    decoded = decoded_byte_count(tokens, tokenizer)
    report: dict[str, Any] = {
        "data": description,
        "mode": "sliding" if stride < seq_len else "plain",
        "seq_len": seq_len,
        "stride": stride,
        "windows": len(windows),
        "tokens": summary.tokens,
        "bytes": summary.bytes,
        "decoded_bytes": decoded,
        "bytes_match_decoded_text": decoded == summary.bytes,
        "loss": summary.loss,
        "perplexity": summary.perplexity,
        "bpb": summary.bpb,
        "bpb_stderr": summary.bpb_stderr,
        "stderr_over": f"{summary.units} {summary.stderr_units}",
        "seconds": seconds,
        "tokens_per_second": summary.tokens / max(seconds, 1e-9),
        "model": {"params": sum(p.numel() for p in model.parameters()), **config.to_dict()["model"]},
    }
    if reference is not None:
        ref = summarize(scores["reference_nll"], target_bytes, tokens[1:], tokenizer.bos_id)
        report["compare"] = {
            "reference_bpb": ref.bpb,
            "bpb_delta": summary.bpb - ref.bpb,
            "mean_kl_nats": float(scores["kl"].mean()),
            "mean_kl_bits_per_byte": float(scores["kl"].sum()) / np.log(2.0) / max(summary.bytes, 1),
            "top1_agreement": float(scores["agree"].mean()),
        }
    if options.ttt is not None:
        started = time.perf_counter()
        adapted = copy.deepcopy(model)
        nll = score_first_ttt(
            adapted, tokens, windows, options.ttt, seq_len=seq_len, batch_windows=options.batch_windows,
            device=options.device, autocast=options.autocast, ctx=ctx,
            on_event=(lambda kind, first, last: on_progress("ttt", last, num_targets)) if on_progress else None,
        )
        ttt = summarize(nll, target_bytes, tokens[1:], tokenizer.bos_id)
        report["ttt"] = {
            "bpb": ttt.bpb, "bpb_stderr": ttt.bpb_stderr, "loss": ttt.loss, "bpb_without_ttt": summary.bpb,
            "gain": summary.bpb - ttt.bpb, "seconds": time.perf_counter() - started,
            "chunks": -(-num_targets // options.ttt.chunk_tokens), **options.ttt.to_dict(),
        }
    return report

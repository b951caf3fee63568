"""Evaluation speed and the sliding-window gain on a trained `cpu` checkpoint.

    python benchmarks/eval_speed.py --checkpoint runs/a/best.pt [--stride 64] [--max-tokens 32768] [--rounds 3]

Scores the validation prefix four ways, interleaved over rounds: ours plain (stride = seq_len), ours sliding, and a
straightforward batched implementation of the reference sliding algorithm (window starts every `stride` tokens,
full logits and per-position cross-entropy for every window, keep the last `stride` positions; 32 windows per
batch). Its bpb differs from ours at the end of the stream: its shortened tail windows (start > N − seq_len) each
re-score the last `stride` targets, so those are counted several times; ours scores every target exactly once. Prints tokens scored per second (median of rounds) and the sliding − plain bpb.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alrt_core.evaluation.report import validation_tokens  # noqa: E402
from alrt_core.evaluation.validation import evaluate  # noqa: E402
from alrt_core.fileio import atomic_write_text  # noqa: E402
from export.loader import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def reference_sliding(model, tokens: np.ndarray, tokenizer, seq_len: int, stride: int, batch: int = 32) -> float:
    """The reference algorithm, batched plainly: every window computes logits for all its positions."""
    total = tokens.shape[0] - 1
    starts = [s for s in range(0, total, stride) if min(s + seq_len, total) - s >= stride or s == 0]
    nll_sum, byte_sum = 0.0, 0
    base, space, boundary = (np.asarray(t) for t in tokenizer.token_byte_tables())
    for i in range(0, len(starts), batch):
        group = starts[i : i + batch]
        x = torch.zeros(len(group), seq_len, dtype=torch.long)
        y = torch.zeros(len(group), seq_len, dtype=torch.long)
        lengths = []
        for row, s in enumerate(group):
            end = min(s + seq_len, total)
            chunk = torch.from_numpy(tokens[s : end + 1].astype(np.int64))
            x[row, : end - s], y[row, : end - s] = chunk[:-1], chunk[1:]
            lengths.append(end - s)
        logits = model(x)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(len(group), seq_len)
        for row, s in enumerate(group):
            length = lengths[row]
            first = 0 if s == 0 else max(length - stride, 0)
            nll_sum += float(nll[row, first:length].double().sum())
            targets, prev = y[row, first:length].numpy(), x[row, first:length].numpy()
            extra = space[targets] & ~boundary[prev] if tokenizer.drops_leading_space else space[targets]
            byte_sum += int(base[targets].sum()) + int(extra.sum())
    return nll_sum / (math.log(2) * byte_sum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    loaded = load_model(args.checkpoint)
    model, tokenizer, seq_len = loaded.model, loaded.tokenizer, loaded.config.model.seq_len
    tokens, _ = validation_tokens(None, tokenizer, loaded.config)
    tokens = tokens[: args.max_tokens + 1]
    cpu = torch.device("cpu")
    sides = {
        "ours plain": lambda: evaluate(model, tokens, tokenizer, seq_len=seq_len, batch_sequences=32, device=cpu, autocast=False).bpb,
        "ours sliding": lambda: evaluate(model, tokens, tokenizer, seq_len=seq_len, batch_sequences=32, device=cpu,
                                         autocast=False, stride=args.stride).bpb,
        "reference sliding": lambda: reference_sliding(model, tokens, tokenizer, seq_len, args.stride),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    bpb: dict[str, float] = {}
    for round_index in range(args.rounds):
        order = list(sides)[round_index % 3 :] + list(sides)[: round_index % 3]
        for name in order:
            started = time.perf_counter()
            bpb[name] = sides[name]()
            times[name].append(time.perf_counter() - started)
    scored = tokens.shape[0] - 1
    rows = {name: {"tokens_per_second": scored / statistics.median(t), "seconds": statistics.median(t), "bpb": bpb[name]}
            for name, t in times.items()}
    report = {
        "checkpoint": str(args.checkpoint), "tokens": scored, "seq_len": seq_len, "stride": args.stride, "rows": rows,
        "sliding_minus_plain_bpb": bpb["ours sliding"] - bpb["ours plain"],
        "ours_vs_reference_speed": rows["ours sliding"]["tokens_per_second"] / rows["reference sliding"]["tokens_per_second"],
        "reference_bpb_difference": bpb["ours sliding"] - bpb["reference sliding"],
    }
    atomic_write_text(RESULTS / "eval_speed.json", json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
        return
    print(f"{scored:,} validation tokens, seq_len {seq_len}, stride {args.stride}, {args.rounds} rounds")
    for name, row in rows.items():
        print(f"{name:<18} {row['tokens_per_second']:>10,.0f} tok/s   bpb {row['bpb']:.5f}")
    print(f"sliding − plain bpb: {report['sliding_minus_plain_bpb']:+.4f}; ours/reference sliding speed: "
          f"{report['ours_vs_reference_speed']:.2f}×; bpb difference to the reference: {report['reference_bpb_difference']:+.2e}")


if __name__ == "__main__":
    main()

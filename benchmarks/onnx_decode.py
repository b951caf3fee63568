"""Batch-1 greedy decoding speed: the exported ONNX graph on onnxruntime vs the torch `Session` (KV cache).

    python benchmarks/onnx_decode.py --model runs/a/model.alrt [--onnx model.onnx] [--new-tokens 128]
                                     [--prompt-tokens 32] [--rounds 3] [--threads K] [--json-out PATH] [--json]

The model is exported in memory (or `--onnx` names an existing export of it) and checked against torch first
(max |logit diff|, as `alrt export onnx` does). Both sides then run the same greedy loop, interleaved over rounds
with the same number of threads (torch intra-op threads = onnxruntime intra-op threads, inter-op 1): one prefill
of the same prompt, then `--new-tokens` − 1 single-token steps, each feeding the previous greedy token; no EOS stop,
so both produce exactly `--new-tokens` tokens, which must be identical. The torch side is
`alrt_core.inference.session.Session.feed` (the forward calls behind `alrt generate`, without its text streaming); the ONNX
side is `export.onnx_runtime.run_step` with the presents fed back as the past. Prefill time and decode tokens/s
are medians over rounds; the ratio is onnxruntime over torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alrt_core.fileio import atomic_write_text  # noqa: E402
from alrt_core.inference.session import Session  # noqa: E402
from export.loader import load_model  # noqa: E402
from export.onnx_export import onnx_model_bytes, verify_against_torch  # noqa: E402
from export.onnx_runtime import create_session, empty_past, run_step  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "onnx_decode.json"
PROMPT_TEXT = "ROMEO.\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun. " * 4


def torch_greedy(session: Session, prompt: list[int], new_tokens: int) -> tuple[list[int], float, float]:
    """(tokens, prefill seconds, decode seconds) with the KV-cached torch session."""
    session.reset()
    started = time.perf_counter()
    logits = session.feed(prompt)
    prefilled = time.perf_counter()
    tokens: list[int] = []
    for step in range(new_tokens):
        tokens.append(int(torch.argmax(logits)))
        if step < new_tokens - 1:
            logits = session.feed([tokens[-1]])
    return tokens, prefilled - started, time.perf_counter() - prefilled


def onnx_greedy(session: Any, prompt: list[int], new_tokens: int) -> tuple[list[int], float, float]:
    """The same loop on onnxruntime: presents fed back as the past."""
    started = time.perf_counter()
    logits, past = run_step(session, np.asarray([prompt]), empty_past(session, 1))
    prefilled = time.perf_counter()
    tokens: list[int] = []
    for step in range(new_tokens):
        tokens.append(int(np.argmax(logits[0, -1])))
        if step < new_tokens - 1:
            logits, past = run_step(session, np.asarray([[tokens[-1]]]), past)
    return tokens, prefilled - started, time.perf_counter() - prefilled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help=".alrt artifact or checkpoint")
    parser.add_argument("--onnx", type=Path, default=None, help="an existing export of --model (default: export now)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="threads for both sides (default: torch's)")
    parser.add_argument("--json-out", type=Path, default=RESULTS)
    parser.add_argument("--json", action="store_true", help="print only one JSON object")
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    loaded = load_model(args.model)
    model, tokenizer, context = loaded.model, loaded.tokenizer, loaded.config.model.seq_len
    prompt = [tokenizer.bos_id, *tokenizer.encode(PROMPT_TEXT)][: min(args.prompt_tokens, context - 1)]
    new_tokens = min(args.new_tokens, context - len(prompt))  # the last generated token needs no forward pass
    started = time.perf_counter()
    data = args.onnx.read_bytes() if args.onnx else onnx_model_bytes(model, tokenizer, loaded.source.name)[1]
    export_seconds = time.perf_counter() - started
    check = verify_against_torch(data, model, tokenizer)
    ort_session = create_session(data, threads=threads)
    torch_session = Session(model, tokenizer)

    timings: dict[str, dict[str, list[float]]] = {side: {"prefill": [], "decode": []} for side in ("torch", "onnxruntime")}
    outputs: dict[str, list[int]] = {}
    for round_index in range(args.rounds):
        sides = [("torch", lambda: torch_greedy(torch_session, prompt, new_tokens)),
                 ("onnxruntime", lambda: onnx_greedy(ort_session, prompt, new_tokens))]
        for name, run in sides if round_index % 2 == 0 else sides[::-1]:
            tokens, prefill, decode = run()
            outputs[name] = tokens
            timings[name]["prefill"].append(prefill)
            timings[name]["decode"].append(decode)
    steps = max(new_tokens - 1, 1)
    sides_result = {
        name: {"prefill_ms": 1000 * statistics.median(t["prefill"]),
               "decode_tokens_per_second": steps / statistics.median(t["decode"]),
               "decode_tokens_per_second_range": [steps / max(t["decode"]), steps / min(t["decode"])]}
        for name, t in timings.items()
    }
    result = {
        "model": str(args.model), "kind": loaded.kind, "params": model.num_parameters(), "threads": threads,
        "prompt_tokens": len(prompt), "new_tokens": new_tokens, "rounds": args.rounds,
        "onnx_bytes": len(data), "export_seconds": None if args.onnx else export_seconds,
        "max_logit_diff": check.max_diff, "greedy_tokens_identical": outputs["torch"] == outputs["onnxruntime"],
        "sides": sides_result,
        "onnxruntime_vs_torch_decode": sides_result["onnxruntime"]["decode_tokens_per_second"]
        / sides_result["torch"]["decode_tokens_per_second"],
        "onnxruntime_vs_torch_prefill": sides_result["torch"]["prefill_ms"] / sides_result["onnxruntime"]["prefill_ms"],
    }
    atomic_write_text(args.json_out, json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    report(result, args.json_out)


def report(result: dict[str, Any], path: Path) -> None:
    table = Table(title=f"batch-1 greedy decode, {result['params']:,} params, {result['threads']} threads, "
                        f"{result['prompt_tokens']} prompt + {result['new_tokens']} new tokens")
    for column in ("side", "prefill ms", "decode tok/s", "min–max", "decode ratio"):
        table.add_column(column, justify="left" if column == "side" else "right")
    torch_rate = result["sides"]["torch"]["decode_tokens_per_second"]
    for name, side in result["sides"].items():
        low, high = side["decode_tokens_per_second_range"]
        table.add_row(name, f"{side['prefill_ms']:.1f}", f"{side['decode_tokens_per_second']:.1f}",
                      f"{low:.1f}–{high:.1f}", f"{side['decode_tokens_per_second'] / torch_rate:.2f}×")
    console = Console()
    console.print(table)
    console.print(f"onnxruntime / torch decode speed: {result['onnxruntime_vs_torch_decode']:.2f}×; prefill "
                  f"{result['onnxruntime_vs_torch_prefill']:.2f}×; greedy tokens identical: "
                  f"{result['greedy_tokens_identical']}; max |logit diff| {result['max_logit_diff']:.2e}; "
                  f"{result['onnx_bytes']:,} B ONNX; written to {path}")


if __name__ == "__main__":
    main()

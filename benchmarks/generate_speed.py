"""Batch-1 generation speed from an artifact: KV-cached `Session` vs full recompute vs Hugging Face Llama.

    python benchmarks/generate_speed.py --model runs/a/model.alrt [--new-tokens 128] [--recompute-tokens 512]
                                        [--prompt-tokens 32] [--rounds 3] [--threads K] [--json]

Measurements, each greedy, batch 1, fp32 on CPU (the precision `alrt generate` uses), interleaved over rounds
(median reported):
- ours: `alrt_core.inference.session.Session.generate` — the code behind `alrt generate` — end to end (prefill + decode);
- ours compiled: the same with `compile_decode=True` (`alrt generate --compile`: a compiled decode step over a static
  KV cache); its one-off compile, done before the first round, is reported apart and not in the per-token time;
- ours on onnxruntime: the same `Session` over the model exported by `alrt export onnx` (what
  `alrt generate model.onnx` runs; the export itself, done once per model, is not timed);
- reference: `LlamaForCausalLM.generate` (`transformers`, KV cache on, `min_new_tokens` = `max_new_tokens`) on a
  Llama of our width, depth, heads, KV heads and vocabulary whose MLP width makes its parameter count equal ours
  (random weights: its speed does not depend on them);
- recompute: our model without a cache, one full forward over the whole sequence per new token, for
  `--recompute-tokens` tokens, against the cached session over the same tokens; the greedy token ids must be equal.
  When prompt + recompute tokens exceed the trained context, the model is rebuilt with a longer RoPE table (same
  weights; text quality past the trained context is not the point here, identical tokens and speed are).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alrt_core.fileio import atomic_write_text  # noqa: E402
from alrt_core.inference.sampling import SamplingConfig  # noqa: E402
from alrt_core.inference.session import Session  # noqa: E402
from alrt_core.model.gpt import GPT  # noqa: E402
from benchmarks.reference_llama import build_reference  # noqa: E402
from export.loader import load_model  # noqa: E402
from export.onnx_export import onnx_model_bytes  # noqa: E402
from export.onnx_runtime import create_session, decoder_from_session  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "generate_speed.json"
GREEDY = SamplingConfig(temperature=0.0)


def with_context(model: GPT, length: int) -> GPT:
    """The same weights with RoPE tables and caches sized for `length` positions (if the trained context is shorter)."""
    if length <= model.config.seq_len:
        return model
    longer = GPT(dataclasses.replace(model.config, seq_len=length), layer_ranks=model.layer_ranks())
    longer.load_state_dict(model.state_dict())
    return longer.eval()


def cached_greedy(model: Any, tokenizer: Any, prompt: list[int], new_tokens: int,
                  session: Session | None = None) -> tuple[list[int], float]:
    if session is None:
        session = Session(model, tokenizer)
    session.reset()
    started = time.perf_counter()
    result = session.generate(prompt, max_new_tokens=new_tokens, sampling=GREEDY)
    return result.token_ids, time.perf_counter() - started


@torch.no_grad()
def recompute_greedy(model: GPT, prompt: list[int], new_tokens: int, eos: int) -> tuple[list[int], float]:
    ids = list(prompt)
    started = time.perf_counter()
    for _ in range(new_tokens):
        token = int(torch.argmax(model(torch.tensor([ids]), logits_from=len(ids) - 1)[0, -1]))
        ids.append(token)
        if token == eos:
            break
    return ids[len(prompt):], time.perf_counter() - started


@torch.no_grad()
def reference_generate(reference: torch.nn.Module, prompt: list[int], new_tokens: int) -> float:
    inputs = torch.tensor([prompt])
    started = time.perf_counter()
    out = reference.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
    seconds = time.perf_counter() - started
    assert out.shape[1] == len(prompt) + new_tokens
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help=".alrt artifact or checkpoint")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens per generation for ours vs reference")
    parser.add_argument("--recompute-tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print only one JSON object")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    text = "ROMEO.\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun. " * 4
    prompt = [tokenizer.bos_id, *tokenizer.encode(text)][: args.prompt_tokens]
    context = len(prompt) + max(args.new_tokens, args.recompute_tokens)
    long_model = with_context(model, context)
    short_model = with_context(model, len(prompt) + args.new_tokens)  # the trained model itself when that fits
    reference = build_reference(model, context).eval()

    onnx_decoder, _ = decoder_from_session(create_session(onnx_model_bytes(short_model, tokenizer, "benchmark")[1],
                                                          threads=args.threads))
    compiled_session = Session(short_model, tokenizer, compile_decode=True)
    decode_step = compiled_session.decode_step
    assert decode_step is not None
    times: dict[str, list[float]] = {"ours": [], "ours_compiled": [], "ours_onnx": [], "reference": [],
                                     "cached_long": [], "recompute_long": []}
    ours_tokens = args.new_tokens
    identical = compiled_identical = True
    for _ in range(args.rounds):
        tokens, seconds = cached_greedy(short_model, tokenizer, prompt, args.new_tokens)
        ours_tokens = len(tokens)
        times["ours"].append(seconds / len(tokens))
        compiled_tokens, seconds = cached_greedy(short_model, tokenizer, prompt, args.new_tokens, compiled_session)
        times["ours_compiled"].append(seconds / len(compiled_tokens))
        compiled_identical = compiled_identical and compiled_tokens == tokens
        onnx_tokens, seconds = cached_greedy(onnx_decoder, tokenizer, prompt, args.new_tokens)
        times["ours_onnx"].append(seconds / len(onnx_tokens))
        identical = identical and onnx_tokens == tokens
        times["reference"].append(reference_generate(reference, prompt, args.new_tokens) / args.new_tokens)
        cached, seconds = cached_greedy(long_model, tokenizer, prompt, args.recompute_tokens)
        times["cached_long"].append(seconds / len(cached))
        recomputed, seconds = recompute_greedy(long_model, prompt, args.recompute_tokens, tokenizer.eos_id)
        times["recompute_long"].append(seconds / len(recomputed))
        identical = identical and cached == recomputed
    per_token = {side: statistics.median(values) for side, values in times.items()}
    result = {
        "model": str(args.model), "kind": loaded.kind, "params": model.num_parameters(),
        "reference_params": reference.num_parameters(),
        "reference_intermediate_size": reference.config.intermediate_size,
        "prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "ours_tokens_generated": ours_tokens,
        "recompute_tokens": args.recompute_tokens, "rounds": args.rounds, "threads": torch.get_num_threads(),
        "tokens_per_second": {side: 1.0 / seconds for side, seconds in per_token.items()},
        "ours_vs_reference": per_token["reference"] / per_token["ours"],
        "ours_compiled_vs_reference": per_token["reference"] / per_token["ours_compiled"],
        "ours_compiled_vs_ours": per_token["ours"] / per_token["ours_compiled"],
        "compile_seconds": decode_step.compile_seconds, "compile_fallback": decode_step.fallback_reason,
        "compiled_tokens_identical": compiled_identical,
        "ours_onnx_vs_reference": per_token["reference"] / per_token["ours_onnx"],
        "cache_vs_recompute": per_token["recompute_long"] / per_token["cached_long"],
        "greedy_tokens_identical": identical,
        "context_extended_to": long_model.config.seq_len,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
        return
    report(result)


def report(result: dict[str, Any]) -> None:
    rate = result["tokens_per_second"]
    table = Table(title=f"batch-1 greedy generation, {result['params']:,} params, {result['threads']} threads")
    for column in ("side", "tokens", "tokens/s", "ratio"):
        table.add_column(column, justify="right" if column != "side" else "left")
    table.add_row("ours (KV cache, alrt generate)", str(result["new_tokens"]), f"{rate['ours']:.1f}",
                  f"{result['ours_vs_reference']:.2f}× reference")
    table.add_row(f"ours, compiled decode step (alrt generate --compile; compile {result['compile_seconds']:.0f} s once)",
                  str(result["new_tokens"]), f"{rate['ours_compiled']:.1f}",
                  f"{result['ours_compiled_vs_reference']:.2f}× reference")
    table.add_row("ours on onnxruntime (alrt generate model.onnx)", str(result["new_tokens"]),
                  f"{rate['ours_onnx']:.1f}", f"{result['ours_onnx_vs_reference']:.2f}× reference")
    table.add_row(f"HF Llama generate ({result['reference_params']:,} params)", str(result["new_tokens"]),
                  f"{rate['reference']:.1f}", "1.00×")
    table.add_row("ours, KV cache", str(result["recompute_tokens"]), f"{rate['cached_long']:.1f}",
                  f"{result['cache_vs_recompute']:.2f}× recompute")
    table.add_row("ours, full recompute", str(result["recompute_tokens"]), f"{rate['recompute_long']:.1f}", "1.00×")
    console = Console()
    console.print(table)
    if result["compile_fallback"]:
        console.print(f"the compiled step fell back to eager: {result['compile_fallback']}")
    console.print(f"greedy tokens identical: compiled vs eager {result['compiled_tokens_identical']}; "
                  f"cache vs recompute, torch vs onnxruntime {result['greedy_tokens_identical']}; "
                  f"written to {RESULTS}")


if __name__ == "__main__":
    main()

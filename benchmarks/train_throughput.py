"""Training throughput of ALRT's model + optimizers against Hugging Face Llama of equal size, in one process.

All sides train on the same random batch with the same batch size and sequence length. Measurements are
interleaved round by round (the order rotating each round) so that the machine's noise hits every side alike;
per side the median step time over rounds is reported with its min-max spread, and each ratio is also taken per
round (paired) before its median. Model FLOP utilisation is computed against matmul peaks measured in this run.

    python benchmarks/train_throughput.py                 # rich table, JSON to benchmarks/results/
    python benchmarks/train_throughput.py --json          # one JSON object on stdout
    python benchmarks/train_throughput.py --profile       # also the top ops of our step (torch.profiler)
    python benchmarks/train_throughput.py --plain-ns      # also our step with Muon's plain Newton-Schulz (before)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alrt_core.config import TrainConfig, preset  # noqa: E402
from alrt_core.fileio import atomic_write_text  # noqa: E402
from alrt_core.model.gpt import GPT  # noqa: E402
from alrt_core.precision import autocast_context, resolve_autocast  # noqa: E402
from alrt_core.training import muon  # noqa: E402
from alrt_core.training.optimizers import build_optimizers  # noqa: E402
from benchmarks.reference_llama import build_reference  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
VOCAB = 1024
CPU = torch.device("cpu")
SLOW_SIDE_FACTOR = 4.0  # an HF side whose first step is this many times the other's is timed only by that step
FLOPS_FORMULA = "6*N_matmul + 12*L*T*d per token (fwd+bwd; attention scores+values, causal mask not discounted)"

Step = Callable[[], None]


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = (2048, 3072), repeats: int = 3) -> float:
    """Best-of-N FLOP/s of square matmuls: the ceiling the models' matmuls could reach at this precision."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        start = time.perf_counter()
        a @ b  # first call: oneDNN/MKL kernel selection and page faults
        first = time.perf_counter() - start
        if first > 2.0:  # a precision without hardware support (bf16 at ~2 GFLOP/s): one call tells enough
            return max(best, 2 * size**3 / first)
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def matmul_params_ours(model: GPT) -> int:
    """Projection weights (dense or both factors) plus the head; the tied embedding is a matmul only as the head."""
    head = model.head.weight if model.head is not None else model.embed.weight
    return sum(p.numel() for layer in model.projections().values() for p in layer.parameters()) + head.numel()


def matmul_params_reference(model: nn.Module) -> int:
    """Unique nn.Linear weights: lm_head is tied to the embedding, which counts once, as the head."""
    weights = {id(mod.weight): mod.weight.numel() for mod in model.modules() if isinstance(mod, nn.Linear)}
    return sum(weights.values())


def cpu_model() -> str:
    """The CPU's model name (figures move with it: bf16 is 5x fp32 on one chip of this class, 0.05x on another)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_step(loss_fn: Callable[[], Tensor], optimizers: list[torch.optim.Optimizer], bf16: bool) -> Step:
    def step() -> None:
        with autocast_context(CPU, bf16):
            loss = loss_fn()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def with_plain_newton_schulz(step: Step) -> Step:
    """`step` with Muon's Gram form of Newton–Schulz switched off: the step as it was before that form (same
    iterates, every matrix through the plain m×n iteration)."""

    def plain_step() -> None:
        saved = muon.GRAM_MIN_ASPECT
        muon.GRAM_MIN_ASPECT = math.inf
        try:
            step()
        finally:
            muon.GRAM_MIN_ASPECT = saved

    return plain_step


def time_newton_schulz(model: GPT, rounds: int = 20) -> dict[str, float]:
    """Median seconds of one Muon orthogonalisation of all the model's projection matrices (random updates of their
    shapes), Gram form against plain, interleaved round by round: the part of the step the Gram form changes, timed
    without the whole step's noise."""
    updates = [torch.randn_like(p) for layer in model.projections().values() for p in layer.parameters() if p.ndim == 2]

    def gram() -> None:
        muon.orthogonalize_all(updates, 5, bf16=False)

    sides: dict[str, Step] = {"gram": gram, "plain": with_plain_newton_schulz(gram)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_index in range(rounds + 2):
        for name in sorted(sides, reverse=round_index % 2 == 1):
            start = time.perf_counter()
            sides[name]()
            if round_index >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - start)
    return {f"{name}_s_median": statistics.median(values) for name, values in times.items()}


def profile_step(step: Step, steps: int = 2, top: int = 8) -> list[dict[str, Any]]:
    """Top ops of `steps` steps by self CPU time: where our step actually spends its time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / steps,
         "share": e.self_cpu_time_total / total, "calls_per_step": e.count // steps}
        for e in events[:top]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batch-tokens", type=int, default=None, help="tokens per step; default: the preset's")
    parser.add_argument("--seq-len", type=int, default=None, help="default: the preset's model.seq_len")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="discarded steps per side (allocator, optimizer state)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile our model (default: the preset's train.compile, as `alrt train` does)")
    parser.add_argument("--compile-reference", action="store_true", help="torch.compile the HF reference too")
    parser.add_argument("--profile", action="store_true", help="profile our step and report its top 8 ops")
    parser.add_argument("--plain-ns", action="store_true",
                        help="also time (and profile) our step with Muon's plain Newton-Schulz, the step before its Gram form")
    parser.add_argument("--json", action="store_true", help="print only one JSON object")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = preset(args.preset)
    config.model.vocab_size = VOCAB
    if args.seq_len:
        config.model.seq_len = args.seq_len
    m, seq_len = config.model, config.model.seq_len
    rows_per_batch = max(1, (args.batch_tokens or config.train.batch_tokens) // seq_len)
    data = torch.randint(0, VOCAB, (rows_per_batch, seq_len + 1))
    inputs, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    tokens = inputs.numel()

    ours = GPT(m).train()
    ours_bf16 = resolve_autocast("auto", CPU)  # what `alrt train` would use here
    compile_ours = config.train.compile if args.compile is None else args.compile

    def our_step(model: GPT) -> Step:
        forward = torch.compile(model) if compile_ours else model  # the trainer's forward for this preset
        return make_step(lambda: forward(inputs, targets), build_optimizers(model, TrainConfig(max_steps=1)), ours_bf16)

    ours_step = our_step(ours)
    reference = build_reference(ours, seq_len).train()
    # Two copies, so each precision row trains its own weights with its own AdamW state.
    references = {"bf16": reference, "fp32": copy.deepcopy(reference)}

    def reference_loss(model: nn.Module) -> Callable[[], Tensor]:
        # Same targets and token count as ours (HF's `labels=` path would shift and drop one position per row);
        # the fp32 upcast of the logits is what HF's own loss does too.
        forward = torch.compile(model) if args.compile_reference else model
        return lambda: F.cross_entropy(forward(input_ids=inputs).logits.float().flatten(0, 1), targets.flatten())

    steps: dict[str, Step] = {"alrt": ours_step}
    precision = {"alrt": "bf16" if ours_bf16 else "fp32"}
    if args.plain_ns:
        steps["alrt plain-NS"] = with_plain_newton_schulz(our_step(copy.deepcopy(ours)))
        precision["alrt plain-NS"] = precision["alrt"]
    for prec, model in references.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        steps[f"hf-llama {prec}"] = make_step(reference_loss(model), [optimizer], prec == "bf16")
        precision[f"hf-llama {prec}"] = prec

    peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}  # and again after
    # One step of each HF precision first: where one is many times slower than the other (bf16 without hardware
    # support runs matmuls at ~1-3 GFLOP/s against fp32's ~50), it cannot be HF's fastest and would take most of
    # the run, so it is reported from that step and left out of the rounds.
    first_step: dict[str, float] = {}
    for name in ("hf-llama bf16", "hf-llama fp32"):
        started = time.perf_counter()
        steps[name]()
        first_step[name] = time.perf_counter() - started
    fastest_first = min(first_step.values())
    left_out = {name: seconds for name, seconds in first_step.items() if seconds > SLOW_SIDE_FACTOR * fastest_first}
    for name in left_out:
        del steps[name]
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        # Rotate the order so no side always runs right after the same neighbour (caches, thermal, noise bursts).
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            start = time.perf_counter()
            for _ in range(args.steps_per_round):
                steps[name]()
            times[name].append((time.perf_counter() - start) / args.steps_per_round)

    # Peaks are best-of-N: measure again now and keep the better, so a noise burst at start cannot lower them.
    peaks = {prec: max(peak, matmul_peak(torch.bfloat16 if prec == "bf16" else torch.float32))
             for prec, peak in peaks.items()}
    attention = 12 * m.num_layers * seq_len * m.model_dim
    flops = {name: 6 * matmul_params_reference(reference) + attention for name in [*names, *left_out]}
    flops["alrt"] = 6 * matmul_params_ours(ours) + attention
    if args.plain_ns:
        flops["alrt plain-NS"] = flops["alrt"]
    for name, seconds in left_out.items():
        times[name] = [seconds]  # its one (first) step, which includes no compilation for HF's eager model
    rows = []
    for name in [*names, *left_out]:
        median = statistics.median(times[name])
        rate = tokens / median
        rows.append({
            "side": name, "precision": precision[name], "tokens_per_s": rate, "step_s_median": median,
            "step_s_min": min(times[name]), "step_s_max": max(times[name]), "flops_per_token": flops[name],
            "mfu": rate * flops[name] / peaks[precision[name]], "timed_by_first_step_only": name in left_out,
        })

    def ratio(other: str) -> dict[str, float]:
        if other in left_out:  # one step, no rounds to pair
            single = times[other][0] / statistics.median(times["alrt"])
            return {"of_medians": single, "paired_median": single, "paired_min": single, "paired_max": single}
        paired = [b / a for a, b in zip(times["alrt"], times[other], strict=True)]  # per round: ours tok/s ÷ theirs
        return {"of_medians": statistics.median(times[other]) / statistics.median(times["alrt"]),
                "paired_median": statistics.median(paired), "paired_min": min(paired), "paired_max": max(paired)}

    # HF's fastest precision on this machine (the yardstick): whichever of its two rows stepped faster.
    hf_fastest = min(("bf16", "fp32"), key=lambda prec: statistics.median(times[f"hf-llama {prec}"]))
    result: dict[str, Any] = {
        "cpu_model": cpu_model(), "preset": args.preset, "compiled_alrt": compile_ours, "compiled_reference": args.compile_reference,
        "params_alrt": ours.num_parameters(), "params_reference": reference.num_parameters(),
        "reference_intermediate_size": reference.config.intermediate_size,
        "batch_tokens": tokens, "seq_len": seq_len, "threads": torch.get_num_threads(), "rounds": args.rounds,
        "steps_per_round": args.steps_per_round, "warmup": args.warmup, "flops_formula": FLOPS_FORMULA,
        "matmul_peak_flops": peaks, "rows": rows,
        "ratio_vs_hf_bf16": ratio("hf-llama bf16"),
        "ratio_vs_hf_same_precision": ratio(f"hf-llama {precision['alrt']}"),
        "hf_fastest_precision": hf_fastest, "ratio_vs_hf_fastest": ratio(f"hf-llama {hf_fastest}"),
        "step_times_s": times, "left_out_of_rounds": sorted(left_out), "torch": torch.__version__,
    }
    if args.plain_ns:
        plain = [b / a for a, b in zip(times["alrt"], times["alrt plain-NS"], strict=True)]
        result["newton_schulz_alone"] = time_newton_schulz(ours)
        result["speedup_vs_plain_ns"] = {"of_medians": statistics.median(times["alrt plain-NS"]) / statistics.median(times["alrt"]),
                                         "paired_median": statistics.median(plain), "paired_min": min(plain), "paired_max": max(plain)}
    if args.profile:
        result["profile_alrt"] = profile_step(ours_step)
        if args.plain_ns:
            result["profile_alrt_plain_ns"] = profile_step(steps["alrt plain-NS"])
    atomic_write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    report(result)


def report(result: dict[str, Any]) -> None:
    console = Console()
    console.print(f"CPU: {result['cpu_model']}")
    table = Table(title=f"training throughput: {result['preset']} shape, {result['batch_tokens']} tokens/step, "
                        f"seq {result['seq_len']}, {result['threads']} threads, {result['rounds']} rounds")
    for column in ("side", "precision", "tok/s (median)", "step ms: median [min-max]", "GFLOP/token", "MFU"):
        table.add_column(column, justify="left" if column in ("side", "precision") else "right")
    for row in result["rows"]:
        table.add_row(
            row["side"], row["precision"], f"{row['tokens_per_s']:,.0f}",
            f"{row['step_s_median'] * 1e3:,.0f} [{row['step_s_min'] * 1e3:,.0f}-{row['step_s_max'] * 1e3:,.0f}]",
            f"{row['flops_per_token'] / 1e9:.4f}", f"{row['mfu']:.1%}",
        )
    console.print(table)
    peaks = result["matmul_peak_flops"]
    console.print(
        f"params: alrt {result['params_alrt']:,}, hf-llama {result['params_reference']:,} "
        f"(intermediate_size {result['reference_intermediate_size']}); matmul peak bf16 {peaks['bf16'] / 1e9:.0f}, "
        f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s; FLOPs: {result['flops_formula']}"
    )
    fastest = f"hf-llama at its fastest here ({result['hf_fastest_precision']})"
    for label, key in (("hf-llama bf16", "ratio_vs_hf_bf16"), ("hf-llama same precision", "ratio_vs_hf_same_precision"),
                       (fastest, "ratio_vs_hf_fastest")):
        r = result[key]
        console.print(f"alrt / {label}: {r['of_medians']:.2f}x (ratio of medians), paired per round "
                      f"{r['paired_median']:.2f}x [{r['paired_min']:.2f}-{r['paired_max']:.2f}]")
    if "speedup_vs_plain_ns" in result:
        r = result["speedup_vs_plain_ns"]
        console.print(f"alrt / alrt plain-NS: {r['of_medians']:.2f}x (ratio of medians), paired per round "
                      f"{r['paired_median']:.2f}x [{r['paired_min']:.2f}-{r['paired_max']:.2f}]")
        alone = result["newton_schulz_alone"]
        console.print(f"Newton-Schulz of all projection matrices alone: Gram form {alone['gram_s_median'] * 1e3:.0f} ms, "
                      f"plain {alone['plain_s_median'] * 1e3:.0f} ms per step")
    for key, title in (("profile_alrt_plain_ns", "alrt step with plain Newton-Schulz (before)"), ("profile_alrt", "alrt step")):
        if key not in result:
            continue
        ops = Table(title=f"{title}: top ops by self CPU time")
        for column in ("op", "ms/step", "share", "calls/step"):
            ops.add_column(column, justify="left" if column == "op" else "right")
        for op in result[key]:
            ops.add_row(op["op"], f"{op['self_cpu_ms_per_step']:.1f}", f"{op['share']:.1%}", str(op["calls_per_step"]))
        console.print(ops)
    console.print(f"JSON: {RESULTS}")


if __name__ == "__main__":
    main()

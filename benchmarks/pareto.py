"""The bpb-vs-bytes frontier at equal training time: a dense family against ALRT at each dense member's bytes.

    python benchmarks/pareto.py                                  # widths 64..256, 10 minutes each (~2 h 10 min)
    python benchmarks/pareto.py --minutes 3 --widths 64,128      # a screening run
    python benchmarks/pareto.py --minutes 3 --widths 64,128 --dense-from benchmarks/results/pareto.json \\
        --alrt-set rank.safety_factor=3                           # a lever on the ALRT side, dense reused

The question our users ask: under my byte budget and my training time, what gives the lowest bits per byte?
Every point is one `alrt train --preset cpu` process for `--minutes` of wallclock (compilation included, as in
the trainer), same data, seed and data order, run one after another (never two at once: two trainings on two
cores slow each other unevenly), then `alrt quantize` (GPTQ int6 with clip search, never over a budget) and
`alrt eval --sliding` on two held-out splits:

- `val`: the embedded corpus's validation works (Macbeth, Twelfth Night, the Sonnets);
- `second`: three more works held out of training for this benchmark (a comedy, a history and a narrative poem),
  so a setting that only suits the first split shows up as a gain on one split alone.

**Dense family** (the shape rule): 4 blocks, MLP 4×, head width 32 below a model width of 128 and 64 from there,
half as many KV heads as heads (one when the head count is odd). Widths 64 → 256 span ~0.2 → ~2 MB artifacts,
from capacity-bound (hundreds of tokens per parameter in 10 minutes) to step-bound (a few). Each member is
quantised without a budget: its artifact bytes are the budget of the ALRT point beside it.

**ALRT** at each dense member's bytes: `--target-bytes` set to those bytes (the controller's pressure keeps the
ranks' estimated artifact within them), from the start shape `--alrt-start` gives (`same`: the dense member's
shape; `wide`: 1.5× its width; `deep`: 6 blocks; `mlp`: a 6× MLP), then `alrt quantize --budget BYTES`, so the point is never
over the dense point's bytes. `--alrt-set` adds `--set` items to the ALRT runs only (a lever under test).

Output: a table (budget, method, shape, parameters, tokens per parameter, artifact bytes, sliding bpb of the
checkpoint and the artifact on both splits, steps, ms/step), `benchmarks/results/pareto.json` and
`benchmarks/results/pareto.png` (artifact bpb against bytes, one line per method, one panel per split).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alrt_core.data.corpus import shakespeare_split  # noqa: E402
from alrt_core.data.prepare import prepare_dataset  # noqa: E402
from alrt_core.fileio import atomic_write_text  # noqa: E402
from benchmarks.alrt_compare import RESULTS, run_logged, summarize  # noqa: E402

# Held out of training for the second split: a comedy, a history and a narrative poem (~295k characters).
SECOND_SPLIT_TITLES = ("The Comedy of Errors", "King John", "The Rape of Lucrece")
DEFAULT_WIDTHS = (64, 96, 128, 192, 256)
ALRT_STARTS = ("same", "wide", "deep", "mlp")
VOCAB_SIZE = 1024
SEED = 1337


def dense_shape(width: int, layers: int = 4) -> dict[str, int]:
    """The dense family's shape rule (see the module docstring)."""
    head_dim = 32 if width < 128 else 64
    if width % head_dim:
        raise SystemExit(f"width {width} is not a multiple of the head width {head_dim}")
    heads = width // head_dim
    return {"model_dim": width, "num_layers": layers, "num_heads": heads,
            "num_kv_heads": heads // 2 if heads % 2 == 0 else 1}


def alrt_shape(width: int, start: str) -> dict[str, Any]:
    if start == "mlp":  # the same width (and embedding), a 6x MLP: room for the bytes low-rank Q/K give up
        return {**dense_shape(width), "mlp_mult": 6.0}
    if start == "wide":
        return dense_shape(int(round(width * 1.5 / 32)) * 32)
    if start == "deep":
        return dense_shape(width, layers=6)
    return dense_shape(width)


def prepare_data(root: Path) -> tuple[Path, Path]:
    """(shard folder, second-split .jsonl): the embedded corpus's training works less the second split."""
    data, second = root / "data", root / "second.jsonl"
    if (data / "meta.json").is_file() and second.is_file():
        return data, second
    train_docs, val_docs = shakespeare_split()
    held = [doc for doc in train_docs if doc.title in SECOND_SPLIT_TITLES]
    if len(held) != len(SECOND_SPLIT_TITLES):
        raise SystemExit(f"second-split works missing from the corpus: {SECOND_SPLIT_TITLES}")
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "train.jsonl", [doc for doc in train_docs if doc.title not in SECOND_SPLIT_TITLES])
    write_jsonl(root / "val.jsonl", val_docs)
    prepare_dataset([root / "train.jsonl"], data, vocab_size=VOCAB_SIZE, val_inputs=[root / "val.jsonl"], progress=False)
    write_jsonl(second, held)
    return data, second


def write_jsonl(path: Path, documents: list[Any]) -> None:
    atomic_write_text(path, "".join(json.dumps({"title": d.title, "text": d.text}) + "\n" for d in documents))


def alrt(*args: str) -> list[str]:
    return [sys.executable, "-m", "alrt_cli", *args]


def run_json(command: list[str], label: str) -> dict[str, Any]:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{label} failed (status {result.returncode}): {result.stderr.strip()[-400:]}")
    return json.loads(result.stdout)


def sliding_bpb(model: Path, data: Path | None, label: str) -> float:
    extra = ["--data", str(data)] if data is not None else []
    return run_json(alrt("eval", str(model), "--sliding", "--stride", "64", *extra, "--json"), label)["bpb"]


def run_point(method: str, width: int, shape: dict[str, int], minutes: float, budget: int | None,
              extra_sets: list[str], data: Path, second: Path, root: Path, tag: str) -> dict[str, Any]:
    name = f"{tag}-{method}-{width}"  # the tag keeps screening runs that share a root apart
    run_dir = root / name
    sets = [f"model.{key}={value}" for key, value in shape.items()] + extra_sets
    policy = ["--rank-policy", "dense"] if method == "dense" else ["--rank-policy", "stable", "--target-bytes", str(budget)]
    command = alrt("train", "--preset", "cpu", "--data", str(data), "--max-minutes", str(minutes), "--seed", str(SEED),
                   "--out-dir", str(run_dir), *policy, *[item for s in sets for item in ("--set", s)])
    started = time.time()
    peak = run_logged(command, root / f"{name}.train.log", name)
    row = summarize(name, run_dir, peak_rss_mb=peak, wall_s=time.time() - started)
    artifact = run_dir / "model.alrt"
    quantize = alrt("quantize", str(run_dir / "best.pt"), "--out", str(artifact), "--json")
    quantized = run_json(quantize + (["--budget", str(budget)] if budget is not None and method != "dense" else []),
                         f"quantize {name}")
    row.update(
        method=method, width=width, shape=shape, sets=sets, budget=budget,
        tokens_per_param=row["tokens"] / row["params"],
        artifact_bytes=quantized["total_bytes"], fit_actions=quantized["actions"],
        checkpoint_val_bpb=sliding_bpb(run_dir / "best.pt", None, f"eval {name}"),
        artifact_val_bpb=sliding_bpb(artifact, None, f"eval {name}"),
        checkpoint_second_bpb=sliding_bpb(run_dir / "best.pt", second, f"eval {name}"),
        artifact_second_bpb=sliding_bpb(artifact, second, f"eval {name}"),
    )
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'budget B':>10} {'method':<6} {'shape':<10} {'params':>9} {'tok/par':>7} {'artifact B':>10} "
              f"{'val ckpt':>8} {'val art':>8} {'2nd ckpt':>8} {'2nd art':>8} {'steps':>6} {'ms/step':>8}")
    print(header)
    print("-" * len(header))
    for r in sorted(rows, key=lambda r: (r["budget"] or r["artifact_bytes"], r["method"])):
        shape = f"{r['shape']['num_layers']}x{r['shape']['model_dim']}"
        print(f"{r['budget'] or r['artifact_bytes']:>10,} {r['method']:<6} {shape:<10} {r['params']:>9,} "
              f"{r['tokens_per_param']:>7.1f} {r['artifact_bytes']:>10,} {r['checkpoint_val_bpb']:>8.4f} "
              f"{r['artifact_val_bpb']:>8.4f} {r['checkpoint_second_bpb']:>8.4f} {r['artifact_second_bpb']:>8.4f} "
              f"{r['steps']:>6} {r['step_ms']:>8.1f}")


def deltas(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ALRT minus dense at each budget, on both splits (negative: ALRT better)."""
    dense = {r["width"]: r for r in rows if r["method"] == "dense"}
    out = []
    for r in rows:
        if r["method"] == "dense" or r["width"] not in dense:
            continue
        d = dense[r["width"]]
        out.append({"width": r["width"], "budget": d["artifact_bytes"], "alrt_bytes": r["artifact_bytes"],
                    "within_budget": r["artifact_bytes"] <= d["artifact_bytes"],
                    "val_delta": round(r["artifact_val_bpb"] - d["artifact_val_bpb"], 4),
                    "second_delta": round(r["artifact_second_bpb"] - d["artifact_second_bpb"], 4)})
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for axis, key, title in ((axes[0], "artifact_val_bpb", "validation works"),
                             (axes[1], "artifact_second_bpb", "second held-out split")):
        for method, style in (("dense", "o-"), ("alrt", "s-")):
            points = sorted((r["artifact_bytes"], r[key]) for r in rows if r["method"] == method)
            if points:
                axis.plot([p[0] / 1e6 for p in points], [p[1] for p in points], style, label=method)
        axis.set_xscale("log")
        # Plain MB labels at the points themselves: log-axis labels of a range under one decade overlap.
        sizes = sorted({r["artifact_bytes"] / 1e6 for r in rows if r["method"] == "dense"})
        axis.set_xticks(sizes, [f"{size:.2g}" for size in sizes])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel("artifact bytes (MB, int6 GPTQ, compressed)")
        axis.set_ylabel("bpb (sliding, after quantization)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--widths", default=",".join(map(str, DEFAULT_WIDTHS)))
    parser.add_argument("--methods", default="dense,alrt")
    parser.add_argument("--alrt-start", choices=ALRT_STARTS, default="same")
    parser.add_argument("--alrt-set", action="append", default=[], help="--set items for the ALRT runs only.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="--set items for every run.")
    parser.add_argument("--dense-from", type=Path, default=None,
                        help="Reuse the dense rows of an earlier pareto.json (same minutes and widths).")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--tag", default="pareto", help="Name of the JSON and PNG under benchmarks/results/.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    root = args.out_dir or Path("runs") / f"pareto-{time.strftime('%Y%m%d-%H%M%S')}"
    data, second = prepare_data(root)
    rows: list[dict[str, Any]] = []
    if args.dense_from is not None:
        earlier = json.loads(args.dense_from.read_text())
        rows = [r for r in earlier["rows"] if r["method"] == "dense" and r["width"] in widths]
    for width in widths:
        if "dense" in methods and not any(r["method"] == "dense" and r["width"] == width for r in rows):
            rows.append(run_point("dense", width, dense_shape(width), args.minutes, None, args.overrides,
                                  data, second, root, args.tag))
            print(f"dense {width}: {rows[-1]['artifact_bytes']:,} B, val {rows[-1]['artifact_val_bpb']:.4f}",
                  file=sys.stderr, flush=True)
    for width in widths:
        if "alrt" not in methods:
            continue
        dense = next((r for r in rows if r["method"] == "dense" and r["width"] == width), None)
        if dense is None:
            raise SystemExit(f"ALRT at width {width} needs the dense point's bytes: run dense or pass --dense-from")
        rows.append(run_point("alrt", width, alrt_shape(width, args.alrt_start), args.minutes, dense["artifact_bytes"],
                              [*args.overrides, *args.alrt_set], data, second, root, args.tag))
        print(f"alrt {width}: {rows[-1]['artifact_bytes']:,} B, val {rows[-1]['artifact_val_bpb']:.4f}",
              file=sys.stderr, flush=True)
    report = {"minutes": args.minutes, "widths": widths, "alrt_start": args.alrt_start, "alrt_set": args.alrt_set,
              "overrides": args.overrides, "second_split": list(SECOND_SPLIT_TITLES), "rows": rows,
              "alrt_minus_dense": deltas(rows), "run_root": str(root)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{args.tag}.json", json.dumps(report, indent=2) + "\n")
    plot(rows, RESULTS / f"{args.tag}.png")
    if args.json:
        print(json.dumps(report))
        return
    print_table(rows)
    for d in report["alrt_minus_dense"]:
        print(f"width {d['width']}: ALRT − dense = {d['val_delta']:+.4f} (val), {d['second_delta']:+.4f} (second); "
              f"{d['alrt_bytes']:,} of {d['budget']:,} B")


if __name__ == "__main__":
    main()

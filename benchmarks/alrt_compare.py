"""Rank policies side by side at equal wallclock: dense vs fixed rank vs ALRT (stable) vs budget-driven, and the
`project` vs `reset` optimizer-state handling on resize.

    python benchmarks/alrt_compare.py                         # all variants, 10 minutes each (about an hour)
    python benchmarks/alrt_compare.py --minutes 3 --variants dense,stable
    python benchmarks/alrt_compare.py --set rank.safety_factor=3

Every variant is a separate `alrt train --preset cpu` process with the same seed and data order, run one after
another (never concurrently: two trainings on 2 cores slow each other unevenly). The table reports val bpb, the
parameters of the attention+MLP projections at the end (and their share of dense), steps, mean step time, peak
memory (the process's max RSS) and the mean final rank per projection kind. For the variants that resize, the
"spike" column is the loss after a resize minus before it: mean train loss over the 50 steps after each
rank_update minus the mean over the 50 steps before it, averaged over the updates that changed ranks (lower is
better; training alone makes it slightly negative).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alrt_core.fileio import atomic_write_text
from alrt_core.model.gpt import PROJECTION_KINDS, layer_kind
from alrt_core.training.events import read_events

RESULTS = Path(__file__).resolve().parent / "results"
SPIKE_WINDOW = 50

# The fixed baseline uses half of each projection's break-even rank, i.e. half of the dense parameters, which is
# the ALRT target's parameter bound. Ranks are for the cpu preset's shapes (256 wide, 128-wide K/V, 1024 MLP).
VARIANTS: dict[str, list[str]] = {
    "dense": ["--rank-policy", "dense"],
    "fixed": ["--rank-policy", "fixed", "--rank-kinds", "q=64,o=64,k=42,v=42,mlp=102"],
    "stable": ["--rank-policy", "stable"],
    "budget": ["--rank-policy", "stable", "--target-params", "1700000"],
    "stable-reset": ["--rank-policy", "stable", "--on-resize", "reset"],
}


def run_variant(name: str, minutes: float, overrides: list[str], root: Path) -> dict:
    run_dir = root / name
    command = [
        sys.executable, "-m", "alrt_cli", "train", "--preset", "cpu", "--max-minutes", str(minutes),
        "--out-dir", str(run_dir), *VARIANTS[name], *[item for o in overrides for item in ("--set", o)],
    ]
    started = time.time()
    peak = run_logged(command, root / f"{name}.log", name)
    return summarize(name, run_dir, peak_rss_mb=peak, wall_s=time.time() - started)


def run_logged(command: list[str], log_path: Path, label: str) -> float:
    """Run one process with its output in `log_path` (exit on failure); its peak RSS in MB.

    Each process gets its own empty inductor cache: a warm cache left by an earlier run of the same graph would
    spare that variant the compilation time (tens of seconds on CPU) the others pay inside their wallclock budget."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix=f"inductor-{label}-")}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{label} failed (status {status}); see {log_path}")
    return usage.ru_maxrss / 1024


def run_in_sequence(
    names: list[str], known: Iterable[str], out_dir: Path | None, prefix: str,
    run_one: Callable[[str, Path], dict], describe: Callable[[dict], str],
) -> list[dict]:
    """`run_one(name, root)` for each name, one after another (never concurrently: two trainings on 2 cores slow
    each other unevenly), with a progress line per name on stderr."""
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown name(s) {unknown}; known: {', '.join(known)}")
    root = out_dir or Path(tempfile.mkdtemp(prefix=prefix))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        rows.append(run_one(name, root))
        print(f"{name}: {describe(rows[-1])}", file=sys.stderr, flush=True)
    return rows


def summarize(name: str, run_dir: Path, peak_rss_mb: float, wall_s: float) -> dict:
    events = read_events(run_dir / "train.jsonl")
    start = next(e for e in events if e["event"] == "run_start")
    end = next(e for e in events if e["event"] == "run_end")
    steps = [e for e in events if e["event"] == "train_step"]
    updates = [e for e in events if e["event"] == "rank_update"]
    ranks = dict(start["layer_ranks"])
    for change in (e for e in events if e["event"] == "rank_change"):
        ranks[change["layer"]] = change["new_rank"]
    kind_means = {}
    for kind in PROJECTION_KINDS:
        values = [rank for layer, rank in ranks.items() if layer_kind(layer) == kind and rank is not None]
        kind_means[kind] = round(statistics.mean(values), 1) if values else None
    projection = updates[-1]["projection_params_after"] if updates else start["projection_params"]
    losses = {e["step"]: e["loss"] for e in steps}
    spikes = []
    for update in (u for u in updates if u["changed"]):
        before = [losses[s] for s in range(update["step"] - SPIKE_WINDOW + 1, update["step"] + 1) if s in losses]
        after = [losses[s] for s in range(update["step"] + 1, update["step"] + SPIKE_WINDOW + 1) if s in losses]
        if len(before) == SPIKE_WINDOW and len(after) == SPIKE_WINDOW:
            spikes.append(statistics.mean(after) - statistics.mean(before))
    return {
        "variant": name,
        "val_bpb": end["final_val_bpb"],
        "projection_params": projection,
        "dense_projection_params": start["dense_projection_params"],
        "projection_share": projection / start["dense_projection_params"],
        "params": updates[-1]["params_after"] if updates else start["params"],
        "steps": end["step"],
        "tokens": end["tokens"],
        "step_ms": 1000 * end["elapsed"] / max(end["step"], 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "rank_updates": len(updates),
        "rank_update_s": round(sum(u["seconds"] for u in updates), 2),
        "measure_fraction": statistics.mean(u["measure_fraction"] for u in updates) if updates else None,
        "resize_spike": statistics.mean(spikes) if spikes else None,
        "resizes_in_spike": len(spikes),
        "mean_rank_by_kind": kind_means,
        "run_dir": str(run_dir),
        "wall_s": round(wall_s, 1),
    }


def print_table(rows: list[dict]) -> None:
    header = (f"{'variant':<13} {'val bpb':>8} {'attn+MLP params':>16} {'share':>6} {'steps':>6} {'ms/step':>8} "
              f"{'peak MB':>8} {'spike':>8}  mean rank q/k/v/o/up/down")
    print(header)
    print("-" * len(header))
    for r in rows:
        spike = f"{r['resize_spike']:+.4f}" if r["resize_spike"] is not None else "-"
        kinds = "/".join("-" if v is None else f"{v:g}" for v in r["mean_rank_by_kind"].values())
        print(f"{r['variant']:<13} {r['val_bpb']:>8.4f} {r['projection_params']:>16,} {r['projection_share']:>6.0%} "
              f"{r['steps']:>6} {r['step_ms']:>8.1f} {r['peak_rss_mb']:>8.0f} {spike:>8}  {kinds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    rows = run_in_sequence(names, VARIANTS, args.out_dir, "alrt-compare-",
                           lambda name, root: run_variant(name, args.minutes, args.overrides, root),
                           lambda row: f"val bpb {row['val_bpb']:.4f}")
    dense = next((r for r in rows if r["variant"] == "dense"), None)
    report = {"minutes": args.minutes, "overrides": args.overrides, "rows": rows}
    if dense is not None:
        report["vs_dense"] = {r["variant"]: round(r["val_bpb"] - dense["val_bpb"], 4) for r in rows}
    atomic_write_text(RESULTS / "alrt_compare.json", json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()

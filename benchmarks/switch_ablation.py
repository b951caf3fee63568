"""Issue #7's switch groups at equal wallclock on the `cpu` preset: val bpb after quantization, baseline vs each group.

    python benchmarks/switch_ablation.py                       # every group, 5 minutes each (~35 minutes)
    python benchmarks/switch_ablation.py --minutes 10 --groups baseline,training
    python benchmarks/switch_ablation.py --set rank.policy=dense

Each group is one `alrt train --preset cpu --max-minutes M` process (same seed and data order, one after another,
never concurrently) with the group's switches set on top of the preset, then `alrt quantize best.pt --budget 16MB
--eval`, which fits the int6 GPTQ artifact to the budget and scores it: the bpb after quantization is the number
that counts (a switch that trains better but quantizes worse loses). The switch settings are the records' scaled
to the preset's 4 blocks of 256 (e.g. parallel residuals from block 3 of 4 as from 7 of 11; recurrence of the
middle blocks 1-2). The table shows each group's bpb before and after quantization, the quant gap, the delta
after quantization against the baseline (negative is better), steps, step time and artifact bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alrt_core.fileio import atomic_write_text
from benchmarks.alrt_compare import RESULTS, run_in_sequence, run_logged, summarize

GROUPS: dict[str, list[str]] = {
    "baseline": [],
    # XSA in every block (the 2026-04-09 record) and the sparse per-head output gate of the later records.
    "attention": ["model.xsa_layers=all", "model.attn_gate=sparse"],
    "residual": [
        "model.depth_norm_scale=true", "model.skip_gates=true", "model.parallel_from=3",
        "model.recur_layers=1-2", "model.recur_loops=2", "model.recur_start_frac=0.35",
    ],
    "embeddings": [
        "model.bigram_hash_size=2048", "model.bigram_dim=64", "model.smear_gate=true",
        "model.value_embed_layers=2-3", "model.value_embed_dim=64", "model.value_residual=true",
    ],
    # MuonEq-R; SWA over the last 15% (every 10 of the ~500 steps of 5 minutes); int6 QAT from LR multiplier 0.15.
    "training": [
        "train.muon_row_normalize=true", "train.swa_start_frac=0.85", "train.swa_every=10",
        "train.qat_lr_threshold=0.15",
    ],
}
BUDGET = "16MB"


def run_group(name: str, minutes: float, overrides: list[str], root: Path) -> dict:
    run_dir = root / name
    sets = [item for o in [*GROUPS[name], *overrides] for item in ("--set", o)]
    started = time.time()
    peak = run_logged([sys.executable, "-m", "alrt_cli", "train", "--preset", "cpu", "--max-minutes", str(minutes),
                       "--out-dir", str(run_dir), *sets], root / f"{name}.train.log", name)
    row = summarize(name, run_dir, peak_rss_mb=peak, wall_s=time.time() - started)
    quantize_json = root / f"{name}.quantize.json"
    with open(quantize_json, "w") as out:
        status = subprocess.run([sys.executable, "-m", "alrt_cli", "quantize", str(run_dir / "best.pt"), "--budget", BUDGET,
                                 "--out", str(run_dir / "model.alrt"), "--eval", "--json"], stdout=out,
                                stderr=subprocess.DEVNULL).returncode
    if status != 0:
        raise SystemExit(f"quantize of {name} failed (status {status})")
    quantized = json.loads(quantize_json.read_text())
    row.update(
        switches=GROUPS[name],
        checkpoint_bpb=quantized["eval"]["checkpoint_bpb"],
        quantized_bpb=quantized["eval"]["artifact_bpb"],
        quant_gap=quantized["eval"]["quant_gap"],
        artifact_bytes=quantized["total_bytes"],
    )
    return row


def print_table(rows: list[dict], baseline: dict | None) -> None:
    header = (f"{'group':<11} {'bpb ckpt':>9} {'bpb quant':>10} {'gap':>8} {'Δ vs base':>10} {'steps':>6} "
              f"{'ms/step':>8} {'params':>10} {'artifact B':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        delta = f"{r['quantized_bpb'] - baseline['quantized_bpb']:+.4f}" if baseline else "-"
        print(f"{r['variant']:<11} {r['checkpoint_bpb']:>9.4f} {r['quantized_bpb']:>10.4f} {r['quant_gap']:>+8.4f} "
              f"{delta:>10} {r['steps']:>6} {r['step_ms']:>8.1f} {r['params']:>10,} {r['artifact_bytes']:>11,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--groups", default=",".join(GROUPS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Applied to every group.")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = [n.strip() for n in args.groups.split(",") if n.strip()]
    rows = run_in_sequence(names, GROUPS, args.out_dir, "alrt-switches-",
                           lambda name, root: run_group(name, args.minutes, args.overrides, root),
                           lambda row: f"val bpb {row['checkpoint_bpb']:.4f} → {row['quantized_bpb']:.4f} quantized")
    baseline = next((r for r in rows if r["variant"] == "baseline"), None)
    report = {"minutes": args.minutes, "budget": BUDGET, "overrides": args.overrides, "rows": rows}
    if baseline is not None:
        report["quantized_vs_baseline"] = {r["variant"]: round(r["quantized_bpb"] - baseline["quantized_bpb"], 4) for r in rows}
    atomic_write_text(RESULTS / "switch_ablation.json", json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
    else:
        print_table(rows, baseline)


if __name__ == "__main__":
    main()

"""Quality run: the `cpu` preset for 10 minutes on the embedded corpus; val bpb on the held-out works.

    python benchmarks/quality_cpu.py                      # 10 minutes, rich summary, JSON to benchmarks/results/
    python benchmarks/quality_cpu.py --minutes 3 --set train.batch_tokens=8192
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alrt_core.config import apply_overrides, preset  # noqa: E402
from alrt_core.fileio import atomic_write_text  # noqa: E402
from alrt_core.training.events import read_events  # noqa: E402
from alrt_core.training.trainer import Trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_BPB = 1.95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = apply_overrides(preset(args.preset), args.overrides)
    config.train.max_minutes, config.train.max_steps = args.minutes, None
    run_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="alrt-quality-"))
    started = time.time()
    result = Trainer(config, run_dir, progress=False).run()
    steps = [e for e in read_events(run_dir / "train.jsonl") if e["event"] == "train_step"]
    summary = {
        "preset": args.preset, "overrides": args.overrides, "minutes": args.minutes, "run_dir": str(run_dir),
        "steps": result.steps, "tokens": steps[-1]["tokens"] if steps else 0,
        "mean_tok_s": (steps[-1]["tokens"] / steps[-1]["elapsed"]) if steps else 0.0,
        "final_val_bpb": result.final.bpb, "best_val_bpb": result.best_val_bpb, "val_bytes": result.final.bytes,
        "val_tokens": result.final.tokens, "target_bpb": TARGET_BPB, "meets_target": result.final.bpb <= TARGET_BPB,
        "wall_s": round(time.time() - started, 1),
    }
    atomic_write_text(RESULTS / f"quality_{args.preset}.json", json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        print(f"{key:>15}: {value}")


if __name__ == "__main__":
    main()

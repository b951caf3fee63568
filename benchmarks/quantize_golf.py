"""`alrt quantize --budget 16MB` at golf scale: where the time goes, phase by phase, on golf-shape checkpoints.

    python benchmarks/quantize_golf.py --data data/gpu_check [--budget 16MB] [--out-dir runs/quantize_golf]
                                       [--only init,trained-like] [--json]

`--data` is a shard folder at the golf vocabulary (8192) with its `tokenizer.model` (for instance the one
`benchmarks/gpu_check.py --prepare-data` writes); calibration reads its train shards. Two checkpoints of the `golf`
preset's shape (11×512, 35.9M parameters) are written once into `--out-dir`:

- `init`: the model as initialised (its zero-initialised output projections compress to almost nothing: it is
  just over 16 MB at int6 with an int8 embedding, so the fit takes one or two small moves);
- `trained-like`: every matrix redrawn with the per-row statistics of a trained model's matrices of the same kind,
  measured on a trained `cpu`-preset checkpoint (std relative to 1/√fan-in, spread of the row stds, tails): an
  artifact of such weights is over 16 MB at int6, as a trained golf model's is, so the budget fit runs.

Each is quantised by `quantize_checkpoint` (what `alrt quantize` runs) and its per-phase seconds are reported.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alrt_core.config import preset  # noqa: E402
from alrt_core.data.tokenizer import Tokenizer  # noqa: E402
from alrt_core.fileio import atomic_write_text  # noqa: E402
from alrt_core.model.gpt import GPT  # noqa: E402
from alrt_core.training.checkpoint import save_checkpoint  # noqa: E402
from alrt_core.units import parse_byte_size  # noqa: E402
from export.quantize import QuantizeOptions, quantize_checkpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "quantize_golf.json"
# Per matrix kind, from a trained `cpu`-preset checkpoint (1,000 steps): the matrix std as a multiple of
# 1/√fan-in, the coefficient of variation of its row stds, and Student-t degrees of freedom matching its kurtosis
# (kurtosis 3 + 6/(df − 4); None: Gaussian, kurtosis ≈ 3 measured).
TRAINED_STATISTICS: dict[str, tuple[float, float, float | None]] = {
    "attn.q": (0.75, 0.06, None), "attn.k": (0.81, 0.05, None), "attn.v": (0.94, 0.05, None),
    "attn.o": (0.68, 0.11, None), "mlp.up": (0.95, 0.26, None), "mlp.down": (0.83, 0.04, 7.0),
}
EMBED_STD, EMBED_ROW_CV = 0.24, 0.29  # the trained tied embedding: absolute std, row-std spread


def trained_like(weight: torch.Tensor, relative_std: float, row_cv: float, df: float | None,
                 generator: torch.Generator, absolute_std: float | None = None) -> torch.Tensor:
    rows, cols = weight.shape
    if df is None:
        values = torch.randn(rows, cols, generator=generator)
    else:  # Student-t as normal / sqrt(chi²/df), scaled to unit variance
        chi2 = torch.randn(rows, cols, int(df), generator=generator).square().sum(-1)
        values = torch.randn(rows, cols, generator=generator) / (chi2 / int(df)).sqrt() / (df / (df - 2)) ** 0.5
    sigma = math.sqrt(math.log(row_cv**2 + 1))  # log-normal row stds with that coefficient of variation, mean 1
    row_std = torch.exp(torch.randn(rows, generator=generator) * sigma - sigma**2 / 2)
    base = absolute_std if absolute_std is not None else relative_std / cols**0.5
    return values * row_std[:, None] * base


def make_checkpoints(folder: Path, tokenizer: Path) -> dict[str, Path]:
    config = preset("golf")
    config.model.vocab_size = Tokenizer.load(tokenizer).vocab_size
    torch.manual_seed(0)
    model = GPT(config.model)
    paths = {"init": folder / "golf-init" / "last.pt", "trained-like": folder / "golf-trained-like" / "last.pt"}
    generator = torch.Generator().manual_seed(0)
    for name, path in paths.items():
        if path.is_file():
            continue
        state = model.state_dict()
        if name == "trained-like":
            state = dict(state)
            for key, value in state.items():
                kind = next((k for k in TRAINED_STATISTICS if f".{k}." in key), None)
                if kind is not None and value.dim() == 2:
                    state[key] = trained_like(value, *TRAINED_STATISTICS[kind], generator)
                elif key == "embed.weight":
                    state[key] = trained_like(value, 0.0, EMBED_ROW_CV, None, generator, absolute_std=EMBED_STD)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tokenizer, path.parent / "tokenizer.model")
        save_checkpoint(path, {"config": config.to_dict(), "model": state, "ranks": model.layer_ranks(), "step": 0,
                               "ema": None, "val": {}})
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="golf-vocabulary shard folder with tokenizer.model")
    parser.add_argument("--budget", default="16MB")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/quantize_golf"))
    parser.add_argument("--only", default="init,trained-like")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    paths = make_checkpoints(args.out_dir, args.data / "tokenizer.model")
    budget = parse_byte_size(args.budget)
    runs: dict[str, Any] = {}
    for name in args.only.split(","):
        started = time.perf_counter()
        seen: set[str] = set()

        def log_phase(phase: str, done: int, total: int, seen: set[str] = seen, started: float = started) -> None:
            # A phase's first report: the time it started (so a run stopped early still says where it was).
            if phase not in seen and not args.json:
                seen.add(phase)
                print(f"  [{time.perf_counter() - started:7.1f} s] {phase}", flush=True)

        result = quantize_checkpoint(paths[name], QuantizeOptions(budget=budget, data=str(args.data)),
                                     on_progress=log_phase)
        runs[name] = {"seconds_wall": time.perf_counter() - started, "bytes": result.total_bytes, "budget": budget,
                      "phases": result.seconds, "compressor": result.manifest["compressor"],
                      "storage": result.manifest["storage"],
                      "actions": [{"action": a.action, "detail": a.detail[:120], "size": a.size} for a in result.actions]}
        if not args.json:
            print(f"{name}: {runs[name]['seconds_wall']:.1f} s, {result.total_bytes:,} B "
                  f"({result.manifest['compressor']}, {result.manifest['storage']})", flush=True)
            for phase, seconds in result.seconds.items():
                print(f"  {phase:<28} {seconds:8.2f} s")
            for action in runs[name]["actions"]:
                print(f"  fit: {action['action']}: {action['detail']} → {action['size']:,} B")
    report = {"threads": torch.get_num_threads(), "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()

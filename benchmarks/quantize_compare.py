"""Quantisation side by side on one trained checkpoint: quant gap, bytes, budget sweep and wall time.

    python benchmarks/quantize_compare.py --checkpoint runs/a/best.pt          # (a) and (b)
    python benchmarks/quantize_compare.py --checkpoint runs/a/best.pt --timing-golf   # adds (c) for the golf shape

(a) GPTQ int6 with clip search (ours) vs round-to-nearest int6 (ours, `--method rtn --no-clip-search`) vs the
    parameter-golf baseline export (per-row int8 with the 99.99984th-percentile clip, fp16 scales, zlib level 9),
    each loaded back and scored on the full validation set: artifact bytes, val bpb, gap to the checkpoint.
(b) Budgets at 100/80/60% of the unconstrained int6 artifact: resulting size, val bpb and what the fitter did.
(c) Wall time of `quantize_checkpoint` for the cpu-preset checkpoint and, with --timing-golf, for an initialised
    golf-preset model (11×512, vocab 1024; weights untrained, so only the time is meaningful).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alrt_core.config import preset  # noqa: E402
from alrt_core.data.prepare import default_cache_dir, resolve_dataset  # noqa: E402
from alrt_core.data.shards import read_shard  # noqa: E402
from alrt_core.evaluation.validation import evaluate  # noqa: E402
from alrt_core.fileio import atomic_write_text  # noqa: E402
from alrt_core.model.gpt import GPT  # noqa: E402
from alrt_core.training.checkpoint import save_checkpoint  # noqa: E402
from export.artifact import write_artifact  # noqa: E402
from export.loader import load_for_export, load_model  # noqa: E402
from export.quantize import QuantizeOptions, quantize_checkpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOLF_CLIP_QUANTILE = 0.9999984


def val_bpb(model: GPT, tokenizer, tokens: np.ndarray, seq_len: int) -> float:
    return evaluate(model, tokens, tokenizer, seq_len=seq_len, batch_sequences=8, device=torch.device("cpu"),
                    autocast=False).bpb


def golf_baseline(checkpoint: Path) -> tuple[GPT, int]:
    """The parameter-golf baseline export: every 2-D float tensor per-row int8 with a percentile clip, the rest
    fp16; bytes = zlib-9 of the concatenated raw arrays (their torch.save framing would only add to it)."""
    _, _, model = load_for_export(checkpoint)
    state = model.state_dict()
    chunks, restored = [], {}
    for name, value in state.items():
        if not value.is_floating_point():
            continue
        w = value.float()
        if w.dim() == 2 and w.numel() > 65_536 // 16:
            clip = torch.quantile(w.abs(), GOLF_CLIP_QUANTILE, dim=1) if w.shape[1] > 1 else w.abs().amax(1)
            scale = (clip / 127.0).clamp_min(1.0 / 127.0).half()
            q = torch.clamp(torch.round(torch.clamp(w, -clip[:, None], clip[:, None]) / scale.float()[:, None]), -127, 127).to(torch.int8)
            chunks += [q.numpy().tobytes(), scale.numpy().tobytes()]
            restored[name] = q.float() * scale.float()[:, None]
        else:
            chunks.append(w.half().numpy().tobytes())
            restored[name] = w.half().float()
    model.load_state_dict({**state, **restored})
    return model, len(zlib.compress(b"".join(chunks), 9))


def ours(checkpoint: Path, options: QuantizeOptions, folder: Path, name: str) -> dict:
    started = time.perf_counter()
    result = quantize_checkpoint(checkpoint, options)
    seconds = time.perf_counter() - started
    path = folder / f"{name}.alrt"
    write_artifact(path, result.data)
    return {"result": result, "path": path, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--timing-golf", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="alrt-quant-"))
    reference = load_model(args.checkpoint)
    config = reference.config
    info = resolve_dataset(config.data.path, config.data.tokenizer, default_cache_dir(), config.data.vocab_size, progress=False)
    tokens = np.concatenate([np.asarray(read_shard(p)) for p in info.val_files])
    seq_len = config.model.seq_len
    base_bpb = val_bpb(reference.model, reference.tokenizer, tokens, seq_len)
    rows = []

    gptq = ours(args.checkpoint, QuantizeOptions(), folder, "gptq")
    rtn = ours(args.checkpoint, QuantizeOptions(method="rtn", clip_search=False), folder, "rtn")
    for label, run in (("ours: GPTQ int6 + clip search", gptq), ("ours: round-to-nearest int6", rtn)):
        loaded = load_model(run["path"])
        bpb = val_bpb(loaded.model, loaded.tokenizer, tokens, seq_len)
        rows.append({"method": label, "bytes": run["path"].stat().st_size, "val_bpb": bpb, "gap": bpb - base_bpb,
                     "seconds": round(run["seconds"], 1), "compressor": run["result"].manifest["compressor"]})
    golf_model, golf_bytes = golf_baseline(args.checkpoint)
    bpb = val_bpb(golf_model.eval(), reference.tokenizer, tokens, seq_len)
    rows.append({"method": "parameter-golf baseline: int8 per row, percentile clip, zlib-9", "bytes": golf_bytes,
                 "val_bpb": bpb, "gap": bpb - base_bpb, "seconds": None, "compressor": "zlib"})

    unconstrained = gptq["path"].stat().st_size
    sweep = []
    for fraction in (1.0, 0.8, 0.6):
        budget = int(unconstrained * fraction)
        try:
            run = ours(args.checkpoint, QuantizeOptions(budget=budget), folder, f"budget{int(fraction * 100)}")
        except Exception as error:  # noqa: BLE001 - an impossible budget is a result here
            sweep.append({"fraction": fraction, "budget": budget, "bytes": None, "val_bpb": None, "actions": str(error)})
            continue
        loaded = load_model(run["path"])
        sweep.append({
            "fraction": fraction, "budget": budget, "bytes": run["path"].stat().st_size,
            "val_bpb": val_bpb(loaded.model, loaded.tokenizer, tokens, seq_len),
            "actions": "; ".join(f"{a.action}: {a.detail[:80]}" for a in run["result"].actions) or "none",
            "seconds": round(run["seconds"], 1),
        })

    timing = {"cpu": round(gptq["seconds"], 1)}
    if args.timing_golf:
        golf = preset("golf")
        golf.model.vocab_size = 1024
        golf.data = config.data
        model = GPT(golf.model)
        path = folder / "golf-init.pt"
        save_checkpoint(path, {"config": golf.to_dict(), "model": model.state_dict(), "ranks": model.layer_ranks(),
                               "step": 0, "ema": None, "val": {}})
        (folder / "tokenizer.model").write_bytes(reference.tokenizer.model_bytes())
        started = time.perf_counter()
        quantize_checkpoint(path, QuantizeOptions())
        timing["golf"] = round(time.perf_counter() - started, 1)

    report = {"checkpoint": str(args.checkpoint), "checkpoint_bpb": base_bpb, "methods": rows, "budget_sweep": sweep,
              "seconds": timing}
    atomic_write_text(RESULTS / "quantize_compare.json", json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
        return
    print(f"checkpoint {args.checkpoint}: val bpb {base_bpb:.4f}")
    print(f"{'method':<64} {'bytes':>10} {'val bpb':>8} {'gap':>8}")
    for row in rows:
        print(f"{row['method']:<64} {row['bytes']:>10,} {row['val_bpb']:>8.4f} {row['gap']:>+8.4f}")
    print(f"\n{'budget':>12} {'bytes':>10} {'val bpb':>8}  actions")
    for row in sweep:
        size = f"{row['bytes']:,}" if row["bytes"] else "-"
        bpb_text = f"{row['val_bpb']:.4f}" if row["val_bpb"] else "-"
        print(f"{row['budget']:>12,} {size:>10} {bpb_text:>8}  {row['actions']}")
    print("\nquantize wall time: " + ", ".join(f"{k} {v} s" for k, v in timing.items()))


if __name__ == "__main__":
    main()

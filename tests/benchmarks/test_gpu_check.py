"""`benchmarks/gpu_check.py --device cpu --smoke`: every step of the GPU check on a CPU, in seconds (issue #17); a
failing step named on stderr and in the JSON. Two parts only the GPU run uses are checked here directly: the
recompilation log read back to the step it happened in (the smoke run does not compile) and the FLOPs per token
behind MFU (the smoke run has no peak to divide by)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from alrt_core.config import preset
from benchmarks.gpu_check import StepTime, flops_per_token, recompiles

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STEPS = ["install", "data", "train_golf", "quantize", "eval", "generate", "serve", "train_golf_lowrank"]
RETURNABLE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what the device tool brings back from $OUT


def run_check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, Any], Path]:
    out = tmp_path / "out"
    env = {key: value for key, value in os.environ.items() if key != "OUT"}  # --out-dir, not a caller's $OUT
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--out-dir", str(out),
                           "--work-dir", str(tmp_path / "work"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done, json.loads((out / "gpu_check.json").read_text(encoding="utf-8")), out


def finite_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_smoke_run_passes_every_step_with_plausible_figures(tmp_path: Path):
    done, report, out = run_check(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["failed_step"] is None and report["finished"] is not None
    steps = {step["name"]: step for step in report["steps"]}
    assert [step["name"] for step in report["steps"]] == STEPS
    assert all(step["ok"] and step["seconds"] >= 0 for step in steps.values())

    assert steps["install"]["torch"] and {"fastapi", "uvicorn", "serve.server"} <= set(steps["install"]["versions"])
    assert steps["data"]["vocab_size"] == 384 and steps["data"]["train_tokens"] > 0
    for name in ("train_golf", "train_golf_lowrank"):
        train = steps[name]
        assert train["device"] == "cpu" and train["steps"] == 6 and train["tail_steps"] >= 2
        assert finite_positive(train["tokens_per_s"]) and finite_positive(train["ms_per_step"])
        assert train["flops_per_token"] is None and train["mfu"] is None  # no GPU peak to divide by
        assert finite_positive(train["final_val_bpb"]) and train["peak_rss_bytes"] > 0
        assert train["recompiles"] == []  # the tiny preset does not compile
        assert (out / f"{name}.jsonl").is_file()
    assert steps["train_golf"]["params"] != steps["train_golf_lowrank"]["params"]  # dense vs factorised
    quantize = steps["quantize"]
    assert 0 < quantize["total_bytes"] <= quantize["budget"] == 16_000_000
    assert Path(quantize["artifact"]).is_file() and quantize["result"]["total_bytes"] == quantize["total_bytes"]
    assert steps["eval"]["mode"] == "sliding" and steps["eval"]["tokens"] > 0
    assert finite_positive(steps["eval"]["sliding_bpb"]) and finite_positive(steps["eval"]["ttt_bpb"])
    assert steps["generate"]["new_tokens"] >= 1 and finite_positive(steps["generate"]["tokens_per_s"])
    serve = steps["serve"]
    assert serve["content_chunks"] >= 1 and serve["done"] and serve["text"] and serve["exit_status"] is not None
    assert report["anchor"]["comparable"] is False

    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() and RETURNABLE_NAME.match(f.name) for f in files)
    log = (out / "gpu_check.log").read_text(encoding="utf-8")
    assert "alrt serve: http://127.0.0.1:" in log and "--as-alrt quantize" in log
    assert all(name in done.stdout for name in STEPS)  # the summary table


def test_a_failing_step_is_named_on_stderr_and_in_the_json(tmp_path: Path):
    done, report, _ = run_check(tmp_path, "--data", str(tmp_path / "never-prepared"))
    assert done.returncode == 1
    assert "FAILED at step data" in done.stderr
    assert report["failed_step"] == "data" and "--prepare-data" in report["error"]
    assert [(step["name"], step["ok"]) for step in report["steps"]] == [("install", True), ("data", False)]


def log_line(at: float, text: str) -> str:
    """A line as torch's log formatter writes it (local time, no year)."""
    stamp = datetime.fromtimestamp(at).strftime("%m%d %H:%M:%S.%f")
    return f"V{stamp} 4242 torch/_dynamo/guards.py:5396] [0/1] [__recompiles] {text}"


def test_a_recompilation_is_placed_in_the_step_that_ran_it():
    now = 1_800_000_000.0
    steps = [StepTime(step, 1.0, 1024, now + step) for step in range(1, 6)]  # step s's event at now + s
    stderr = "\n".join([
        "alrt train → runs/x",
        log_line(now + 2.5, "Recompiling function forward in alrt_core/model/gpt.py:180"),
        log_line(now + 2.5, "    triggered by the following guard failure(s):"),
        log_line(now + 2.5, "    - 0/0: ___check_obj_id(self.recurrence.mode, 1234)"),
        log_line(now + 9.0, "Recompiling function forward in alrt_core/model/gpt.py:180"),
    ])
    found = recompiles(stderr, steps, now=now + 10)
    assert [(r["step"], r["function"]) for r in found] == [(3, "forward"), (None, "forward")]
    assert found[0]["reason"] == "0/0: ___check_obj_id(self.recurrence.mode, 1234)"


def test_golf_flops_per_token_count_every_layer_application_at_its_rank():
    config = preset("golf")
    config.model.vocab_size = 8192
    # Per block: q, o 512x512; k, v 512x256; up, down 512x2048 = 2,883,584 weights; tied head 8192x512.
    plain = 6 * (11 * 2_883_584 + 8192 * 512) + 12 * 11 * 2048 * 512
    assert flops_per_token(config.to_dict(), {}, looped=False) == plain
    looped = 6 * (17 * 2_883_584 + 8192 * 512) + 12 * 17 * 2048 * 512  # blocks 3-5 three times: 17 applications
    assert flops_per_token(config.to_dict(), {}, looped=True) == looped == 533_200_896
    # Block 0 runs once: its q at rank 64 is 64*(512+512) weights instead of 512*512.
    assert flops_per_token(config.to_dict(), {"blocks.0.attn.q": 64}, looped=True) == looped - 6 * (512 * 512 - 64 * 1024)

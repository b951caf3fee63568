"""`inspect run` data: curves and summary from a hand-written train.jsonl, resumes and half-written lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alrt_core.errors import UserError
from alrt_core.reports.run_curves import read_run, read_runs
from alrt_core.reports.run_plots import smooth


def write_log(run_dir: Path, events: list[dict], tail: str = "") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"time": 0.0, **event}) for event in events]
    (run_dir / "train.jsonl").write_text("\n".join(lines) + "\n" + tail, encoding="utf-8")


def step(n: int, bpb: float, elapsed: float) -> dict:
    return {"event": "train_step", "step": n, "loss": bpb, "bpb": bpb, "lr": 0.04, "tok_s": 100.0, "tokens": 100 * n,
            "elapsed": elapsed, "rank_mean": 8.0}


START = {"event": "run_start", "step": 0, "params": 1000, "projection_params": 600, "dense_projection_params": 800,
         "preset": "tiny", "rank_policy": "stable"}


def test_curves_summary_resume_and_half_written_line(tmp_path):
    events = [
        START, step(1, 4.0, 1.0), step(2, 3.5, 2.0),
        {"event": "rank_update", "step": 2, "projection_params_after": 500, "params_after": 900, "rank_mean": 6.0, "changed": 3},
        {"event": "eval", "step": 2, "val_loss": 3.0, "val_bpb": 3.4, "full": True},
        step(3, 3.3, 3.0),  # lost: the run stopped after step 3, and resumed from its step-2 checkpoint
        {**START, "step": 2}, step(3, 3.2, 3.5), step(4, 3.0, 4.5),
        {"event": "eval", "step": 4, "val_loss": 2.8, "val_bpb": 3.3, "full": False},
        {"event": "eval", "step": 4, "val_loss": 2.7, "val_bpb": 3.25, "full": True},
    ]
    write_log(tmp_path / "a", events, tail='{"event": "train_step", "step": 5, "lo')
    (tmp_path / "a" / "config.json").write_text(json.dumps({"preset": "tiny", "rank": {"policy": "stable"}}))
    run = read_run(tmp_path / "a")
    assert run.series("train", "step") == [1, 2, 3, 4] and run.series("train", "bpb") == [4.0, 3.5, 3.2, 3.0]
    assert [(e["step"], e["val_bpb"], e["tokens"], e["elapsed"]) for e in run.evals] == [(2, 3.4, 200, 2.0), (4, 3.25, 400, 4.5)]
    assert run.ranks == [{"step": 2, "projection_params": 500, "params": 900, "rank_mean": 6.0, "changed": 3}]
    summary = run.summary()
    assert summary["status"] == "running or stopped" and summary["steps"] == 4 and summary["tokens"] == 400
    assert summary["best_val_bpb"] == 3.25 and summary["best_step"] == 4 and summary["final_val_bpb"] == 3.25
    assert summary["tokens_per_second"] == pytest.approx(400 / 4.5) and summary["train_seconds"] == 4.5
    assert summary["params"] == 900 and summary["projection_fraction"] == pytest.approx(500 / 800)
    assert summary["last_train_bpb"] == 3.0 and summary["rank_updates"] == 1 and summary["preset"] == "tiny"

    write_log(tmp_path / "b" / "a", [START, step(1, 4.1, 1.0),
                                    {"event": "run_end", "step": 1, "reason": "max_steps", "final_val_bpb": 3.9}])
    runs = read_runs([tmp_path / "a", tmp_path / "b" / "a"])
    assert [r.name for r in runs] == [str(tmp_path / "a"), str(tmp_path / "b" / "a")]  # same names: full paths
    assert runs[1].summary()["status"] == "finished (max_steps)" and runs[1].summary()["final_val_bpb"] == 3.9
    assert json.loads(json.dumps(runs[0].to_dict()))["summary"]["steps"] == 4


def test_missing_or_empty_runs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such run directory"):
        read_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no train.jsonl"):
        read_run(tmp_path / "empty")
    write_log(tmp_path / "starting", [], tail='{"event": "run_st')
    with pytest.raises(UserError, match="no run_start or train_step events yet"):
        read_run(tmp_path / "starting")


def test_smoothing_is_a_bias_corrected_ema():
    assert smooth([2.0, 2.0, 2.0]) == [2.0, 2.0, 2.0]
    assert smooth([0.0, 10.0], decay=0.5) == pytest.approx([0.0, 10.0 * 0.5 / 0.75])

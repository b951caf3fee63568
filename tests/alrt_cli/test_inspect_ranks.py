"""`alrt inspect ranks` on a real tiny ALRT run: table, JSON, history, plot, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import alrt
from run_helpers import train_tiny

from alrt_cli.inspect_cmd import sparkline
from alrt_core.reports.ranks import rank_report
from alrt_core.training.checkpoint import load_checkpoint
from alrt_core.training.events import read_events


@pytest.fixture(scope="module")
def alrt_run(small_dataset, tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("inspect") / "run", small_dataset.root, "train.max_steps=9",
                      "train.eval_every=9", "rank.safety_factor=1.2")


def test_json_report_matches_the_checkpoint(alrt_run):
    result = alrt("inspect", "ranks", str(alrt_run), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    checkpoint = load_checkpoint(alrt_run / "last.pt")
    assert report["step"] == 9 and report["policy"] == "stable"
    assert {layer["layer"]: layer["rank"] for layer in report["layers"]} == checkpoint["ranks"]
    q = next(layer for layer in report["layers"] if layer["layer"] == "blocks.0.attn.q")
    weight = (checkpoint["model"]["blocks.0.attn.q.U"] @ checkpoint["model"]["blocks.0.attn.q.V"]).double()
    exact = torch.linalg.matrix_norm(weight) ** 2 / torch.linalg.matrix_norm(weight, ord=2) ** 2
    assert q["stable_rank"] == pytest.approx(float(exact), rel=1e-6)
    assert q["params"] == q["rank"] * (64 + 64) and q["dense_params"] == 64 * 64 and q["max_rank"] == 64
    totals = report["totals"]
    assert totals["projection_params"] == sum(layer["params"] for layer in report["layers"])
    assert totals["compression"] == pytest.approx(totals["projection_params"] / totals["dense_projection_params"])


def test_history_follows_the_logged_rank_changes(alrt_run):
    report = rank_report(alrt_run, history=True)
    events = read_events(alrt_run / "train.jsonl")
    update_steps = [e["step"] for e in events if e["event"] == "rank_update"]
    assert update_steps == [3, 6, 9]
    for layer in report.layers:
        points = report.history[layer.layer]
        assert [step for step, _ in points] == [0, *update_steps]
        assert points[-1][1] == layer.rank  # the trajectory ends at the checkpoint's rank
    assert any(points[0][1] != points[-1][1] for points in report.history.values())


def test_table_history_and_plot(alrt_run, tmp_path):
    plot = tmp_path / "ranks.png"
    result = alrt("inspect", "ranks", str(alrt_run / "last.pt"), "--history", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    assert "attention+MLP parameters:" in result.stdout and "blocks.1.mlp.down" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000


def test_sparkline_scales_to_the_max_rank():
    assert sparkline([64, 16, 0, None], 64) == "█▃▁█"  # 16/64 of 7 steps rounds to level 2


@pytest.mark.parametrize(
    ("target", "message"),
    [("missing-dir", "no such run directory or checkpoint"), ("empty", "no last.pt or best.pt")],
)
def test_missing_inputs_are_user_errors(tmp_path, target, message):
    (tmp_path / "empty").mkdir()
    result = alrt("inspect", "ranks", str(tmp_path / target))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr

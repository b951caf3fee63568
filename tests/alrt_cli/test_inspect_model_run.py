"""`alrt inspect model` and `alrt inspect run` on two real tiny runs (ALRT and dense) and an artifact."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_runner import alrt
from rich.console import Console
from run_helpers import train_tiny
from typer.testing import CliRunner

from alrt_cli.app import app
from alrt_cli.inspect_view import render_model
from alrt_core.errors import UserError
from alrt_core.evaluation.report import EvalOptions, run_eval
from alrt_core.training.checkpoint import load_checkpoint
from export.artifact import write_artifact
from export.inspect_model import inspect_model
from export.loader import load_model
from export.quantize import QuantizeOptions, quantize_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(small_dataset, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect-model")
    paths = {}
    for name, policy in (("alrt", "stable"), ("dense", "dense")):
        paths[name] = train_tiny(root / name, small_dataset.root, "train.max_steps=6", "train.eval_every=3",
                                 "rank.safety_factor=1.2", f"rank.policy={policy}")
    result = quantize_checkpoint(paths["alrt"] / "last.pt", QuantizeOptions(calib_tokens=2048))
    write_artifact(root / "model.alrt", result.data)
    paths["artifact"] = root / "model.alrt"
    return paths


def invoke(*args: str) -> str:
    """Run `alrt ...` in-process (no interpreter start-up); its stdout."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_model_json_statistics_data_and_plots(runs, tmp_path):
    stdout = invoke("inspect", "model", str(runs["alrt"] / "last.pt"), "--data", "val", "--max-tokens", "1024",
                    "--plot", str(tmp_path), "--json")
    report = json.loads(stdout)  # exactly one JSON object on stdout
    checkpoint = load_checkpoint(runs["alrt"] / "last.pt")
    layers = {m["name"]: m for m in report["matrices"]}
    assert set(layers) == {*checkpoint["ranks"], "embed.weight"} and report["step"] == 6
    name = "blocks.1.mlp.down"
    u, v = checkpoint["model"][f"{name}.U"].double(), checkpoint["model"][f"{name}.V"].double()
    sigma = torch.linalg.svdvals(u @ v)[: u.shape[1]]
    p = sigma / sigma.sum()
    assert layers[name]["rank"] == checkpoint["ranks"][name] == u.shape[1]
    assert layers[name]["effective_rank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)
    assert layers[name]["stable_rank"] == pytest.approx(float(sigma.square().sum() / sigma[0] ** 2), rel=1e-6)
    assert layers[name]["condition"] == pytest.approx(float(sigma[0] / sigma[-1]), rel=1e-4)
    assert {s["name"] for s in report["scalars"]} >= {"blocks.0.attn_scale", "blocks.1.resid_mix[1]", "skip_weights[0]"}
    assert report["quantization"] is None and set(report["by_kind"]) == {"q", "k", "v", "o", "up", "down"}

    data = report["data"]
    assert data["tokens"] == 1024 and 0 < data["top1_accuracy"] <= data["top5_accuracy"] <= 1
    assert sum(row["tokens"] for row in data["classes"]) == 1024
    assert sum(row["loss_share"] for row in data["classes"]) == pytest.approx(1.0)
    assert sum(row["tokens"] for row in data["positions"]) == 1024 and len(data["positions"]) == 16
    assert sum(b["tokens"] for b in data["calibration"]["bins"]) == 1024
    # The same tokens scored by `alrt eval` (plain windows) give the same bpb.
    loaded = load_model(runs["alrt"] / "last.pt")
    expected = run_eval(loaded.model, loaded.tokenizer, loaded.config, EvalOptions(max_tokens=1024))
    assert data["bpb"] == pytest.approx(expected["bpb"], rel=1e-9) and data["bytes"] == expected["bytes"]
    for png in ("spectra.png", "position_loss.png", "calibration.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG


def test_model_on_an_artifact_reports_quantisation_error(runs):
    report = inspect_model(runs["artifact"])
    manifest_fold = report.quantization["fold"]
    assert report.kind == "artifact" and "keep" in manifest_fold.values()
    assert report.quantization["reference"].startswith(f"vs {runs['alrt'] / 'last.pt'}")
    checkpoint = load_checkpoint(runs["alrt"] / "last.pt")
    state = load_model(runs["artifact"]).model.state_dict()
    kept = next(name for name, fold in manifest_fold.items() if fold == "keep")
    exact = state[f"{kept}.U"].double() @ state[f"{kept}.V"].double()
    source = checkpoint["model"][f"{kept}.U"].double() @ checkpoint["model"][f"{kept}.V"].double()
    expected = float((exact - source).norm() / source.norm())
    assert report.quantization["layers"][kept] == pytest.approx(expected, rel=1e-6)
    assert next(s for s in report.matrices if s.name == kept).quant_error == pytest.approx(expected, rel=1e-6)
    embed = next(t for t in report.quantization["tensors"] if t["name"] == "embed.weight")
    direct = (state["embed.weight"].double() - checkpoint["model"]["embed.weight"].double()).norm() / checkpoint["model"]["embed.weight"].double().norm()
    assert embed["scheme"] == "int8" and embed["relative_error"] == pytest.approx(float(direct), rel=1e-6)
    assert embed["hessian_error"] is not None

    console = Console(file=io.StringIO(), width=160)
    render_model(console, report)
    table = console.file.getvalue()
    assert "weight matrices" in table and "quantisation error per tensor" in table and "learned scalars" in table
    assert f"{kept.split('.')[1]}.{kept.rsplit('.', 1)[1]}" in table and "embed.weight" in table


def test_run_table_json_plot_and_a_live_run(runs, tmp_path):
    plot = tmp_path / "curves.png"
    table = invoke("inspect", "run", str(runs["alrt"]), str(runs["dense"]), "--plot", str(plot))
    assert "alrt" in table and "dense" in table and "validation bpb by step" in table
    assert plot.read_bytes()[:8] == PNG and plot.stat().st_size > 30_000

    live = tmp_path / "live"
    shutil.copytree(runs["dense"], live)
    with (live / "train.jsonl").open("a") as log:
        log.write('{"event": "train_step", "step": 7, "loss": 3.1, "bp')  # a line being written
    report = json.loads(invoke("inspect", "run", str(runs["alrt"]), str(live), "--json"))
    alrt_run, live_run = report["runs"]
    assert [alrt_run["name"], live_run["name"]] == ["alrt", "live"]
    events = [json.loads(line) for line in (runs["alrt"] / "train.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    assert alrt_run["summary"]["steps"] == 6 and alrt_run["summary"]["status"] == "finished (max_steps)"
    assert [e["step"] for e in alrt_run["evals"]] == [3, 6]
    assert alrt_run["evals"][-1]["val_bpb"] == evals[-1]["val_bpb"]
    assert alrt_run["summary"]["best_val_bpb"] == min(e["val_bpb"] for e in evals)
    assert [r["step"] for r in alrt_run["ranks"]] == [3, 6]
    assert live_run["summary"]["steps"] == 6 and live_run["summary"]["projection_fraction"] == 1.0


def test_user_errors(runs, tmp_path):
    result = alrt("inspect", "run", str(tmp_path / "missing"))
    assert result.returncode == 2 and "no such run directory" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(UserError, match="dense/last.pt does not match the artifact"):
        inspect_model(runs["artifact"], reference=runs["dense"] / "last.pt")
    with pytest.raises(UserError, match="--reference compares an artifact"):
        inspect_model(runs["alrt"] / "last.pt", reference=runs["dense"] / "last.pt")
    with pytest.raises(UserError, match="no such checkpoint or artifact"):
        inspect_model(tmp_path / "missing.pt")

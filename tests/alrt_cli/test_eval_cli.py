"""`alrt eval` from the command line: checkpoint and artifact, sliding, TTT, compare, torchrun, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import alrt
from run_helpers import train_tiny


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory) -> Path:
    run_dir = train_tiny(tmp_path_factory.mktemp("eval") / "run", small_dataset.root, "train.max_steps=12",
                         "train.eval_every=12")
    quantized = alrt("quantize", str(run_dir / "last.pt"), "--calib-tokens", "2048", "--small-max", "0")
    assert quantized.returncode == 0, quantized.stderr
    return run_dir


def eval_json(*args: str, module: str = "alrt_cli") -> dict:
    result = alrt(*args, "--json", module=module)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_checkpoint_plain_sliding_and_the_run_record(trained):
    plain = eval_json("eval", str(trained / "last.pt"))
    assert plain["kind"] == "checkpoint" and plain["mode"] == "plain" and plain["bytes_match_decoded_text"]
    assert plain["tokens"] == json.loads((trained / "train.jsonl").read_text().splitlines()[0])["val_tokens"]
    final = [json.loads(line) for line in (trained / "train.jsonl").read_text().splitlines() if '"eval"' in line][-1]
    assert plain["bpb"] == pytest.approx(final["val_bpb"], rel=1e-6)  # the trainer's number (other batch sizes)
    sliding = eval_json("eval", str(trained / "last.pt"), "--sliding", "--stride", "16")
    assert sliding["mode"] == "sliding" and sliding["tokens"] == plain["tokens"] and sliding["bpb"] < plain["bpb"]
    assert 0 < sliding["bpb_stderr"] < 0.5


def test_artifact_differs_from_its_checkpoint_by_the_quant_gap_only(trained):
    checkpoint = eval_json("eval", str(trained / "last.pt"))
    artifact = eval_json("eval", str(trained / "model.alrt"), "--compare", str(trained / "last.pt"))
    assert artifact["kind"] == "artifact"
    assert (artifact["tokens"], artifact["bytes"]) == (checkpoint["tokens"], checkpoint["bytes"])
    compare = artifact["compare"]
    assert compare["reference_bpb"] == pytest.approx(checkpoint["bpb"], rel=1e-9)
    assert compare["bpb_delta"] == pytest.approx(artifact["bpb"] - checkpoint["bpb"], abs=1e-12)
    assert abs(compare["bpb_delta"]) < 0.05 and compare["top1_agreement"] > 0.8 and 0 <= compare["mean_kl_nats"] < 0.05


def test_ttt_on_the_artifact_reports_both_numbers(trained):
    report = eval_json("eval", str(trained / "model.alrt"), "--sliding", "--stride", "32", "--ttt",
                       "--ttt-chunk-tokens", "256", "--ttt-epochs", "1", "--ttt-freeze-blocks", "0")
    ttt = report["ttt"]
    assert ttt["chunks"] == -(-report["tokens"] // 256) >= 3
    assert ttt["bpb_without_ttt"] == report["bpb"] and ttt["bpb"] != report["bpb"]


def test_torchrun_two_processes_equal_one(trained):
    single = eval_json("eval", str(trained / "last.pt"), "--sliding", "--stride", "16", "--max-tokens", "3000")
    launcher = ["--nproc_per_node=2", "--master_port=29533", "-m", "alrt_cli"]
    double = eval_json(*launcher, "eval", str(trained / "last.pt"), "--sliding", "--stride", "16", "--max-tokens", "3000",
                       module="torch.distributed.run")
    assert double["world_size"] == 2 and double["tokens"] == single["tokens"]
    assert double["bpb"] == pytest.approx(single["bpb"], rel=1e-6)  # same tokens; batches differ, so float noise


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seq-len", "4096"], "longer than the trained context"),
        (["--sliding", "--stride", "500"], "--stride must be between 1 and"),
        (["--data", "/nonexistent/val"], "validation data not found"),
    ],
)
def test_eval_user_errors(trained, args, message):
    result = alrt("eval", str(trained / "last.pt"), *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_missing_or_garbage_model_is_exit_2(tmp_path):
    garbage = tmp_path / "model.alrt"
    garbage.write_bytes(b"ALRTART1" + b"\x00" * 10)
    for path, message in ((tmp_path / "none.alrt", "no such model file"), (garbage, "truncated artifact")):
        result = alrt("eval", str(path))
        assert result.returncode == 2 and message in result.stderr

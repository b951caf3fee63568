"""The `alrt` command as a user runs it: help, errors (one line, exit 2), a tiny training run, torchrun."""

from __future__ import annotations

import json

import pytest
from cli_runner import alrt

from alrt_core.training.events import read_events


def test_help_lists_command_groups():
    result = alrt("--help")
    assert result.returncode == 0
    assert "data" in result.stdout and "train" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "/nonexistent/corpus.txt", "--max-steps", "1"], "/nonexistent/corpus.txt"),
        (["train", "--preset", "huge"], "unknown preset 'huge'"),
        (["train", "--preset", "tiny", "--set", "model.depth=3"], "unknown config key 'model.depth'"),
        (["train", "--resume", "/nonexistent/last.pt"], "checkpoint not found: /nonexistent/last.pt"),
        (["data", "prepare", "/nonexistent.txt", "--out", "x"], "/nonexistent.txt"),
        (["train", "--max-step", "0.25"], "--max-step was renamed --rank-max-step"),
        (["train", "--ema-decay", "0.9"], "--ema-decay was renamed --rank-ema-decay"),
    ],
)
def test_user_errors_are_one_line_exit_2_without_traceback(args, message, tmp_path):
    result = alrt(*args, env_extra={"ALRT_CACHE": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_rank_controller_flags_set_the_rank_config(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from alrt_cli import train_cmd
    from alrt_cli.app import app

    seen = []

    class RecordingTrainer:  # parses like a real run, trains nothing
        def __init__(self, config, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            seen.append(config)

        def run(self) -> None:
            pass

    monkeypatch.setattr(train_cmd, "Trainer", RecordingTrainer)
    result = CliRunner().invoke(app, ["train", "--preset", "tiny", "--out-dir", str(tmp_path), "--rank-max-step",
                                      "0.25", "--rank-ema-decay", "0.7"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (seen[0].rank.max_step, seen[0].rank.ema_decay, seen[0].train.ema_decay) == (0.25, 0.7, 0.0)


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    result = alrt("train", "--resume", str(bad))
    assert result.returncode == 2 and "not a readable ALRT checkpoint" in result.stderr


def test_prepare_then_train_then_resume_from_the_command_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    from alrt_core.data.corpus import load_shakespeare

    corpus.write_text("\n\n".join(doc.text[:20_000] for doc in load_shakespeare()[:6]), encoding="utf-8")
    val = tmp_path / "val.txt"
    val.write_text(load_shakespeare()[7].text[:8_000], encoding="utf-8")
    prepared = alrt("data", "prepare", str(corpus), "--out", str(tmp_path / "data"), "--vocab-size", "384",
                    "--val-input", str(val), "--json")
    assert prepared.returncode == 0, prepared.stderr
    summary = json.loads(prepared.stdout)
    assert summary["vocab_size"] == 384
    run = tmp_path / "run"
    trained = alrt("train", "--data", str(tmp_path / "data"), "--preset", "tiny", "--max-steps", "6",
                   "--eval-every", "3", "--out-dir", str(run))
    assert trained.returncode == 0, trained.stderr
    assert "eval step 3" in trained.stdout and "done (max_steps) after 6 steps" in trained.stdout
    resumed = alrt("train", "--resume", str(run / "last.pt"), "--max-steps", "9")
    assert resumed.returncode == 0, resumed.stderr
    steps = [e["step"] for e in read_events(run / "train.jsonl") if e["event"] == "train_step"]
    assert steps == list(range(1, 10))


def test_torchrun_two_gloo_processes_match_one_process(small_dataset, tmp_path):
    # ALRT on (the tiny preset's stable policy) with updates at steps 2 and 4: both processes must resize alike.
    # The tiny ranks start at break-even, where growth is capped; a safety factor of 1 makes every layer shrink.
    common = ["train", "--data", str(small_dataset.root), "--preset", "tiny", "--max-steps", "5", "--eval-every", "5",
              "--rank-update-every", "2", "--set", "rank.warmup_steps=2", "--set", "rank.safety_factor=1"]
    single = alrt(*common, "--out-dir", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    launcher = ["--nproc_per_node=2", "--master_port=29531", "-m", "alrt_cli"]
    ddp = alrt(*launcher, *common, "--out-dir", str(tmp_path / "ddp"), module="torch.distributed.run")
    assert ddp.returncode == 0, ddp.stderr
    one = [e for e in read_events(tmp_path / "single" / "train.jsonl") if e["event"] in ("train_step", "eval")]
    two = [e for e in read_events(tmp_path / "ddp" / "train.jsonl") if e["event"] in ("train_step", "eval")]
    assert [e["step"] for e in one] == [e["step"] for e in two]
    start = read_events(tmp_path / "ddp" / "train.jsonl")[0]
    assert start["world_size"] == 2
    for a, b in zip(one, two, strict=True):
        key = "loss" if a["event"] == "train_step" else "val_bpb"
        assert b[key] == pytest.approx(a[key], rel=2e-3), (a["step"], key)
    updates = [e for e in read_events(tmp_path / "ddp" / "train.jsonl") if e["event"] == "rank_update"]
    assert [e["step"] for e in updates] == [2, 4] and updates[0]["changed"] > 0
    assert all(e["disagreements"] == 0 for e in updates)  # each process decided what rank 0 decided

    def final_ranks(run: str) -> dict:
        return {e["layer"]: e["new_rank"] for e in read_events(tmp_path / run / "train.jsonl") if e["event"] == "rank_change"}

    assert final_ranks("ddp") == final_ranks("single")


def test_resume_with_a_step_budget_extends_a_wallclock_run(small_dataset, tmp_path):
    run = tmp_path / "run"
    first = alrt("train", "--data", str(small_dataset.root), "--preset", "tiny", "--max-minutes", "0.02",
                 "--out-dir", str(run))
    assert first.returncode == 0, first.stderr
    done = max(e["step"] for e in read_events(run / "train.jsonl") if e["event"] == "train_step")
    resumed = alrt("train", "--resume", str(run / "last.pt"), "--max-steps", str(done + 3))
    assert resumed.returncode == 0, resumed.stderr
    assert f"done (max_steps) after {done + 3} steps" in resumed.stdout
    assert json.loads((run / "config.json").read_text())["train"]["max_minutes"] is None

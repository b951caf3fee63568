"""The trainer end to end on a small corpus: run files, events, exact resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alrt_core.config import RunConfig, apply_overrides, preset
from alrt_core.errors import UserError
from alrt_core.training.checkpoint import load_checkpoint
from alrt_core.training.events import read_events
from alrt_core.training.trainer import Trainer


def tiny_config(data_root: Path, *overrides: str) -> RunConfig:
    config = preset("tiny")
    config.data.path = str(data_root)
    config.train.max_steps, config.train.eval_every, config.train.eval_tokens = 8, 4, None
    return apply_overrides(config, list(overrides))


def step_losses(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_events(run_dir / "train.jsonl") if e["event"] == "train_step"}


def rank_events(run_dir: Path) -> list[dict]:
    keep = ("rank_change", "rank_update")
    drop = ("time", "seconds", "measure_seconds", "resize_seconds", "measure_fraction")
    return [{k: v for k, v in e.items() if k not in drop} for e in read_events(run_dir / "train.jsonl") if e["event"] in keep]


def test_run_directory_events_and_checkpoints(small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    result = Trainer(tiny_config(small_dataset.root), run_dir, progress=False).run()
    assert result.steps == 8 and result.stop_reason == "max_steps"
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "train.jsonl", "last.pt", "best.pt", "tokenizer.model"}
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model"]["vocab_size"] == 384 and saved["train"]["max_steps"] == 8
    events = read_events(run_dir / "train.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert kinds.count("train_step") == 8 and kinds.count("eval") == 2
    assert all({"event", "step", "time"} <= e.keys() for e in events)
    start = events[0]
    assert start["vocab_size"] == 384 and start["params"] > 0
    assert start["uniform_loss"] == pytest.approx(torch.log(torch.tensor(384.0)).item())
    last = load_checkpoint(run_dir / "last.pt")  # weights_only=True inside
    assert last["step"] == 8
    updates = [e for e in events if e["event"] == "rank_update"]
    assert [e["step"] for e in updates] == [3, 6]  # the tiny preset: every 3 steps from step 3
    ranks = dict(start["layer_ranks"])
    for change in (e for e in events if e["event"] == "rank_change"):
        assert ranks[change["layer"]] == change["old_rank"]
        ranks[change["layer"]] = change["new_rank"]
    assert last["ranks"] == ranks  # the checkpoint's shapes are the logged ranks
    assert last["val"]["bpb"] == pytest.approx(result.final.bpb)
    evals = [e for e in events if e["event"] == "eval"]
    assert result.best_val_bpb == min(e["val_bpb"] for e in evals)


def test_interrupted_and_resumed_run_matches_uninterrupted_run(small_dataset, tmp_path):
    # Rank updates at steps 2, 4 (just before the interruption), 6 and 8: resume must restore shapes, the
    # controller's EMAs and power-iteration vectors, the projected optimizer state and the resized weight EMA.
    config = tiny_config(
        small_dataset.root, "rank.update_every=2", "rank.warmup_steps=2", "rank.safety_factor=1.2",
        "train.ema_decay=0.9", "train.grad_clip=1.0",
    )
    straight = tmp_path / "straight"
    Trainer(RunConfig.from_dict(config.to_dict()), straight, progress=False).run()

    interrupted = tmp_path / "interrupted"
    trainer = Trainer(RunConfig.from_dict(config.to_dict()), interrupted, progress=False)
    trainer.listeners.append(lambda e: trainer.request_stop("test") if e["event"] == "eval" and e["step"] == 4 else None)
    first = trainer.run()
    assert first.steps == 4 and first.stop_reason == "test"
    resumed = Trainer(None, resume=interrupted / "last.pt", progress=False).run()
    assert resumed.steps == 8
    assert step_losses(interrupted) == step_losses(straight)  # bitwise: same batches, weights, optimizer state, EMA
    changes = [e for e in read_events(straight / "train.jsonl") if e["event"] == "rank_change"]
    assert {e["step"] for e in changes} >= {2, 6}  # resizes happened before and after the interruption
    assert rank_events(interrupted) == rank_events(straight)
    assert resumed.final.bpb == load_checkpoint(straight / "last.pt")["val"]["bpb"]


def test_resume_with_another_model_config_is_refused(small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    Trainer(tiny_config(small_dataset.root, "train.max_steps=4"), run_dir, progress=False).run()
    other = tiny_config(small_dataset.root, "model.num_layers=3")
    with pytest.raises(UserError, match="resume file is from another config: model.num_layers is 2"):
        Trainer(other, resume=run_dir / "last.pt", progress=False)
    longer = Trainer(None, resume=run_dir / "last.pt", resume_changes={"train.max_steps": 6}, progress=False).run()
    assert longer.steps == 6


def test_vocab_mismatch_is_a_user_error(small_dataset, tmp_path):
    with pytest.raises(UserError, match="model.vocab_size=500 does not match the tokenizer's vocabulary of 384"):
        Trainer(tiny_config(small_dataset.root, "model.vocab_size=500"), tmp_path / "run", progress=False).run()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config(small_dataset.root, "train.eval_every=2"), run_dir, progress=False)

    def poison(event):
        if event["event"] == "train_step" and event["step"] == 3:
            with torch.no_grad():
                trainer.state.model.embed.weight.fill_(float("nan"))

    trainer.listeners.append(poison)
    with pytest.raises(UserError, match=r"loss became nan at step 4; training stopped \(last good checkpoint: .*last.pt\)"):
        trainer.run()
    assert load_checkpoint(run_dir / "last.pt")["step"] == 2
    assert read_events(run_dir / "train.jsonl")[-1]["event"] == "error"


def test_factorised_training_reduces_loss(small_dataset, tmp_path):
    config = tiny_config(small_dataset.root, "rank.policy=fixed", "rank.init=8", "train.max_steps=30", "train.eval_every=30")
    result = Trainer(config, tmp_path / "run", progress=False).run()
    losses = step_losses(tmp_path / "run")
    assert sum(list(losses.values())[-5:]) / 5 < losses[1] - 0.5
    assert result.final.bpb < 5.0


def test_golf_preset_builds_and_runs_a_step_on_cpu(small_dataset, tmp_path):
    config = preset("golf")
    config.data.path = str(small_dataset.root)
    # One 256-token sequence per step and a short eval keep this to seconds; the weight shapes are the preset's.
    config = apply_overrides(config, ["model.seq_len=256", "train.batch_tokens=256", "train.micro_batch_tokens=256",
                                      "train.max_steps=1", "train.max_minutes=none", "train.compile=false"])
    trainer = Trainer(config, tmp_path / "golf", progress=False)
    result = trainer.run()
    assert result.steps == 1
    model = trainer.state.model
    assert len(model.blocks) == 11 and model.config.model_dim == 512
    # 11 blocks x (q,o 512x512 + k,v 256x512 + up,down 2048x512) + vocab 384 x 512 tied embedding + small vectors
    matrices = 11 * (2 * 512 * 512 + 2 * 256 * 512 + 2 * 2048 * 512)
    assert matrices + 384 * 512 < model.num_parameters() < matrices + 384 * 512 + 50_000


def test_early_stopping_after_patience_evals_without_improvement(small_dataset, tmp_path):
    # With every learning rate at zero the model never changes, so only the first eval is an improvement.
    config = tiny_config(small_dataset.root, "train.max_steps=20", "train.eval_every=2", "train.early_stop_patience=2",
                         "train.matrix_lr=0", "train.embed_lr=0", "train.scalar_lr=0")
    result = Trainer(config, tmp_path / "run", progress=False).run()
    assert result.stop_reason == "early_stop" and result.steps == 6
    evals = [e for e in read_events(tmp_path / "run" / "train.jsonl") if e["event"] == "eval"]
    assert [e["improved"] for e in evals] == [True, False, False]


def test_cpu_splits_large_micro_batches_into_more_micro_steps(small_dataset, tmp_path, monkeypatch):
    from alrt_core.training import trainer as trainer_module

    # The golf preset on CPU: 48 sequences of 2048 per micro-batch become 6 micro-steps of 8 (16,384 tokens).
    assert trainer_module.cpu_micro_sequences(48, 2048) == 8
    assert trainer_module.cpu_micro_sequences(3, 8192) == 1 and trainer_module.cpu_micro_sequences(12, 256) == 12
    whole = Trainer(tiny_config(small_dataset.root, "train.max_steps=4"), tmp_path / "whole", progress=False)
    whole.run()
    monkeypatch.setattr(trainer_module, "CPU_MICRO_BATCH_TOKENS", 3 * 64)  # tiny: 16 sequences of 64 per step
    split = Trainer(tiny_config(small_dataset.root, "train.max_steps=4"), tmp_path / "split", progress=False)
    split.run()
    assert (whole.setup.micro_sequences, whole.setup.accumulation) == (16, 1) and (split.setup.micro_sequences, split.setup.accumulation) == (2, 8)
    start = read_events(tmp_path / "split" / "train.jsonl")[0]
    assert start["micro_batch_capped"] is True and start["accumulation"] == 8
    # The same rows in the same order: the losses agree up to the order of float summation.
    assert step_losses(tmp_path / "split") == pytest.approx(step_losses(tmp_path / "whole"), rel=1e-4)


def test_best_checkpoint_compares_evaluations_of_the_same_tokens(small_dataset, tmp_path):
    # With every learning rate at zero the model never changes: each capped eval scores the same 128 tokens alike,
    # and the final eval of the whole split (other tokens, another bpb) must not be taken for an improvement.
    config = tiny_config(small_dataset.root, "train.max_steps=6", "train.eval_every=2", "train.eval_tokens=128",
                         "train.matrix_lr=0", "train.embed_lr=0", "train.scalar_lr=0")
    result = Trainer(config, tmp_path / "run", progress=False).run()
    evals = [e for e in read_events(tmp_path / "run" / "train.jsonl") if e["event"] == "eval"]
    capped, whole = [e for e in evals if e["compared"]], [e for e in evals if not e["compared"]]
    assert [e["step"] for e in capped] == [2, 4, 6] and {e["val_tokens"] for e in capped} == {128}
    assert [e["improved"] for e in capped] == [True, False, False]
    assert len(whole) == 1 and whole[0]["full"] and whole[0]["val_tokens"] > 128 and not whole[0]["improved"]
    assert whole[0]["val_bpb"] < capped[0]["val_bpb"]  # 5.59 vs 5.91: compared, it would have been "best"
    assert result.best_val_bpb == capped[0]["val_bpb"] == load_checkpoint(tmp_path / "run" / "best.pt")["val"]["bpb"]
    assert load_checkpoint(tmp_path / "run" / "best.pt")["step"] == 2
    assert result.final.bpb == whole[0]["val_bpb"]  # the run's final figure is the whole split's


def test_auto_precision_is_probed_at_start_reported_and_kept_on_resume(small_dataset, tmp_path, monkeypatch):
    from alrt_core import precision

    precision.probe_precision.cache_clear()
    monkeypatch.setattr(precision, "_rate", lambda shapes, bf16, seconds: 50.0 if bf16 else 100.0)
    config = tiny_config(small_dataset.root, "train.autocast=auto", "train.max_steps=4", "train.eval_every=2")
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.listeners.append(lambda e: trainer.request_stop("test") if e["event"] == "eval" and e["step"] == 2 else None)
    trainer.run()
    start = read_events(tmp_path / "run" / "train.jsonl")[0]
    probe = start["precision_probe"]
    assert start["precision"] == "fp32" and start["precision_mode"] == "auto"
    assert (probe["fp32_gflops"], probe["bf16_gflops"], probe["chosen"]) == (100.0, 50.0, "fp32")
    # The probe ran at this model's own matmul shapes (factorised: in x r and r x out), rows = the micro-batch.
    from alrt_core.model.gpt import GPT

    built = GPT(trainer.config.model, layer_ranks=start["layer_ranks"])
    factors = {(layer.in_features, layer.rank) for layer in built.projections().values()}
    factors |= {(layer.rank, layer.out_features) for layer in built.projections().values()}
    assert probe["shapes"] and all(rows == trainer.setup.micro_sequences * 64 and (k, n) in factors
                                   for rows, k, n in probe["shapes"])
    # The machine now measures bf16 faster: a resumed run still trains as the interrupted run did.
    precision.probe_precision.cache_clear()
    monkeypatch.setattr(precision, "_rate", lambda shapes, bf16, seconds: 500.0 if bf16 else 100.0)
    Trainer(None, resume=tmp_path / "run" / "last.pt", progress=False).run()
    starts = [e for e in read_events(tmp_path / "run" / "train.jsonl") if e["event"] == "run_start"]
    assert starts[-1]["precision"] == "fp32" and starts[-1]["precision_probe"] == probe
    precision.probe_precision.cache_clear()

"""The architecture switches through the pipeline: training with the recurrence schedule and exact resume (with
rank resizes), the quantizer and the one loader, KV-cached generation and ONNX export."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from model_helpers import ALL_ON, SWITCHES, greedy_by_recompute, perturb

from alrt_core.config import ModelConfig, RunConfig, apply_overrides, preset
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Session
from alrt_core.model.gpt import GPT, uniform_ranks
from alrt_core.training.checkpoint import save_checkpoint
from alrt_core.training.events import read_events
from alrt_core.training.trainer import Trainer
from export.artifact import write_artifact
from export.loader import load_model
from export.onnx_export import verify_against_torch
from export.onnx_graph import build_onnx_model
from export.quantize import QuantizeOptions, quantize_checkpoint

ALL_ON_OVERRIDES = [f"model.{key}={value}" for key, value in ALL_ON.items()]


def all_on_config(data_root: Path, *extra: str) -> RunConfig:
    config = preset("tiny")
    config.data.path = str(data_root)
    config.train.max_steps, config.train.eval_every, config.train.eval_tokens = 8, 4, None
    return apply_overrides(config, ["model.num_layers=4", "model.model_dim=32", *ALL_ON_OVERRIDES, *extra])


def test_recurrence_switches_on_at_its_fraction_and_resume_is_exact(small_dataset, tmp_path):
    # Every switch on, ALRT ranks resized at steps 2, 4 and 6; recurrence from 3/8 of the run (step 3), and a
    # stop at step 4: the resumed run must loop from its first step and reproduce the uninterrupted losses.
    config = all_on_config(small_dataset.root, "model.recur_start_frac=0.375", "rank.update_every=2",
                           "rank.warmup_steps=2", "rank.safety_factor=1.2", "train.ema_decay=0.9")
    straight = tmp_path / "straight"
    Trainer(RunConfig.from_dict(config.to_dict()), straight, progress=False).run()
    interrupted = tmp_path / "interrupted"
    trainer = Trainer(RunConfig.from_dict(config.to_dict()), interrupted, progress=False)
    trainer.listeners.append(lambda e: trainer.request_stop("test") if e["event"] == "eval" and e["step"] == 4 else None)
    assert trainer.run().steps == 4
    Trainer(None, resume=interrupted / "last.pt", progress=False).run()

    def events(run: Path, kind: str) -> list[dict]:
        return [e for e in read_events(run / "train.jsonl") if e["event"] == kind]

    assert [(e["step"], e["layers"], e["loops"]) for e in events(straight, "recurrence_on")] == [(3, "1-2", 2)]
    assert [e["step"] for e in events(interrupted, "recurrence_on")] == [3, 4]  # announced again after resume
    assert any(e["step"] in (2, 4, 6) for e in events(straight, "rank_change"))
    losses = {run: {e["step"]: e["loss"] for e in events(run, "train_step")} for run in (straight, interrupted)}
    assert losses[interrupted] == losses[straight] and len(losses[straight]) == 8


def _checkpoint_with(small_dataset, root: Path, changes: dict) -> Path:
    config = preset("tiny")
    config.data.path = str(small_dataset.root)
    config.model = ModelConfig(vocab_size=384, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2, seq_len=48,
                               **changes)
    torch.manual_seed(0)
    model = perturb(GPT(config.model, layer_ranks=uniform_ranks(config.model, 6)), scale=0.05)
    root.mkdir()
    save_checkpoint(root / "last.pt", {"config": config.to_dict(), "model": model.state_dict(), "ema": None,
                                       "ranks": model.layer_ranks(), "step": 0})
    shutil.copy(small_dataset.tokenizer_path, root / "tokenizer.model")
    return root / "last.pt"


TABLES = ("bigram.table.weight", "bigram.proj.weight", "value_embed.table.weight", "value_embed.proj.weight")
GATES_AND_SCALARS = ("attn.gate.weight", "smear.gate.weight", "smear.lam", "skip_gates", "bigram.scale", "attn.value_mix",
                     "attn.value_embed_scale")


# Switches that add tensors or change what calibration sees, one by one; those that only change the computation
# (XSA, depth scale, parallel residuals, document mask) and both gate kinds are in the all-switches models.
@pytest.mark.parametrize("name", ["recurrence", "skip_gates", "bigram", "smear", "value_embed", "value_residual", "all",
                                  "all_dense_gate"])
def test_quantizer_classes_the_new_tensors_and_the_artifact_loads(small_dataset, tmp_path, name):
    changes = {**ALL_ON, "attn_gate": "dense"} if name == "all_dense_gate" else ALL_ON if name == "all" else SWITCHES[name][0]
    checkpoint = _checkpoint_with(small_dataset, tmp_path / "run", changes)
    result = quantize_checkpoint(checkpoint, QuantizeOptions(calib_tokens=1024, small_max=0))
    new_tensors = 0
    for report in result.tensors:  # tables at the embedding's 8 bits, gates and scalars fp16 (bits None)
        if report.name in TABLES:
            assert (report.tensor_class, report.bits) == ("table", 8), report.name
        elif any(pattern in report.name for pattern in GATES_AND_SCALARS):
            assert (report.tensor_class, report.bits) == ("small", None), report.name
        else:
            continue
        new_tensors += 1
    added = set(GPT(ModelConfig(**result.manifest["config"]["model"])).state_dict())
    plain = set(GPT(ModelConfig(vocab_size=384, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2, seq_len=48)).state_dict())
    assert new_tensors == len(added - plain - {"skip_weights"})  # every new tensor has one of the two classes
    path = tmp_path / "m.alrt"
    write_artifact(path, result.data)
    artifact, original = load_model(path), load_model(checkpoint)
    state = artifact.model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in result.dequantized_state().items())
    tokens = torch.randint(2, 384, (2, 48), generator=torch.Generator().manual_seed(1))
    tokens[:, [0, 20]] = 1
    with torch.no_grad():
        quantised, reference = torch.log_softmax(artifact.model(tokens), -1), torch.log_softmax(original.model(tokens), -1)
    kl = (reference.exp() * (reference - quantised)).sum(-1).mean()
    assert 0 < kl < 0.01


def test_cached_generation_with_every_switch_equals_recompute(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2,
                         seq_len=64, **ALL_ON)
    torch.manual_seed(0)
    model = perturb(GPT(config, layer_ranks=uniform_ranks(config, 5)), scale=0.3).eval()
    prompt = [tokenizer.bos_id, *tokenizer.encode("Thou art"), tokenizer.bos_id, *tokenizer.encode("Good")]
    cached = Session(model, tokenizer).generate(prompt, max_new_tokens=16, sampling=SamplingConfig(temperature=0.0))
    assert len(cached.token_ids) == 16
    assert cached.token_ids == greedy_by_recompute(model, prompt, 16)


def test_onnx_logits_with_every_switch_equal_torch(small_dataset):
    # tests/export/test_onnx.py covers ALL_ON on 2 blocks with the sparse gate; here 4 blocks, a two-block
    # recurrence span and the dense gate, over prefill, decode steps and a continuation through the token history.
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2,
                         seq_len=64, **{**ALL_ON, "attn_gate": "dense"})
    torch.manual_seed(0)
    model = perturb(GPT(config, layer_ranks=uniform_ranks(config, 5)), scale=0.1).eval()
    proto = build_onnx_model(model)
    assert [value.name for value in proto.graph.input] == ["input_ids", "past_keys", "past_values", "past_tokens"]
    prompt = [tokenizer.bos_id, *tokenizer.encode("Thou art"), tokenizer.bos_id, *tokenizer.encode("Good")]
    check = verify_against_torch(proto.SerializeToString(), model, tokenizer, prompt_ids=prompt, tolerance=1e-4)
    assert check.decode_steps == 8 and check.continuation_tokens == 4
    assert check.passed, check

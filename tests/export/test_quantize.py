"""`alrt quantize` on a real tiny ALRT run: budgets, fold/keep, the loader, the CLI and `inspect artifact`."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from cli_runner import alrt
from run_helpers import train_tiny

from alrt_core.errors import UserError
from alrt_core.model.gpt import GPT
from export.artifact import decode_artifact, encode_artifact, format_version, write_artifact
from export.compress import compress, decompress_frames
from export.loader import load_model
from export.quantize import QuantizeOptions, fold_decision, quantize_checkpoint

FAST = {"calib_tokens": 2048, "small_max": 0}


@pytest.fixture(scope="module")
def checkpoint(small_dataset, tmp_path_factory) -> Path:
    # Fixed ranks chosen so that some layers pack smaller as factors (q, k, v) and others folded (o, MLP).
    run_dir = train_tiny(tmp_path_factory.mktemp("quantize") / "run", small_dataset.root, "train.max_steps=9",
                         "train.eval_every=9", "rank.policy=fixed", "rank.kinds=q=8,k=8,v=8,o=40,mlp=60",
                         "train.ema_decay=0.5")
    return run_dir / "last.pt"


@pytest.fixture(scope="module")
def unconstrained(checkpoint):
    return quantize_checkpoint(checkpoint, QuantizeOptions(**FAST))


def test_fold_or_keep_is_decided_by_packed_bytes(unconstrained, checkpoint):
    assert fold_decision(8, 64, 64, 6) == "keep" and fold_decision(32, 64, 64, 6) == "fold"
    ranks = torch.load(checkpoint, weights_only=True)["ranks"]
    for layer, decision in unconstrained.fold.items():
        assert decision == fold_decision(ranks[layer], *_shape(layer), 6)
    assert {layer.rsplit(".", 1)[-1] for layer, d in unconstrained.fold.items() if d == "fold"} == {"o", "up", "down"}
    kept = [layer for layer, d in unconstrained.fold.items() if d == "keep"]
    assert all(f"{layer}.U" in unconstrained.quantized for layer in kept)


def _shape(layer: str) -> tuple[int, int]:
    kind = layer.rsplit(".", 1)[-1]
    return {"q": (64, 64), "k": (32, 64), "v": (32, 64), "o": (64, 64), "up": (128, 64), "down": (64, 128)}[kind]


def test_loaded_artifact_reproduces_the_dequantised_weights_and_logits(unconstrained, checkpoint, tmp_path):
    path = tmp_path / "m.alrt"
    write_artifact(path, unconstrained.data)
    loaded = load_model(path)
    state = loaded.model.state_dict()
    for name, value in unconstrained.dequantized_state().items():
        assert torch.equal(state[name], value), name  # bit for bit
    config = loaded.config
    reference = GPT(config.model, layer_ranks=unconstrained.manifest["ranks"])
    reference.load_state_dict({**reference.state_dict(), **unconstrained.dequantized_state()})
    tokens = torch.randint(0, config.model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(tokens), reference.eval()(tokens))
    assert loaded.tokenizer.model_bytes() == (checkpoint.parent / "tokenizer.model").read_bytes()


def test_quantised_model_stays_close_to_the_checkpoint(unconstrained, checkpoint, tmp_path):
    path = tmp_path / "m.alrt"
    write_artifact(path, unconstrained.data)
    artifact, original = load_model(path), load_model(checkpoint)
    tokens = torch.randint(0, 384, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = torch.log_softmax(artifact.model(tokens), -1)
        b = torch.log_softmax(original.model(tokens), -1)
    kl = (b.exp() * (b - a)).sum(-1).mean()
    assert float(kl) < 0.01
    assert all(0 < t.error < 0.05 for t in unconstrained.tensors if t.error is not None)


def test_budgets_are_never_exceeded(checkpoint, unconstrained):
    full = len(unconstrained.data)
    rng = random.Random(0)
    fitted = 0
    for fraction in [1.0] + [rng.uniform(0.55, 0.98) for _ in range(4)]:
        budget = int(full * fraction)
        try:
            result = quantize_checkpoint(checkpoint, QuantizeOptions(budget=budget, **FAST))
        except UserError as error:
            assert "cannot fit" in str(error)
            continue
        assert result.total_bytes <= budget
        fitted += 1
    assert fitted >= 3


def test_impossible_budget_is_exit_2_and_writes_nothing(checkpoint, tmp_path):
    out = tmp_path / "never.alrt"
    result = alrt("quantize", str(checkpoint), "--budget", "2kB", "--out", str(out), "--calib-tokens", "2048")
    assert result.returncode == 2 and "cannot fit 2,000 bytes" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_cli_quantize_counts_code_and_inspect_artifact(checkpoint, tmp_path):
    out = tmp_path / "model.alrt"
    code = tmp_path / "train_gpt.py"
    code.write_text("print('counted')\n" * 100)
    result = alrt("quantize", str(checkpoint), "--budget", "16MB", "--out", str(out), "--calib-tokens", "2048",
                  "--count-code", str(code), "--eval", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # Without a terminal, each phase says when it starts, on stderr (stdout is the one JSON object).
    assert "calibrate: 2,048 tokens …" in result.stderr
    assert re.search(r"^quantize: \d+ matrices …$", result.stderr, re.MULTILINE), result.stderr
    assert summary["code_bytes"] == code.stat().st_size
    assert summary["total_bytes"] == out.stat().st_size + code.stat().st_size <= 16_000_000
    assert summary["headroom"] == 16_000_000 - summary["total_bytes"]
    evaluation = summary["eval"]
    assert evaluation["quant_gap"] == pytest.approx(evaluation["artifact_bpb"] - evaluation["checkpoint_bpb"])
    assert abs(evaluation["quant_gap"]) < 0.05 and 2.0 < evaluation["checkpoint_bpb"] < 5.0
    assert set(summary["classes"]) >= {"attn", "mlp", "embed", "small"}
    report = alrt("inspect", "artifact", str(out), "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["file_bytes"] == out.stat().st_size and data["frames"] == 1  # a small payload is one frame
    assert abs(sum(e["bytes"] for e in data["entries"]) - data["sections"]["payload"]) <= len(data["entries"])
    text = alrt("inspect", "artifact", str(out))
    assert text.returncode == 0 and "byte map" in text.stdout and "checksums verified" in text.stdout
    assert f"payload {data['sections']['payload']:,} B in 1 frame\n" in text.stdout


def test_corrupt_artifact_is_a_user_error_everywhere(unconstrained, tmp_path):
    path = tmp_path / "bad.alrt"
    data = bytearray(unconstrained.data)
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="payload checksum mismatch"):
        load_model(path)
    result = alrt("inspect", "artifact", str(path))
    assert result.returncode == 2 and "checksum mismatch" in result.stderr and "Traceback" not in result.stderr


def test_an_artifact_of_format_2_one_stream_without_frames_still_loads(unconstrained, tmp_path):
    manifest, payload = decode_artifact(unconstrained.data)
    assert format_version(unconstrained.data) == 3 and sum(manifest["frames"]) == len(payload)
    single = compress(decompress_frames(payload, manifest["compressor"], manifest["frames"]), manifest["compressor"])
    old = {key: value for key, value in manifest.items() if key not in ("frames", "payload_sha256", "payload_bytes")}
    data = bytearray(encode_artifact(old, single))
    data[8:12] = (2).to_bytes(4, "little")  # as an alrt before frames wrote it
    path = tmp_path / "v2.alrt"
    path.write_bytes(bytes(data))
    state = load_model(path).model.state_dict()
    for name, value in unconstrained.dequantized_state().items():
        assert torch.equal(state[name], value), name


def test_wrong_frame_lengths_are_a_corrupt_payload(unconstrained, tmp_path):
    manifest, payload = decode_artifact(unconstrained.data)
    broken = {**manifest, "frames": [*manifest["frames"][:-1], manifest["frames"][-1] + 1]}
    path = tmp_path / "frames.alrt"
    path.write_bytes(encode_artifact(broken, payload))
    with pytest.raises(UserError, match="corrupt artifact payload"):
        load_model(path)


def test_no_budget_move_gives_the_unconstrained_artifact_with_one_compression(checkpoint, unconstrained):
    roomy = quantize_checkpoint(checkpoint, QuantizeOptions(budget=len(unconstrained.data) + 1, **FAST))
    assert roomy.data == unconstrained.data and roomy.actions == []
    assert roomy.seconds["compress_passes"] == unconstrained.seconds["compress_passes"] == 1


def test_predicted_sizes_track_the_measured_ones(checkpoint, unconstrained):
    result = quantize_checkpoint(checkpoint, QuantizeOptions(budget=int(len(unconstrained.data) * 0.8), **FAST))
    assert result.total_bytes <= int(len(unconstrained.data) * 0.8)
    pairs = [(before.size, after.size) for before, after in zip(result.actions, result.actions[1:], strict=False)
             if before.predicted and after.action == "confirm"]
    assert pairs, [a.action for a in result.actions]
    for predicted, measured in pairs:
        assert abs(predicted - measured) <= 0.03 * measured, (predicted, measured)
    # The final compressor runs once per confirmation (the fit starts from the sample's estimate), never per move.
    confirms = sum(a.action == "confirm" for a in result.actions)
    assert result.seconds["compress_passes"] == confirms < len(result.actions)


def test_cuda_device_without_a_gpu_is_a_user_error(checkpoint, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = alrt("quantize", str(checkpoint), "--device", "cuda", "--out", str(tmp_path / "x.alrt"))
    assert result.returncode == 2 and "--device cuda: no CUDA device is available" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.alrt").exists()

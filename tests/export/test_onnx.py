"""ONNX export: onnxruntime's logits and greedy tokens against the eager model, metadata, and `alrt export onnx`."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_runner import alrt
from model_helpers import ALL_ON, perturb
from run_helpers import train_tiny
from typer.testing import CliRunner

from alrt_cli.app import app
from alrt_core.config import ModelConfig
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.errors import UserError
from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Session
from alrt_core.model.gpt import GPT, uniform_ranks
from export.artifact import write_artifact
from export.loader import load_model
from export.onnx_export import onnx_model_bytes, verify_against_torch, write_checked
from export.onnx_graph import cache_slots
from export.onnx_runtime import create_session, empty_past, greedy_generate, run_step
from export.quantize import QuantizeOptions, quantize_checkpoint
from serve.chat import ChatSession

# Every architecture switch of tests/model_helpers.py::ALL_ON, with layer sets that fit 2 blocks (depth recurrence
# loops block 1 twice: 3 cache slots; SmearGate, BigramHash and the document mask read earlier tokens).
SWITCHES = {**ALL_ON, "parallel_from": 1, "recur_layers": "1", "value_embed_layers": "0"}
# What the graph must get right, in two exports (each costs seconds): the plain model, dense with GQA (2 KV heads
# for 4 heads) and a tied head; and every projection factorised at rank 5 with partial RoPE (4 of 8 channels),
# full multi-head attention, an untied head and every switch on.
CONFIGS = {
    "dense-gqa-tied": {},
    "rank5-rope4-mha-untied-switches": {**SWITCHES, "ranks": 5, "rope_dims": 4, "num_kv_heads": 4, "tie_embeddings": False},
}


def model_for(tokenizer: Tokenizer, **changes) -> GPT:
    """A tiny random model with noticeable logit gaps (weights perturbed as in
    tests/alrt_core/inference/test_session.py)."""
    torch.manual_seed(0)
    ranks = changes.pop("ranks", None)
    shape = {"vocab_size": tokenizer.vocab_size, "num_layers": 2, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2,
             "seq_len": 64}
    config = ModelConfig(**{**shape, **changes})
    return perturb(GPT(config, layer_ranks=uniform_ranks(config, ranks)), scale=0.3).eval()


@pytest.fixture(scope="module")
def tokenizer(small_dataset) -> Tokenizer:
    return Tokenizer.load(small_dataset.tokenizer_path)


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tokenizer) -> tuple[str, GPT, bytes]:
    model = model_for(tokenizer, **CONFIGS[request.param])
    return request.param, model, onnx_model_bytes(model, tokenizer, "test")[1]


@pytest.mark.parametrize("starts_with_bos", [True, False])
def test_logits_match_torch_for_prefill_decode_and_continuation(exported, tokenizer, starts_with_bos):
    _, model, data = exported
    # Without a leading BOS the first token has no previous token (SmearGate/BigramHash); a BOS inside starts a
    # new document (document mask).
    text = [*tokenizer.encode("Thou art"), tokenizer.bos_id, *tokenizer.encode("KING. Good morrow")]
    prompt = [tokenizer.bos_id, *text] if starts_with_bos else text
    check = verify_against_torch(data, model, tokenizer, prompt_ids=prompt)
    assert (check.prompt_tokens, check.decode_steps, check.continuation_tokens) == (len(prompt), 8, 4)
    assert check.prefill_max_diff < 1e-4 and check.decode_max_diff < 1e-4 and check.continuation_max_diff < 1e-4
    assert check.passed


@torch.no_grad()
def test_batched_prefill_and_decode_match_the_kv_cached_model(exported, tokenizer):
    name, model, data = exported
    session = create_session(data)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    ids[1, 4] = tokenizer.bos_id
    cache = model.new_cache(batch_size=2)
    past = empty_past(session, 2)
    assert set(past) == ({"past_keys", "past_values", "past_tokens"} if "switches" in name else {"past_keys", "past_values"})
    logits, past = run_step(session, ids[:, :7].numpy(), past)
    slots = cache_slots(model)
    assert slots == (3 if "switches" in name else 2) and logits.shape == (2, 7, model.config.vocab_size)
    assert past["past_keys"].shape == past["past_values"].shape == (slots, 2, model.config.num_kv_heads, 7, model.config.head_dim)
    assert np.abs(logits - model(ids[:, :7], cache=cache).numpy()).max() < 1e-4
    assert np.abs(past["past_keys"] - cache.keys[:, :, :, :7].numpy()).max() < 1e-5  # presents = the cache's contents
    for position in (7, 8):
        logits, past = run_step(session, ids[:, position : position + 1].numpy(), past)
        assert past["past_keys"].shape[3] == position + 1
        assert np.abs(logits - model(ids[:, position : position + 1], cache=cache).numpy()).max() < 1e-4
    if "past_tokens" in past:
        assert past["past_tokens"].tolist() == ids.tolist()


def test_factorised_layers_stay_two_matmuls(exported):
    name, model, data = exported
    graph = onnx.load_from_string(data).graph
    initializers = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    factor_matmuls = [node for node in graph.node if node.op_type == "MatMul"
                      and 5 in initializers.get(node.input[1], [])]
    # Per layer application, 6 projections × (V then U) when factorised at rank 5; no rank-5 weights otherwise.
    assert len(factor_matmuls) == (2 * 6 * cache_slots(model) if name.startswith("rank5") else 0)


@pytest.mark.parametrize("prompt_text", [None, "Thou art"])
def test_onnx_greedy_tokens_equal_the_session(exported, tokenizer, prompt_text):
    _, model, data = exported
    prompt = [tokenizer.bos_id, *(tokenizer.encode(prompt_text) if prompt_text else [])]  # None: BOS alone
    expected = Session(model, tokenizer).generate(prompt, max_new_tokens=20, sampling=SamplingConfig(temperature=0.0))
    tokens = greedy_generate(create_session(data), prompt, 20, eos_id=tokenizer.eos_id)
    assert len(tokens) == 20 and tokens == expected.token_ids
    if prompt_text:
        assert len(set(tokens)) > 1  # a real sequence, not one token repeated (BOS alone may settle on one token)


def test_greedy_stops_when_the_context_is_full_like_the_session(exported, tokenizer):
    _, model, data = exported
    prompt = [tokenizer.bos_id, *tokenizer.encode("To be or not to be " * 20)][:60]
    expected = Session(model, tokenizer).generate(prompt, max_new_tokens=20, sampling=SamplingConfig(temperature=0.0))
    assert expected.stats.stop_reason == "context_full" and len(expected.token_ids) == 5  # 64 − 60 + 1
    assert greedy_generate(create_session(data), prompt, 20, eos_id=tokenizer.eos_id) == expected.token_ids


@pytest.fixture(scope="module")
def artifact(small_dataset, tmp_path_factory) -> Path:
    """A tiny trained run quantised to a .alrt (as tests/export/test_quantize.py builds one; some layers kept as U·V)."""
    run_dir = train_tiny(tmp_path_factory.mktemp("onnx") / "run", small_dataset.root, "train.max_steps=2",
                         "train.eval_every=2", "train.eval_tokens=1024", "rank.policy=fixed",
                         "rank.kinds=q=8,k=8,v=8,o=40,mlp=60")
    result = quantize_checkpoint(run_dir / "last.pt", QuantizeOptions(calib_tokens=1024, small_max=0))
    write_artifact(run_dir / "model.alrt", result.data)
    return run_dir / "model.alrt"


def test_cli_exports_a_checked_self_contained_file(artifact, tmp_path):
    out = tmp_path / "model.onnx"
    # In-process (the exporter is already imported by the fixtures); the error test below runs a real process.
    result = CliRunner().invoke(app, ["export", "onnx", str(artifact), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    diffs = {phase: float(value) for phase, value in re.findall(r"(prefill|decode|continuation)\s+(\S+)\s+\(", result.stdout)}
    assert set(diffs) == {"prefill", "decode", "continuation"} and max(diffs.values()) < 1e-3
    for name in ("input_ids", "past_keys", "present_values", "(2, batch, 1, past, 32)", "(batch, seq, 384)"):
        assert name in result.stdout
    assert f"{out.stat().st_size:,} B" in result.stdout
    onnx.checker.check_model(str(out))
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # one file, no temp or external data left
    loaded = load_model(artifact)
    meta = dict(create_session(out).get_modelmeta().custom_metadata_map)
    assert (meta["context_length"], meta["vocab_size"], meta["cache_slots"]) == ("64", "384", "2")
    assert (meta["bos_id"], meta["eos_id"]) == (str(loaded.tokenizer.bos_id), str(loaded.tokenizer.eos_id))
    assert json.loads(meta["model_config"]) == vars(loaded.config.model)
    assert base64.b64decode(meta["tokenizer_model_base64"]) == loaded.tokenizer.model_bytes()
    # The file drives greedy decoding exactly as the torch session does on the same (dequantised) weights.
    prompt = [loaded.tokenizer.bos_id, *loaded.tokenizer.encode("KING.")]
    expected = Session(loaded.model, loaded.tokenizer).generate(prompt, max_new_tokens=12, sampling=SamplingConfig(0.0))
    assert greedy_generate(create_session(out), prompt, 12, eos_id=loaded.tokenizer.eos_id) == expected.token_ids


def test_logits_over_the_tolerance_write_nothing(exported, tokenizer, tmp_path):
    _, model, data = exported
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match=r"ONNX logits differ from torch by .* > tolerance 1e-12; nothing written"):
        write_checked(data, out, model, tokenizer, tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []
    assert write_checked(data, out, model, tokenizer).max_diff < 1e-4 and out.read_bytes() == data


def test_cli_bad_path_is_a_one_line_error(tmp_path):
    result = alrt("export", "onnx", "/nonexistent/model.alrt", "--out", str(tmp_path / "m.onnx"))
    assert result.returncode == 2 and result.stdout == "" and list(tmp_path.iterdir()) == []
    assert result.stderr.strip().splitlines() == ["error: no such model file: /nonexistent/model.alrt"]


def test_session_and_chat_on_the_onnx_decoder_equal_torch(exported, tokenizer, tmp_path):
    _, model, data = exported
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    loaded = load_model(path, allow_onnx=True)
    assert loaded.kind == "onnx" and loaded.model.config.seq_len == model.config.seq_len
    greedy = SamplingConfig(temperature=0.0)
    prompt = [tokenizer.bos_id, *tokenizer.encode("Thou art")]
    ours = Session(loaded.model, loaded.tokenizer).generate(prompt, max_new_tokens=20, sampling=greedy)
    assert ours.token_ids == Session(model, tokenizer).generate(prompt, max_new_tokens=20, sampling=greedy).token_ids

    def conversation(decoder) -> list[str]:
        # Two turns and a regeneration: the cache is extended across turns and truncated for /regen.
        chat = ChatSession(Session(decoder, tokenizer), sampling=greedy, max_new_tokens=8)
        replies = [chat.send("Good morrow").text, chat.send("What news").text, chat.regenerate().text]
        return [*replies, str(len(chat.session.history))]

    assert conversation(loaded.model) == conversation(model)


def test_generate_reads_an_onnx_export_like_its_artifact(artifact, tmp_path):
    out = tmp_path / "model.onnx"
    runner = CliRunner()
    assert runner.invoke(app, ["export", "onnx", str(artifact), "--out", str(out)]).exit_code == 0
    args = ["--prompt", "KING.", "--max-new-tokens", "16", "--temperature", "0"]
    from_onnx = runner.invoke(app, ["generate", str(out), *args])
    from_artifact = runner.invoke(app, ["generate", str(artifact), *args])
    assert from_onnx.exit_code == 0 and from_onnx.stdout == from_artifact.stdout and from_onnx.stdout.strip()
    with pytest.raises(UserError, match="an ONNX export only decodes"):
        load_model(out)  # eval, quantize and inspect need the weights, not the graph

"""The static KV cache and the compiled decode step: the same logits and tokens as the dynamic cache, one compiled
graph for a whole generation, and a clean eager fallback where compiling fails."""

from __future__ import annotations

import pytest
import torch
from model_helpers import ALL_ON, SWITCHES, perturb, small_decoder

from alrt_core.config import ModelConfig
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.inference import decode_step as decode_step_module
from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Session
from alrt_core.model.gpt import GPT, uniform_ranks
from alrt_core.model.kv_cache import StaticKVCache

GREEDY = SamplingConfig(temperature=0.0)
VOCAB, BOS = 64, 1


def build(changes: dict, ranks: int | None = None) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(**{"vocab_size": VOCAB, "num_layers": 4, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2,
                            "seq_len": 40, **changes})
    return perturb(GPT(config, layer_ranks=uniform_ranks(config, ranks))).eval()


def decode_logits(model: GPT, prompt: torch.Tensor, continuation: torch.Tensor, *, static: bool) -> torch.Tensor:
    """Logits of a prefill of `prompt` then one call per token of `continuation` (rows, time)."""
    cache = model.new_cache(prompt.shape[0], static=static)
    with torch.no_grad():
        pieces = [model(prompt, cache=cache)]
        pieces += [model(continuation[:, i : i + 1], cache=cache) for i in range(continuation.shape[1])]
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize("name", [*SWITCHES, "all"])
def test_static_cache_gives_the_dynamic_caches_logits(name):
    model = build(ALL_ON if name == "all" else SWITCHES[name][0], ranks=5 if name == "all" else None)
    tokens = torch.randint(2, VOCAB, (2, 30), generator=torch.Generator().manual_seed(3))
    tokens[0, [0, 9, 20]] = BOS  # documents start inside the prefill and during decoding
    tokens[1, [5, 17]] = BOS
    dynamic = decode_logits(model, tokens[:, :8], tokens[:, 8:], static=False)
    static = decode_logits(model, tokens[:, :8], tokens[:, 8:], static=True)
    assert static.shape == (2, 30, VOCAB)
    torch.testing.assert_close(static, dynamic, atol=2e-5, rtol=1e-5)


def test_static_cache_keeps_positions_in_a_tensor_and_checks_its_room():
    model = build({})
    cache = model.new_cache(1, static=True)
    assert isinstance(cache, StaticKVCache) and cache.keys.shape[3] == 40
    with torch.no_grad():
        model(torch.arange(2, 12)[None], cache=cache)
    assert cache.position.tolist() == [10] and cache.lengths == [10] and cache.remaining == 30
    cache.truncate(4)
    assert cache.lengths == [4]
    with pytest.raises(ValueError, match="cannot truncate a cache of length 4 to 5"):
        cache.truncate(5)
    with pytest.raises(ValueError, match="KV cache full: 4 \\+ 37 positions exceed its 40"):
        model(torch.zeros((1, 37), dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="a static cache reads all its rows"):
        cache.select([0])


def test_compiled_session_decodes_the_eager_tokens_with_one_graph(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    # Switches that read the cache's token history and per-row positions (the rest: the eager static-cache test).
    model = small_decoder(tokenizer, seq_len=64, smear_gate=True, attn_gate_dims=8, doc_mask=True, ranks=5)
    torch._dynamo.reset()
    compiled = Session(model, tokenizer, compile_decode=True)
    step = compiled.decode_step
    assert step is not None and step.fallback_reason is None and step.compile_seconds is not None
    frames_after_warm_up = torch._dynamo.utils.counters["frames"]["ok"]
    eager = Session(model, tokenizer)
    for prompt, sampling in (([5, 6, 7], GREEDY), (list(range(10, 30)), SamplingConfig(temperature=0.9, seed=4))):
        compiled.reset()
        eager.reset()
        want = eager.generate(prompt, max_new_tokens=30, sampling=sampling)
        got = compiled.generate(prompt, max_new_tokens=30, sampling=sampling)
        assert got.token_ids == want.token_ids and got.text == want.text
        assert compiled.cache.lengths == eager.cache.lengths == [len(prompt) + len(want.token_ids)]
    # Two generations on another cache than the warm-up's, at every position: no frame compiled again.
    assert torch._dynamo.utils.counters["frames"]["ok"] == frames_after_warm_up


def test_a_failing_compile_falls_back_to_eager_once(small_dataset, monkeypatch, capsys):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = small_decoder(tokenizer, seq_len=64)

    def broken_compiler(function, **options):
        def fail(*args):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return fail

    monkeypatch.setattr(decode_step_module.torch, "compile", broken_compiler)
    session = Session(model, tokenizer, compile_decode=True)
    assert session.decode_step is not None
    assert session.decode_step.fallback_reason == "RuntimeError: no C++ compiler found"
    assert capsys.readouterr().err.count("decoding eagerly") == 1
    got = session.generate([5, 6, 7], max_new_tokens=20, sampling=GREEDY)
    assert got.token_ids == Session(model, tokenizer).generate([5, 6, 7], max_new_tokens=20, sampling=GREEDY).token_ids
    assert capsys.readouterr().err == ""  # said once, not per token


def test_only_a_torch_model_has_a_compiled_step(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)

    class NotAGPT:
        def __init__(self, model: GPT) -> None:
            self.inner = model
            self.config, self.device = model.config, model.device

        def eval(self):
            return self

    with pytest.raises(ValueError, match="only a torch model"):
        Session(NotAGPT(small_decoder(tokenizer)), tokenizer, compile_decode=True)  # type: ignore[arg-type]

"""KV-cached decoding against full recomputation, seeded sampling, stop strings and context limits."""

from __future__ import annotations

import pytest
import torch
from model_helpers import greedy_by_recompute, small_decoder

from alrt_core.data.tokenizer import Tokenizer
from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Session
from alrt_core.model.gpt import GPT

GREEDY = SamplingConfig(temperature=0.0)


@pytest.mark.parametrize("changes", [{}, {"ranks": 5}, {"rope_dims": 4}, {"num_kv_heads": 4, "tie_embeddings": False}])
def test_cached_greedy_decode_equals_full_recompute(small_dataset, changes):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = small_decoder(tokenizer, **changes)
    prompt = [tokenizer.bos_id, *tokenizer.encode("Thou art")]
    cached = Session(model, tokenizer).generate(prompt, max_new_tokens=20, sampling=GREEDY)
    assert cached.token_ids == greedy_by_recompute(model, prompt, len(cached.token_ids))
    assert cached.stats.new_tokens == len(cached.token_ids) and cached.stats.prompt_tokens == len(prompt)


def test_seeded_sampling_is_reproducible_and_seeds_differ(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = small_decoder(tokenizer)
    prompt = [tokenizer.bos_id, *tokenizer.encode("Good")]

    def run(seed: int) -> list[int]:
        sampling = SamplingConfig(temperature=1.0, top_k=40, top_p=0.9, seed=seed)
        return Session(model, tokenizer).generate(prompt, max_new_tokens=24, sampling=sampling).token_ids

    assert run(1) == run(1) and run(1) != run(2)


def test_stop_strings_cut_the_text_and_end_generation(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = small_decoder(tokenizer)
    prompt = [tokenizer.bos_id, *tokenizer.encode("And")]
    full = Session(model, tokenizer).generate(prompt, max_new_tokens=30, sampling=GREEDY)
    stop = full.text[5:7]
    streamed: list[str] = []
    cut = Session(model, tokenizer).generate(prompt, max_new_tokens=30, sampling=GREEDY, stop=(stop,), on_text=streamed.append)
    assert cut.stats.stop_reason == "stop_string" and stop not in cut.text
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)] and len(cut.token_ids) < len(full.token_ids)
    assert "".join(streamed) == cut.text and full.text.startswith(cut.text.rstrip("\ufffd"))


def test_context_full_stops_or_slides(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = small_decoder(tokenizer, seq_len=16)
    prompt = [tokenizer.bos_id, *tokenizer.encode("Hark")][:4]
    stopped = Session(model, tokenizer).generate(prompt, max_new_tokens=40, sampling=GREEDY)
    assert stopped.stats.stop_reason == "context_full" and len(prompt) + len(stopped.token_ids) == 17
    slid = Session(model, tokenizer).generate(prompt, max_new_tokens=40, sampling=GREEDY, sliding_context=True)
    assert len(slid.token_ids) == 40 and slid.stats.slides >= 2


def test_a_stop_string_split_over_two_tokens_never_leaks(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = small_decoder(tokenizer)
    prompt = [tokenizer.bos_id, *tokenizer.encode("And")]
    full = Session(model, tokenizer).generate(prompt, max_new_tokens=30, sampling=GREEDY)
    # A two-character stop string whose first character ends one token's text and whose second begins the next.
    ends = [len(tokenizer.decode(full.token_ids[:count])) for count in range(1, len(full.token_ids))]
    boundary = next(end for end in ends[1:] if full.text.find(full.text[end - 1 : end + 1]) == end - 1)
    stop = full.text[boundary - 1 : boundary + 1]
    streamed: list[str] = []
    cut = Session(model, tokenizer).generate(prompt, max_new_tokens=30, sampling=GREEDY, stop=(stop,),
                                             on_text=streamed.append)
    assert cut.stats.stop_reason == "stop_string"
    assert cut.text == full.text[: boundary - 1] == "".join(streamed)  # not even the stop's first character


class LogitsOnMeta(torch.nn.Module):
    """The model computing on the CPU but handing its logits back on another device (`meta`), as a CUDA model
    hands back CUDA logits: the only way to see on a CPU-only machine which device sampling works on."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.inner, self.config = model, model.config

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def new_cache(self, **kwargs):  # noqa: ANN003, ANN201 - the model's own signature
        return self.inner.new_cache(**kwargs)

    def forward(self, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        return self.inner(*args, **kwargs).to("meta")


def test_seeded_sampling_makes_its_generator_on_the_device_of_the_logits(small_dataset, monkeypatch):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = LogitsOnMeta(small_decoder(tokenizer))
    made: list[torch.device] = []
    sampled: list[tuple[torch.device, torch.device | None]] = []

    class RecordingGenerator:  # torch refuses a meta generator, so record the device instead of making one
        def __init__(self, device: str | torch.device = "cpu") -> None:
            self.device = torch.device(device)
            made.append(self.device)

        def manual_seed(self, seed: int) -> RecordingGenerator:
            return self

    def multinomial(probs: torch.Tensor, count: int, *, generator: RecordingGenerator | None = None) -> torch.Tensor:
        sampled.append((probs.device, None if generator is None else generator.device))
        return torch.full((count,), tokenizer.bos_id, dtype=torch.long)  # a real (CPU) token id for int()

    monkeypatch.setattr(torch, "Generator", RecordingGenerator)
    monkeypatch.setattr(torch, "multinomial", multinomial)
    sampling = SamplingConfig(temperature=1.0, top_k=0, seed=7)
    result = Session(model, tokenizer).generate([tokenizer.bos_id], max_new_tokens=3, sampling=sampling)
    assert len(result.token_ids) == 3 and made
    assert all(device == torch.device("meta") for device in made)  # CUDA logits would get a CUDA generator
    assert sampled == [(torch.device("meta"), torch.device("meta"))] * 3


def test_sliding_context_continues_a_prompt_longer_than_the_context(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = small_decoder(tokenizer, seq_len=16)
    prompt = [tokenizer.bos_id, *tokenizer.encode("Hark, hark! the lark at heaven's gate sings, and Phoebus gins")]
    assert len(prompt) > 16
    stopped = Session(model, tokenizer).generate(prompt, max_new_tokens=5, sampling=GREEDY)
    assert stopped.stats.stop_reason == "context_full" and stopped.token_ids == []
    slid = Session(model, tokenizer).generate(prompt, max_new_tokens=5, sampling=GREEDY, sliding_context=True)
    # The prompt's last half-context is kept (a slide drops the older half), leaving room to go on.
    tail = Session(model, tokenizer).generate(prompt[-8:], max_new_tokens=5, sampling=GREEDY)
    assert len(slid.token_ids) == 5 and slid.token_ids == tail.token_ids
    assert slid.stats.stop_reason == "max_new_tokens" and slid.stats.slides == 1
    # The same from a session whose history already holds a conversation.
    busy = Session(model, tokenizer)
    busy.generate([tokenizer.bos_id, *tokenizer.encode("Good")], max_new_tokens=3, sampling=GREEDY)
    again = busy.generate(prompt, max_new_tokens=5, sampling=GREEDY, sliding_context=True)
    assert again.token_ids == tail.token_ids and busy.history == prompt[-8:] + tail.token_ids

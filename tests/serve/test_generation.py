"""KV-cached generation against full recomputation, sampling, stop strings, context limits and chat history."""

from __future__ import annotations

import pytest
import torch
from model_helpers import greedy_by_recompute

from alrt_core.config import ModelConfig
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.model.gpt import GPT
from serve.chat import ChatSession, ChatTemplate
from serve.generation import Session
from serve.sampling import SamplingConfig, apply_repetition_penalty, next_token

GREEDY = SamplingConfig(temperature=0.0)


def model_for(tokenizer: Tokenizer, seq_len: int = 64, **changes) -> GPT:
    torch.manual_seed(0)
    ranks = changes.pop("ranks", None)
    shape = {"vocab_size": tokenizer.vocab_size, "num_layers": 2, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2,
             "seq_len": seq_len}
    config = ModelConfig(**{**shape, **changes})
    model = GPT(config, layer_ranks=ranks)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return model.eval()


@pytest.mark.parametrize("changes", [{}, {"ranks": 5}, {"rope_dims": 4}, {"num_kv_heads": 4, "tie_embeddings": False}])
def test_cached_greedy_decode_equals_full_recompute(small_dataset, changes):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = model_for(tokenizer, **changes)
    prompt = [tokenizer.bos_id, *tokenizer.encode("Thou art")]
    cached = Session(model, tokenizer).generate(prompt, max_new_tokens=20, sampling=GREEDY)
    assert cached.token_ids == greedy_by_recompute(model, prompt, len(cached.token_ids))
    assert cached.stats.new_tokens == len(cached.token_ids) and cached.stats.prompt_tokens == len(prompt)


def test_seeded_sampling_is_reproducible_and_seeds_differ(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = model_for(tokenizer)
    prompt = [tokenizer.bos_id, *tokenizer.encode("Good")]

    def run(seed: int) -> list[int]:
        sampling = SamplingConfig(temperature=1.0, top_k=40, top_p=0.9, seed=seed)
        return Session(model, tokenizer).generate(prompt, max_new_tokens=24, sampling=sampling).token_ids

    assert run(1) == run(1) and run(1) != run(2)


def test_top_k_top_p_and_repetition_penalty():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    picks = {next_token(logits, torch.tensor([]), SamplingConfig(1.0, 2, 1.0, 1.0), torch.Generator().manual_seed(s)) for s in range(50)}
    assert picks == {0, 1}
    nucleus = {next_token(logits, torch.tensor([]), SamplingConfig(1.0, 0, 0.5, 1.0), torch.Generator().manual_seed(s)) for s in range(50)}
    assert nucleus == {0}  # p(0) = 0.64 already covers 0.5
    penalised = apply_repetition_penalty(logits, torch.tensor([0, 4]), 2.0)
    assert penalised.tolist() == [1.5, 2.0, 1.0, 0.0, -2.0]


def test_stop_strings_cut_the_text_and_end_generation(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = model_for(tokenizer)
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
    model = model_for(tokenizer, seq_len=16)
    prompt = [tokenizer.bos_id, *tokenizer.encode("Hark")][:4]
    stopped = Session(model, tokenizer).generate(prompt, max_new_tokens=40, sampling=GREEDY)
    assert stopped.stats.stop_reason == "context_full" and len(prompt) + len(stopped.token_ids) == 17
    slid = Session(model, tokenizer).generate(prompt, max_new_tokens=40, sampling=GREEDY, sliding_context=True)
    assert len(slid.token_ids) == 40 and slid.stats.slides >= 2


def test_chat_keeps_the_conversation_in_the_cache(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = model_for(tokenizer, seq_len=256)
    template = ChatTemplate(user="ROMEO", bot="JULIET")
    chat = ChatSession(Session(model, tokenizer), template, GREEDY, max_new_tokens=12)
    chat.send("What light through yonder window breaks?")
    first_turn_tokens = len(chat.session.history)
    reply = chat.send("It is the east.")
    # The second reply continued the whole conversation: it equals greedy decoding of the full transcript.
    first = chat.turns[0]
    prompt = [tokenizer.bos_id, *tokenizer.encode(template.user_turn(first.message)),
              *tokenizer.encode(first.reply + template.turn_end), *tokenizer.encode(template.user_turn("It is the east."))]
    assert chat.session.history[: len(prompt)] == prompt  # turn 1 is in the cache, exactly once
    expected = greedy_by_recompute(model, prompt, len(reply.token_ids))
    assert reply.token_ids == expected
    assert chat.turn_starts == [1, first_turn_tokens] and len(chat.turns) == 2
    regen = chat.regenerate()
    assert regen.token_ids == reply.token_ids and len(chat.turns) == 2  # greedy: the same reply again
    chat.clear()
    assert chat.session.history == [tokenizer.bos_id] and chat.turns == []


def test_a_stop_string_split_over_two_tokens_never_leaks(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = model_for(tokenizer)
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

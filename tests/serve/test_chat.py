"""A chat keeps its whole conversation in one KV cache: each reply continues the full transcript."""

from __future__ import annotations

from model_helpers import greedy_by_recompute, small_decoder

from alrt_core.data.tokenizer import Tokenizer
from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Session
from serve.chat import ChatSession, ChatTemplate

GREEDY = SamplingConfig(temperature=0.0)


def test_chat_keeps_the_conversation_in_the_cache(small_dataset):
    tokenizer = Tokenizer.load(small_dataset.tokenizer_path)
    model = small_decoder(tokenizer, seq_len=256)
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

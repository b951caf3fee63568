"""A multi-turn chat with a base language model, kept in one KV cache across turns.

Our models are base LMs trained on text, so a chat is a document in a simple template. The default follows the
play scripts of the embedded corpus: a turn is `"{user}.\\n{message}\\n\\n{bot}.\\n"` and the reply ends at the
next blank line (`turn_end`). The conversation stays in the cache: a new turn prefills only its own tokens. When the
context would overflow, the oldest turns are dropped and the remaining ones re-prefilled (the session reports it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Generation, Session


@dataclass(frozen=True)
class ChatTemplate:
    user: str = "YOU"
    bot: str = "HAMLET"
    turn_end: str = "\n\n"

    def user_turn(self, message: str) -> str:
        return f"{self.user}.\n{message.strip()}{self.turn_end}{self.bot}.\n"

    def render(self, messages: Sequence[tuple[str, str]]) -> str:
        """A whole conversation of `(role, text)` as the document the model continues (the HTTP chat endpoint).

        Each message is one paragraph ending in `turn_end`: a system message is its text as a preface, a user
        message `"{user}.\n{text}"`, an assistant message `"{bot}.\n{text}"`; then `"{bot}.\n"` opens the reply,
        which ends at the next `turn_end`. User/assistant pairs render exactly as `ChatSession` keeps them.
        """
        speakers = {"user": self.user, "assistant": self.bot}
        paragraphs = []
        for role, text in messages:
            if role == "system":
                paragraphs.append(text.strip())
            elif role in speakers:
                body = text.strip() if role == "user" else text.strip("\n")  # as `ChatSession` stores replies
                paragraphs.append(f"{speakers[role]}.\n{body}")
            else:
                raise ValueError(f"unknown chat role {role!r}")
        return "".join(paragraph + self.turn_end for paragraph in paragraphs) + f"{self.bot}.\n"


@dataclass
class Turn:
    message: str
    reply: str


@dataclass
class ChatSession:
    session: Session
    template: ChatTemplate = field(default_factory=ChatTemplate)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_new_tokens: int = 200
    turns: list[Turn] = field(default_factory=list)
    turn_starts: list[int] = field(default_factory=list)  # where each turn begins in the cached history
    dropped_turns: int = 0  # turns forgotten so far because the context filled

    def __post_init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.session.reset()
        self.session.feed([self.session.tokenizer.bos_id])
        self.turns, self.turn_starts = [], []

    def _encode(self, text: str) -> list[int]:
        return self.session.tokenizer.encode(text)

    def _rebuild(self, turns: list[Turn]) -> None:
        """Re-prefill BOS and `turns` (used after forgetting the oldest turns)."""
        self.session.reset()
        ids = [self.session.tokenizer.bos_id]
        self.turn_starts = []
        for turn in turns:
            self.turn_starts.append(len(ids))
            ids += self._encode(self.template.user_turn(turn.message) + turn.reply + self.template.turn_end)
        self.session.feed(ids)
        self.turns = list(turns)

    def send(self, message: str, *, on_text: Callable[[str], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> Generation:
        prompt = self._encode(self.template.user_turn(message))
        room = self.session.context - len(prompt) - self.max_new_tokens
        if room < 1:
            raise ValueError(f"the message ({len(prompt)} tokens) and the reply budget do not fit the context "
                             f"of {self.session.context} tokens")
        if len(self.session.history) > room:
            self._forget_oldest_turns(room)
        start = len(self.session.history)
        sampling = self.sampling
        if sampling.seed is not None:
            # Reproducible per conversation, but each turn draws its own stream (else every reply starts alike).
            sampling = replace(sampling, seed=sampling.seed + len(self.turns))
        generation = self.session.generate(
            prompt, max_new_tokens=self.max_new_tokens, sampling=sampling, stop=(self.template.turn_end,),
            on_text=on_text, should_stop=should_stop,
        )
        reply = generation.text.strip("\n")
        # The cache holds the prompt and the sampled tokens (possibly past the stop string); keep exactly the turn.
        # Its re-encoding ends with turn_end, which the reply budget did not count: it may need older turns gone.
        turn_ids = prompt + self._encode(reply + self.template.turn_end)
        self.session.truncate(start)
        if len(turn_ids) > self.session.cache.remaining:
            self._forget_oldest_turns(self.session.context - len(turn_ids))
        self.turn_starts.append(len(self.session.history))
        self.session.feed(turn_ids)
        self.turns.append(Turn(message, reply))
        return generation

    def _forget_oldest_turns(self, room: int) -> None:
        """Drop the oldest turns until BOS and the rest fit in `room` tokens, and re-prefill those."""
        kept = list(self.turns)
        while kept and 1 + sum(len(self._encode(self.template.user_turn(t.message) + t.reply + self.template.turn_end))
                               for t in kept) > room:
            kept.pop(0)
            self.dropped_turns += 1
        self._rebuild(kept)

    def regenerate(self, **kwargs) -> Generation:  # noqa: ANN003 - same keywords as send
        if not self.turns:
            raise ValueError("nothing to regenerate yet")
        last = self.turns.pop()
        self.session.truncate(self.turn_starts.pop())  # the cache keeps everything before that turn
        return self.send(last.message, **kwargs)

"""KV-cached generation from a `Decoder`: prefill the prompt once, then one token per forward pass.

Text streams out as it becomes final: the decoded text of all generated tokens is recomputed and only the new,
complete part is emitted (a multi-byte character split over byte-fallback tokens appears once it is whole, and
a tail that could begin a stop string once the next token rules the stop out, so a stop string never leaks).
When the context is full, generation stops with `stop_reason="context_full"`, or with `sliding_context=True` the
oldest half of the context is dropped and the rest re-prefilled (documented cost: one prefill per slide); a prompt
that alone fills the context is cut to its last half-context the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, cast

import torch

from alrt_core.data.tokenizer import Tokenizer
from alrt_core.inference.decode_step import CompiledDecodeStep
from alrt_core.inference.decoder import CacheT, Decoder
from alrt_core.inference.sampling import SamplingConfig, next_token, seeded_generator
from alrt_core.model.gpt import GPT
from alrt_core.model.kv_cache import StaticKVCache


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    time_to_first_token: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""
    slides: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass
class Generation:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)


class Session(Generic[CacheT]):
    """A model with its own KV cache holding a token history (the prompt so far, and what was generated)."""

    def __init__(self, model: Decoder[CacheT], tokenizer: Tokenizer, *, dtype: torch.dtype = torch.float32,
                 compile_decode: bool = False) -> None:
        """`compile_decode` (a `GPT` only): decode one token per call through a compiled step over a static cache
        (`CompiledDecodeStep`), compiled here before the first prompt; the prompt itself is prefilled eagerly."""
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = model.device
        self.context = model.config.seq_len
        self.decode_step: CompiledDecodeStep | None = None
        self.cache: CacheT
        if compile_decode:
            if not isinstance(model, GPT):
                raise ValueError("only a torch model (checkpoint or .alrt artifact) has a compiled decode step")
            self.cache = cast(CacheT, model.new_cache(batch_size=1, dtype=dtype, static=True))
            self.decode_step = CompiledDecodeStep(model)
            self.decode_step.warm_up(cast(StaticKVCache, self.cache))
        else:
            self.cache = model.new_cache(batch_size=1, dtype=dtype)
        self.history: list[int] = []  # every token whose keys/values are in the cache

    def reset(self) -> None:
        self.cache.truncate(0)
        self.history = []

    def truncate(self, length: int) -> None:
        self.cache.truncate(length)
        self.history = self.history[:length]

    @torch.no_grad()
    def feed(self, ids: list[int]) -> torch.Tensor:
        """Run `ids` through the model after the cached history; the logits of the last position."""
        if not ids:
            raise ValueError("nothing to feed")
        if len(ids) > self.cache.remaining:
            raise ValueError(f"{len(ids)} tokens do not fit the {self.cache.remaining} left in the context")
        inputs = torch.tensor([ids], dtype=torch.long, device=self.device)
        if self.decode_step is not None and len(ids) == 1:
            logits = self.decode_step(inputs, cast(StaticKVCache, self.cache))
        else:
            logits = self.model(inputs, cache=self.cache, logits_from=len(ids) - 1)
        self.history += ids
        return logits[0, -1]

    def slide(self, keep: int) -> torch.Tensor:
        """Keep the last `keep` tokens of history (re-prefilled) and return the last position's logits."""
        kept = self.history[-keep:]
        self.reset()
        return self.feed(kept)

    def generate(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        sampling: SamplingConfig,
        stop: tuple[str, ...] = (),
        sliding_context: bool = False,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generation:
        """Append `prompt_ids` to the history and generate up to `max_new_tokens`, streaming text to `on_text`."""
        result = Generation()
        stats = result.stats
        stats.prompt_tokens = len(prompt_ids)
        started = time.perf_counter()
        if len(prompt_ids) > self.cache.remaining:
            if not sliding_context:
                stats.stop_reason = "context_full"
                return result
            if len(prompt_ids) >= self.context:
                # Not even the prompt fits: keep its last half-context, as a slide keeps half, so there is room to go on.
                kept, prompt_ids = [], prompt_ids[len(prompt_ids) - self.context // 2 :]
            else:
                keep = (self.context - len(prompt_ids)) // 2  # half of the room the prompt leaves, for history
                kept = self.history[len(self.history) - keep :] if keep else []
            self.reset()
            prompt_ids = kept + prompt_ids
            stats.slides += 1
        logits = self.feed(prompt_ids) if prompt_ids else self.feed([self.tokenizer.bos_id])
        stats.time_to_first_token = time.perf_counter() - started
        generator = seeded_generator(sampling.seed, logits)  # on the logits' device (CUDA needs a CUDA generator)
        stream = TextStream(self.tokenizer, stop, on_text)
        decode_started = time.perf_counter()
        for token in self._tokens(logits, max_new_tokens, sampling, generator, sliding_context, stats, should_stop):
            if stream.push(token):
                stats.stop_reason = "stop_string"
                break
        stats.new_tokens = len(stream.token_ids)
        stats.decode_seconds = time.perf_counter() - decode_started
        stats.stop_reason = stats.stop_reason or "max_new_tokens"
        result.token_ids, result.text = stream.token_ids, stream.finish()
        return result

    def _tokens(
        self, logits: torch.Tensor, budget: int, sampling: SamplingConfig, generator: torch.Generator | None,
        sliding_context: bool, stats: GenerationStats, should_stop: Callable[[], bool] | None,
    ) -> Iterator[int]:
        for _ in range(budget):
            if should_stop is not None and should_stop():
                stats.stop_reason = "interrupted"
                return
            context = torch.tensor(self.history[-self.context :], dtype=torch.long, device=logits.device)
            token = next_token(logits, context, sampling, generator)
            yield token
            if token == self.tokenizer.eos_id:
                stats.stop_reason = "eos"
                return
            if self.cache.remaining == 0:
                if not sliding_context:
                    stats.stop_reason = "context_full"
                    return
                logits = self.slide(self.context // 2)
                stats.slides += 1
            logits = self.feed([token])


class TextStream:
    """The text of generated tokens as it becomes final, cut at the first stop string.

    Each pushed token re-decodes all tokens so far and emits (to `on_text`) only the new part that can no longer
    change: a trailing replacement character (usually half of a multi-byte character) and a tail that may be the
    start of a stop string are held back until the next token decides."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...], on_text: Callable[[str], None] | None) -> None:
        self.tokenizer, self.stop, self.on_text = tokenizer, stop, on_text
        self.token_ids: list[int] = []
        self.emitted = ""
        self.stopped = False

    def push(self, token: int) -> bool:
        """Add one generated token; True when a stop string has appeared (the text ends before it)."""
        self.token_ids.append(token)
        text = self.tokenizer.decode(self.token_ids)
        stop_at = _first_stop(text, self.stop, len(self.emitted))
        if stop_at is not None:
            text, self.stopped = text[:stop_at], True
        final = _without_partial_stop(text.rstrip("\ufffd"), self.stop) if stop_at is None else text
        if len(final) > len(self.emitted) and self.on_text is not None:
            self.on_text(final[len(self.emitted) :])
        self.emitted = max(self.emitted, final, key=len)
        return self.stopped

    def finish(self) -> str:
        """The whole text (up to a stop string), emitting whatever was held back."""
        text = self.emitted if self.stopped else self.tokenizer.decode(self.token_ids)
        if self.on_text is not None and len(text) > len(self.emitted):
            self.on_text(text[len(self.emitted) :])
        return text


def _without_partial_stop(text: str, stops: tuple[str, ...]) -> str:
    """`text` without its longest suffix that is a proper prefix of a stop string."""
    held = max((n for stop in stops for n in range(min(len(stop) - 1, len(text)), 0, -1) if text.endswith(stop[:n])),
               default=0)
    return text[: len(text) - held]


def _first_stop(text: str, stops: tuple[str, ...], search_from: int) -> int | None:
    """Index where the earliest stop string starts (searching from a little before the already emitted text)."""
    positions = []
    for stop in stops:
        index = text.find(stop, max(0, search_from - len(stop)))
        if index >= 0:
            positions.append(index)
    return min(positions) if positions else None

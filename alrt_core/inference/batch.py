"""Continuous batching: several generations decode together, each in its own row of one KV cache.

A request joins between decode steps: its prompt is prefilled alone into a free row (the same forward call
`Session` makes, so its first logits are the ones `alrt generate` gets), then every running row advances by one
token per `step`, in one batched forward call with each row at its own position. A row that finishes (end of
text, stop string, token budget, full context) or whose request is cancelled leaves at once and frees its row for
the next request. Each row samples from its own logits with its own seeded generator and keeps its own stop
strings and streamed text (`TextStream`), so its tokens do not depend on what else runs.

The model must be an eager `GPT`-like decoder whose cache supports `select` (rows at different lengths); the ONNX
graph shares one past length across a batch and is served one request at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alrt_core.data.tokenizer import Tokenizer
from alrt_core.inference.sampling import SamplingConfig, next_token, seeded_generator
from alrt_core.inference.session import Generation, TextStream
from alrt_core.model.gpt import GPT


@dataclass
class BatchRequest:
    """One generation: what `Session.generate` takes (no sliding context), plus its hooks."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingConfig
    stop: tuple[str, ...] = ()
    on_text: Callable[[str], None] | None = None  # streamed text pieces, as they become final
    should_stop: Callable[[], bool] | None = None  # polled before each token: True cancels ("interrupted")


@dataclass
class _Row:
    request: BatchRequest
    stream: TextStream
    generator: torch.Generator | None
    history: list[int]  # every token whose keys/values are in this row
    logits: torch.Tensor  # the next token's logits
    decode_started: float
    result: Generation = field(default_factory=Generation)


class BatchedGenerator:
    """Up to `slots` generations at once over one model and one cache."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, slots: int, *, dtype: torch.dtype = torch.float32) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.context = model.config.seq_len
        self.cache = model.new_cache(batch_size=slots, dtype=dtype)
        self.rows: dict[int, _Row] = {}  # cache row -> the generation running in it
        self.slots = slots

    @property
    def free(self) -> int:
        return self.slots - len(self.rows)

    @torch.no_grad()
    def _forward(self, rows: list[int], ids: torch.Tensor) -> torch.Tensor:
        """Logits of the last position of each of `rows`, fed `ids` (len(rows), positions) after its history."""
        self.cache.select(rows)
        return self.model(ids.to(self.model.device), cache=self.cache, logits_from=ids.shape[1] - 1)[:, -1]

    def add(self, request: BatchRequest) -> Generation | None:
        """Prefill `request` into a free row. Returns its finished Generation at once when it cannot run (the prompt
        does not fit the context, no tokens wanted, or cancelled), else None: it runs from the next `step` on."""
        if not self.free:
            raise ValueError("every row is taken")
        started = time.perf_counter()
        prompt = request.prompt_ids or [self.tokenizer.bos_id]
        result = Generation()
        result.stats.prompt_tokens = len(request.prompt_ids)
        if len(request.prompt_ids) > self.context:
            result.stats.stop_reason = "context_full"
            return result
        row = next(index for index in range(self.slots) if index not in self.rows)
        self.cache.select([row])
        self.cache.truncate(0)
        logits = self._forward([row], torch.tensor([prompt], dtype=torch.long))[0]
        result.stats.time_to_first_token = time.perf_counter() - started
        generator = seeded_generator(request.sampling.seed, logits)
        self.rows[row] = _Row(request, TextStream(self.tokenizer, request.stop, request.on_text), generator,
                              list(prompt), logits, time.perf_counter(), result)
        if request.max_new_tokens <= 0:
            return self._finish(row, "max_new_tokens")
        return None

    def step(self) -> list[tuple[BatchRequest, Generation]]:
        """One token for every running row; the requests that finished in this step, with their generations."""
        finished: list[tuple[BatchRequest, Generation]] = []
        continuing: list[tuple[int, int]] = []  # (row, token to feed)
        for row, state in list(self.rows.items()):
            request = state.request
            if request.should_stop is not None and request.should_stop():
                finished.append((request, self._finish(row, "interrupted")))
                continue
            context = torch.tensor(state.history[-self.context :], dtype=torch.long, device=state.logits.device)
            token = next_token(state.logits, context, request.sampling, state.generator)
            if state.stream.push(token):
                finished.append((request, self._finish(row, "stop_string")))
            elif token == self.tokenizer.eos_id:
                finished.append((request, self._finish(row, "eos")))
            elif len(state.history) >= self.context:  # as Session: a full context ends it before the budget does
                finished.append((request, self._finish(row, "context_full")))
            elif len(state.stream.token_ids) >= request.max_new_tokens:
                finished.append((request, self._finish(row, "max_new_tokens")))
            else:
                continuing.append((row, token))
        if continuing:
            continuing.sort()  # ascending rows: the cache reads a run of consecutive rows as a view, not a copy
            rows = [row for row, _ in continuing]
            logits = self._forward(rows, torch.tensor([[token] for _, token in continuing], dtype=torch.long))
            for index, (row, token) in enumerate(continuing):
                self.rows[row].history.append(token)
                self.rows[row].logits = logits[index]
        return finished

    def _finish(self, row: int, reason: str) -> Generation:
        state = self.rows.pop(row)
        result, stats = state.result, state.result.stats
        stats.stop_reason = reason
        stats.new_tokens = len(state.stream.token_ids)
        stats.decode_seconds = time.perf_counter() - state.decode_started
        result.token_ids, result.text = state.stream.token_ids, state.stream.finish()
        return result

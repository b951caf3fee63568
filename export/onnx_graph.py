"""The traced ONNX graph of the GPT: one function for prefill and decode, the KV cache as inputs and outputs.

    input_ids       int64   (batch, seq)
    past_keys       float32 (slots, batch, kv_heads, past, head_dim)      past = 0 for a prefill
    past_values     float32 (slots, batch, kv_heads, past, head_dim)
    [past_tokens    int64   (batch, past)]                                 only for models that read earlier tokens
 -> logits          float32 (batch, seq, vocab)                            every position
    present_keys    float32 (slots, batch, kv_heads, past + seq, head_dim)
    present_values  float32 (slots, batch, kv_heads, past + seq, head_dim)
    [present_tokens int64   (batch, past + seq)]

`slots` is the number of layer applications (the layer count, more with depth recurrence: a looped block has a
cache slot per application). Token i of `input_ids` sits at position past + i and sees every past key and the new
keys up to itself; all rows of a batch share one past length. Models with SmearGate, BigramHash or the document
mask read earlier token ids, so their graph also carries the token history (`present_tokens` → `past_tokens`).

The graph is traced through the model's one forward path, `GPT.forward`, with `ConcatKVCache` standing in for the
serving `KVCache`. The model chooses masks and previous tokens in Python from the cache length (`start > 0`,
`start == 0`, `length == 1`); the ONNX exporter reasons about dynamic sizes size-obliviously (never assuming a
dynamic size is 0 or 1), so the traced graph holds the general branches: an explicit causal mask
`key_position <= past + query_index`, exact for a prefill (past 0), a one-token decode step and a multi-token
continuation alike, and the previous token read at index past − 1 (see `ConcatKVCache.tokens` for past = 0).
`export.onnx_export.verify_against_torch` checks all three phases against the eager model with its `KVCache`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import onnx
import torch
from torch import Tensor, nn

from alrt_core.errors import UserError
from alrt_core.model.embeddings_extra import NO_TOKEN
from alrt_core.model.gpt import GPT

MIN_OPSET = 18  # the dynamo exporter's operator library starts at opset 18


class ConcatKVCache:
    """Duck-typed `KVCache` for tracing: the past arrives as tensors and each slot's past ⊕ new keys/values are kept.

    `GPT.forward` reads `length` as the position of the first new token, may call `write_tokens` and read `tokens`,
    calls `write` once per slot and `advance` once at the end, exactly as with the preallocated serving cache."""

    def __init__(self, past_keys: Tensor, past_values: Tensor, past_tokens: Tensor | None, max_len: int) -> None:
        self.past_keys, self.past_values, self.past_tokens = past_keys, past_values, past_tokens
        self.length = past_keys.shape[3]
        self.max_len = max_len
        self.present_keys: list[Tensor | None] = [None] * past_keys.shape[0]
        self.present_values: list[Tensor | None] = [None] * past_keys.shape[0]
        self.new_tokens: Tensor | None = None  # set by write_tokens: the model reads the token history
        self.rows = None  # every row, all at one past length (the graph has no per-row positions)
        self.per_row = False

    def row_starts(self) -> None:
        return None

    def check_room(self, new: int) -> None:
        """Nothing to check while tracing: the past length is symbolic; `OnnxCache` checks room at run time."""

    @property
    def remaining(self) -> int:
        return self.max_len - self.length

    def write(self, slot: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        all_keys = torch.cat((self.past_keys[slot], keys.to(self.past_keys.dtype)), dim=2)
        all_values = torch.cat((self.past_values[slot], values.to(self.past_values.dtype)), dim=2)
        self.present_keys[slot], self.present_values[slot] = all_keys, all_values
        return all_keys, all_values

    def write_tokens(self, input_ids: Tensor) -> None:
        self.new_tokens = input_ids

    @property
    def tokens(self) -> Tensor:
        """past ⊕ new token ids ⊕ one NO_TOKEN column. The model reads the previous token at `tokens[:, past - 1]`
        only when past > 0, but the traced graph keeps that read for every past length; at past = 0 the index is −1,
        which (Python and ONNX Gather alike) takes the last column: NO_TOKEN, exactly the "no previous token" the
        eager model uses at the start of the context. Reads of `tokens[:, :past + seq]` never reach that column."""
        if self.past_tokens is None or self.new_tokens is None:
            raise RuntimeError("the token history was read before write_tokens, or without past tokens")
        sentinel = torch.full_like(self.new_tokens[:, :1], NO_TOKEN)
        return torch.cat((self.past_tokens, self.new_tokens, sentinel), dim=1)

    def advance(self, count: int) -> None:
        self.length += count

    def presents(self) -> tuple[Tensor, ...]:
        if any(t is None for t in self.present_keys):
            raise RuntimeError("the model did not write every cache slot's keys and values")
        keys, values = torch.stack(self.present_keys), torch.stack(self.present_values)  # type: ignore[arg-type]
        if self.past_tokens is None:
            return keys, values
        if self.new_tokens is None:
            raise RuntimeError("a token history was given but the model never wrote its tokens")
        return keys, values, torch.cat((self.past_tokens, self.new_tokens), dim=1)


class DecoderGraph(nn.Module):
    """The exported function (see the module doc); `past_tokens` only for models that read the token history."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, past_keys: Tensor, past_values: Tensor,
                past_tokens: Tensor | None = None) -> tuple[Tensor, ...]:
        cache = ConcatKVCache(past_keys, past_values, past_tokens, self.model.config.seq_len)
        logits = self.model(input_ids, cache=cache)  # type: ignore[arg-type]  # duck-typed KVCache
        return (logits, *cache.presents())


def cache_slots(model: GPT) -> int:
    """Key/value slots per token: one per layer application (the serving cache's first dimension)."""
    return model.new_cache(batch_size=1, max_len=1).keys.shape[0]


@torch.no_grad()
def reads_token_history(model: GPT) -> bool:
    """Whether the forward pass asks its cache for token ids (SmearGate, BigramHash, document mask): probed by
    running it once, so a future switch that reads tokens is caught without listing the switches here."""
    slots, config = cache_slots(model), model.config
    empty = torch.zeros(slots, 1, config.num_kv_heads, 0, config.head_dim)
    probe = ConcatKVCache(empty, empty, torch.zeros(1, 0, dtype=torch.long), config.seq_len)
    model(torch.zeros(1, 1, dtype=torch.long), cache=probe)  # type: ignore[arg-type]
    return probe.new_tokens is not None


def io_names(with_tokens: bool) -> tuple[list[str], list[str]]:
    inputs, outputs = ["input_ids", "past_keys", "past_values"], ["logits", "present_keys", "present_values"]
    return (inputs + ["past_tokens"], outputs + ["present_tokens"]) if with_tokens else (inputs, outputs)


def build_onnx_model(model: GPT, opset: int | None = None) -> onnx.ModelProto:
    """Trace `model` (float32, CPU, eval) into an ONNX ModelProto with dynamic batch, sequence and past lengths."""
    if opset is not None and opset < MIN_OPSET:
        raise UserError(f"--opset {opset} is too old: the exporter supports opset {MIN_OPSET} and newer")
    config = model.config
    if config.seq_len < 4:
        raise UserError(f"context length {config.seq_len} is too short to export (needs at least 4 positions)")
    model = model.float().eval()
    with_tokens = reads_token_history(model)
    # Example sizes of at least 2 on every dynamic axis: the tracer would specialise an axis traced at 0 or 1.
    batch, seq, past = 2, 2, 2
    kv_shape = (cache_slots(model), batch, config.num_kv_heads, past, config.head_dim)
    example: tuple[Tensor, ...] = (torch.zeros(batch, seq, dtype=torch.long), torch.zeros(kv_shape), torch.zeros(kv_shape))
    batch_dim = torch.export.Dim("batch", min=1)
    seq_dim = torch.export.Dim("seq", min=1, max=config.seq_len)
    past_dim = torch.export.Dim("past", min=0, max=config.seq_len - 1)
    kv_axes = {1: batch_dim, 3: past_dim}
    dynamic_shapes = {"input_ids": {0: batch_dim, 1: seq_dim}, "past_keys": kv_axes, "past_values": kv_axes}
    if with_tokens:
        example += (torch.full((batch, past), 2, dtype=torch.long),)
        dynamic_shapes["past_tokens"] = {0: batch_dim, 1: past_dim}
    input_names, output_names = io_names(with_tokens)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            DecoderGraph(model), example, None, input_names=input_names, output_names=output_names,
            opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes, external_data=False, verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints, optional-dependency notes and internal deprecation warnings:
    none of them is about the user's model, and the export command reports what matters itself."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)

"""Running an exported `.onnx` decoder with onnxruntime: sessions, one forward step, greedy generation.

The graph (see `export/onnx_graph.py`) maps `input_ids` and the past (`past_keys`, `past_values`, and
`past_tokens` for models that read earlier tokens) to `logits` and the presents; a caller starts from an empty past
(past length 0) and feeds every `present_X` back as the next step's `past_X`. Everything needed to drive it — cache
slots, KV heads and head size from the input shapes, the context length from the metadata — is in the file.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from alrt_core.config import ModelConfig
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.errors import UserError
from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Session

Past = dict[str, np.ndarray]  # graph input name ("past_keys", ...) -> array


def create_session(model: Path | bytes, threads: int | None = None) -> ort.InferenceSession:
    """A CPU inference session for a file path or serialized model bytes; `threads` caps intra-op threads."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def session_metadata(session: ort.InferenceSession) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def empty_past(session: ort.InferenceSession, batch_size: int) -> Past:
    """Zero-length past keys and values (slots, batch, kv_heads, 0, head_dim), and tokens when the graph takes them."""
    inputs = {node.name: node for node in session.get_inputs()}
    slots, _, kv_heads, _, head_dim = inputs["past_keys"].shape
    shape = (int(slots), batch_size, int(kv_heads), 0, int(head_dim))
    past = {"past_keys": np.zeros(shape, dtype=np.float32), "past_values": np.zeros(shape, dtype=np.float32)}
    if "past_tokens" in inputs:
        past["past_tokens"] = np.zeros((batch_size, 0), dtype=np.int64)
    return past


def past_length(past: Past) -> int:
    return int(past["past_keys"].shape[3])


def run_step(session: ort.InferenceSession, input_ids: np.ndarray, past: Past) -> tuple[np.ndarray, Past]:
    """Logits (batch, seq, vocab) for `input_ids` (batch, seq) after `past`, and the past for the next step."""
    outputs = session.run(None, {"input_ids": np.asarray(input_ids, dtype=np.int64), **past})
    names = [node.name for node in session.get_outputs()]
    named = dict(zip(names, outputs, strict=True))
    return named["logits"], {"past_" + name.removeprefix("present_"): value
                             for name, value in named.items() if name.startswith("present_")}


def greedy_generate(
    session: ort.InferenceSession, prompt_ids: Sequence[int], max_new_tokens: int, *, eos_id: int | None = None
) -> list[int]:
    """Greedy tokens after `prompt_ids` (batch 1), decoded by `alrt generate`'s own `Session` over the graph:
    prefill once, then one token per step, presents fed back as past. It stops as `Session` does: after the
    tokenizer's EOS (`eos_id`, when given, must be that id), after `max_new_tokens`, or when the context is full."""
    decoder, tokenizer = decoder_from_session(session)
    if eos_id is not None and eos_id != tokenizer.eos_id:
        raise ValueError(f"eos_id {eos_id} is not the exported tokenizer's EOS ({tokenizer.eos_id})")
    if not 0 < len(prompt_ids) <= decoder.config.seq_len:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit the context of {decoder.config.seq_len}")
    result = Session(decoder, tokenizer).generate(list(prompt_ids), max_new_tokens=max_new_tokens,
                                                  sampling=SamplingConfig(temperature=0.0))
    return result.token_ids


class OnnxCache:
    """The past of an onnxruntime decoder as a `DecoderCache` (`alrt_core.inference.decoder`)."""

    def __init__(self, past: Past, max_len: int) -> None:
        self.past, self.max_len = past, max_len

    @property
    def length(self) -> int:
        return past_length(self.past)

    @property
    def remaining(self) -> int:
        return self.max_len - self.length

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (keys/values along their position axis, tokens along theirs)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.past = {name: value[:, :length] if name == "past_tokens" else value[:, :, :, :length]
                     for name, value in self.past.items()}


class OnnxDecoder:
    """An exported decoder run by onnxruntime as a `Decoder` (the calls `Session` makes on a `GPT`), so
    `alrt generate` and `alrt serve` decode with it unchanged: same sampling, stop strings, chat and context handling."""

    def __init__(self, session: ort.InferenceSession, config: ModelConfig) -> None:
        self.session, self.config = session, config
        self.device = torch.device("cpu")

    def eval(self) -> OnnxDecoder:
        return self

    def new_cache(self, batch_size: int, dtype: torch.dtype = torch.float32) -> OnnxCache:
        return OnnxCache(empty_past(self.session, batch_size), self.config.seq_len)  # the graph computes in fp32

    def __call__(self, input_ids: torch.Tensor, *, cache: OnnxCache, logits_from: int = 0) -> torch.Tensor:
        logits, cache.past = run_step(self.session, input_ids.cpu().numpy(), cache.past)
        return torch.from_numpy(logits[:, logits_from:])


def decoder_from_session(session: ort.InferenceSession, source: str = "<onnx>") -> tuple[OnnxDecoder, Tokenizer]:
    """The decoder and its tokenizer from a session on a graph written by `alrt export onnx` (its metadata)."""
    metadata = session_metadata(session)
    if metadata.get("producer") != "alrt" or "tokenizer_model_base64" not in metadata:
        raise UserError(f"{source} was not written by `alrt export onnx` (no ALRT metadata)")
    config = ModelConfig(**json.loads(metadata["model_config"]))
    tokenizer = Tokenizer.from_bytes(base64.b64decode(metadata["tokenizer_model_base64"]), source=source)
    return OnnxDecoder(session, config), tokenizer


def load_decoder(path: Path, threads: int | None = None) -> tuple[OnnxDecoder, Tokenizer]:
    """The decoder and its tokenizer from an `.onnx` file written by `alrt export onnx`."""
    return decoder_from_session(create_session(path, threads), str(path))

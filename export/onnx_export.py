"""`alrt export onnx`: the model as one self-contained ONNX file, checked against torch with onnxruntime.

The graph itself (inputs, outputs, how prefill and decode share it) is described in `export/onnx_graph.py`.
Weights are float32 (an artifact is dequantised by the loader); factorised layers stay two matmuls, `x·Vᵀ·Uᵀ`,
which is the point of low rank. The serialized bytes are verified before anything is written: a prefill, single-
token decode steps and a multi-token continuation, each compared with the eager model running its own `KVCache`
(max |logit difference|); over the tolerance nothing is written. The file is then written atomically, in one piece
(weights inside, not as external data).

The metadata (`metadata_props`) carries what a runtime user needs besides the graph: the context length (positions
past it have no RoPE table and fail), vocabulary size, BOS/EOS ids, the model config and ranks as JSON, and the
sentencepiece tokenizer (base64).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor

from alrt_core.data.tokenizer import Tokenizer
from alrt_core.errors import UserError
from alrt_core.fileio import atomic_write_bytes
from alrt_core.model.gpt import GPT
from export.loader import LoadedModel
from export.onnx_graph import build_onnx_model, cache_slots
from export.onnx_runtime import Past, create_session, empty_past, run_step

DEFAULT_TOLERANCE = 1e-3
MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit for one serialized message: the single-file format's ceiling
VERIFY_TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | str]


@dataclass
class LogitCheck:
    """Max |logit difference| between onnxruntime and the eager model with its KV cache, per phase."""

    prompt_tokens: int
    decode_steps: int
    continuation_tokens: int
    prefill_max_diff: float
    decode_max_diff: float
    continuation_max_diff: float
    tolerance: float

    @property
    def max_diff(self) -> float:
        return max(self.prefill_max_diff, self.decode_max_diff, self.continuation_max_diff)

    @property
    def passed(self) -> bool:
        return self.max_diff <= self.tolerance


@dataclass
class OnnxExportReport:
    source: str
    path: str
    file_bytes: int
    opset: int
    parameters: int
    export_seconds: float
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, str] = field(default_factory=dict)
    check: LogitCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metadata"] = {k: v for k, v in self.metadata.items() if k != "tokenizer_model_base64"}
        if self.check is not None:
            data["check"]["max_diff"], data["check"]["passed"] = self.check.max_diff, self.check.passed
        return data


def model_metadata(model: GPT, tokenizer: Tokenizer, source: str) -> dict[str, str]:
    config = model.config
    return {
        "producer": "alrt",
        "source": source,
        "context_length": str(config.seq_len),
        "vocab_size": str(config.vocab_size),
        "bos_id": str(tokenizer.bos_id),
        "eos_id": str(tokenizer.eos_id),  # -1: the tokenizer has no EOS
        "num_layers": str(config.num_layers),
        "cache_slots": str(cache_slots(model)),  # layer applications: more than num_layers with depth recurrence
        "num_kv_heads": str(config.num_kv_heads),
        "head_dim": str(config.head_dim),
        "model_config": json.dumps(vars(config), sort_keys=True),
        "layer_ranks": json.dumps(model.layer_ranks(), sort_keys=True),
        "io": "input_ids[batch,seq], past_keys/past_values[slots,batch,kv_heads,past,head_dim] "
              "(+ past_tokens[batch,past] when the model reads earlier tokens) -> logits[batch,seq,vocab], "
              "present_* (past+seq long): feed each present_X back as past_X; past = 0 for a prefill",
        "tokenizer_model_base64": base64.b64encode(tokenizer.model_bytes()).decode("ascii"),
    }


def tensor_specs(values: Any) -> list[TensorSpec]:
    specs = []
    for value in values:
        tensor_type = value.type.tensor_type
        dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor_type.shape.dim]
        specs.append(TensorSpec(value.name, onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name, dims))
    return specs


def onnx_model_bytes(
    model: GPT, tokenizer: Tokenizer, source_name: str, opset: int | None = None
) -> tuple[onnx.ModelProto, bytes]:
    """The exported graph with its metadata, and its serialization (the exact bytes that get checked and written)."""
    proto = build_onnx_model(model, opset)
    onnx.helper.set_model_props(proto, model_metadata(model, tokenizer, source_name))
    proto.doc_string = f"ALRT GPT decoder exported from {source_name}; see metadata 'io'."
    if proto.ByteSize() > MAX_PROTO_BYTES:
        raise UserError(f"{source_name}: {proto.ByteSize():,} bytes exceed the 2 GB limit of a single-file ONNX model")
    return proto, proto.SerializeToString()


def write_checked(
    data: bytes, out: Path, model: GPT, tokenizer: Tokenizer, *, check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> LogitCheck | None:
    """Verify the serialized model with onnxruntime (when `check`), then write it to `out` atomically.

    Logits further than `tolerance` from the eager model's are a UserError, and then no file is written."""
    result = None
    if check:
        result = verify_against_torch(data, model, tokenizer, tolerance=tolerance)
        if not result.passed:
            raise UserError(f"ONNX logits differ from torch by {result.max_diff:.3g} > tolerance {tolerance:g}; "
                            f"nothing written to {out}")
    atomic_write_bytes(out, data)
    return result


def export_onnx(
    loaded: LoadedModel, out: Path, *, opset: int | None = None, check: bool = True, tolerance: float = DEFAULT_TOLERANCE,
) -> OnnxExportReport:
    """Export a loaded checkpoint or artifact (float32), check it with onnxruntime and write one `.onnx` file."""
    model = loaded.model.float().eval()
    started = time.perf_counter()
    proto, data = onnx_model_bytes(model, loaded.tokenizer, loaded.source.name, opset)
    export_seconds = time.perf_counter() - started
    result = write_checked(data, out, model, loaded.tokenizer, check=check, tolerance=tolerance)
    opset_used = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    return OnnxExportReport(
        source=str(loaded.source), path=str(out), file_bytes=len(data), opset=opset_used,
        parameters=model.num_parameters(), export_seconds=export_seconds, inputs=tensor_specs(proto.graph.input),
        outputs=tensor_specs(proto.graph.output), metadata=model_metadata_of(proto), check=result,
    )


def model_metadata_of(proto: onnx.ModelProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in proto.metadata_props}


@torch.no_grad()
def verify_against_torch(
    onnx_model: Path | bytes, model: GPT, tokenizer: Tokenizer, *, prompt_ids: list[int] | None = None,
    decode_steps: int = 8, continuation_tokens: int = 4, tolerance: float = DEFAULT_TOLERANCE,
) -> LogitCheck:
    """Run the same tokens through onnxruntime and through `model` with a `KVCache` (batch 1) and compare logits.

    Phases: a prefill of the prompt (every position's logits), `decode_steps` single-token steps (the token is the
    eager model's greedy choice, fed to both), then one multi-token continuation of the cached context."""
    context = model.config.seq_len
    if prompt_ids is None:
        prompt_ids = [tokenizer.bos_id, *tokenizer.encode(VERIFY_TEXT)][: max(1, context // 2)]
    decode_steps = max(0, min(decode_steps, context - len(prompt_ids) - continuation_tokens))
    continuation_tokens = max(0, min(continuation_tokens, context - len(prompt_ids) - decode_steps))
    session = create_session(onnx_model)
    cache = model.new_cache(batch_size=1)

    def both(ids: list[int], past: Past) -> tuple[float, Tensor, Past]:
        reference = model(torch.tensor([ids]), cache=cache)
        logits, past = run_step(session, np.asarray([ids]), past)
        return float(np.abs(logits - reference.numpy()).max()), reference, past

    prefill_diff, reference, past = both(prompt_ids, empty_past(session, 1))
    decode_diff = 0.0
    for _ in range(decode_steps):
        token = int(torch.argmax(reference[0, -1]))
        diff, reference, past = both([token], past)
        decode_diff = max(decode_diff, diff)
    continuation_diff = 0.0
    if continuation_tokens:
        # A later chunk of known tokens after a cached context (as a chat turn is prefilled): reuse prompt tokens.
        chunk = (prompt_ids * continuation_tokens)[:continuation_tokens]
        continuation_diff, _, _ = both(chunk, past)
    return LogitCheck(len(prompt_ids), decode_steps, continuation_tokens, prefill_diff, decode_diff,
                      continuation_diff, tolerance)


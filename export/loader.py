"""The one loader: a training checkpoint or a `.alrt` artifact to a ready model, its tokenizer and config.

Evaluation, generation, serving and ONNX export all go through `load_model`, so they run exactly the weights the
artifact holds (dequantised) or the checkpoint's (its SWA mean or EMA when the run kept one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, overload

import torch

from alrt_core.config import RunConfig
from alrt_core.data.prepare import default_cache_dir, resolve_dataset
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.errors import UserError
from alrt_core.inference.decoder import Decoder
from alrt_core.model.gpt import GPT
from alrt_core.training.checkpoint import load_checkpoint
from alrt_core.training.swa import checkpoint_eval_weights
from export.artifact import is_artifact, read_artifact
from export.compress import decompress_frames
from export.payload import decode_payload

# What `model` holds: a `GPT` from an artifact or checkpoint; with `allow_onnx`, any `Decoder` (an `.onnx` file
# loads as an `export.onnx_runtime.OnnxDecoder`). Frozen, so a `LoadedModel[GPT]` is a `LoadedModel[Decoder]`.
ModelT = TypeVar("ModelT", bound=Decoder, covariant=True)


@dataclass(frozen=True)
class LoadedModel(Generic[ModelT]):
    model: ModelT
    tokenizer: Tokenizer
    config: RunConfig
    kind: str  # "artifact" | "checkpoint" | "onnx"
    source: Path
    manifest: dict[str, Any] | None = None


def load_artifact_weights(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], bytes]:
    """(manifest, dequantised float32 tensors by state-dict name, tokenizer bytes), every checksum verified."""
    manifest, payload = read_artifact(path)
    try:
        raw = decompress_frames(payload, manifest["compressor"], manifest.get("frames"))
        tensors, tokenizer = decode_payload(raw, manifest["tensors"])
    except (KeyError, ValueError, RuntimeError) as error:
        raise UserError(f"{path}: corrupt artifact payload ({type(error).__name__})") from None
    return manifest, tensors, tokenizer


def load_for_export(checkpoint_path: Path) -> tuple[dict[str, Any], RunConfig, GPT]:
    checkpoint = load_checkpoint(checkpoint_path)
    config = RunConfig.from_dict(checkpoint["config"])
    model = GPT(config.model, layer_ranks=checkpoint["ranks"])
    weights = checkpoint_eval_weights(checkpoint)  # SWA mean or EMA: what the run evaluated and saved as best
    model.load_state_dict({name: value.float() for name, value in weights.items()})
    return checkpoint, config, model.eval()


def run_tokenizer(checkpoint_path: Path, config: RunConfig) -> Tokenizer:
    beside = checkpoint_path.parent / "tokenizer.model"
    if beside.is_file():
        return Tokenizer.load(beside)
    info = resolve_dataset(config.data.path, config.data.tokenizer, default_cache_dir(), config.data.vocab_size, progress=False)
    return Tokenizer.load(info.tokenizer_path)


@overload
def load_model(
    path: Path, *, device: str | torch.device = ..., dtype: torch.dtype = ..., allow_onnx: Literal[False] = ...,
) -> LoadedModel[GPT]: ...


@overload
def load_model(
    path: Path, *, device: str | torch.device = ..., dtype: torch.dtype = ..., allow_onnx: bool,
) -> LoadedModel[Decoder]: ...


def load_model(
    path: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, allow_onnx: bool = False,
) -> LoadedModel[Decoder]:
    """An artifact or checkpoint as a `GPT` on `device`; with `allow_onnx`, an `.onnx` export as an onnxruntime
    `OnnxDecoder` (decoding only: a `Decoder` for `Session`, not training or scoring)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such model file: {path}")
    if path.suffix == ".onnx":
        return _load_onnx(path, device, allow_onnx)
    if is_artifact(path):
        manifest, tensors, tokenizer_bytes = load_artifact_weights(path)
        config = RunConfig.from_dict(manifest["config"])
        model = GPT(config.model, layer_ranks=manifest["ranks"])
        expected = model.state_dict()
        missing = [name for name in expected if name not in tensors and expected[name].is_floating_point()]
        if missing:
            raise UserError(f"{path}: artifact lacks tensors {missing[:3]} for its own config")
        model.load_state_dict({name: tensors[name].to(expected[name].dtype) for name in expected})
        tokenizer, kind = Tokenizer.from_bytes(tokenizer_bytes, source=str(path)), "artifact"
    else:
        _, config, model = load_for_export(path)
        tokenizer, kind, manifest = run_tokenizer(path, config), "checkpoint", None
    return LoadedModel(model.to(device=device, dtype=dtype).eval(), tokenizer, config, kind, path, manifest)


def _load_onnx(path: Path, device: str | torch.device, allowed: bool) -> LoadedModel[Decoder]:
    if not allowed:
        raise UserError(f"{path}: an ONNX export only decodes (alrt generate, alrt serve); use the .alrt artifact here")
    if torch.device(device).type != "cpu":
        raise UserError(f"{path}: ONNX exports run on onnxruntime's CPU provider; drop --device {device}")
    from export.onnx_runtime import load_decoder  # onnxruntime loads only when an .onnx file is used

    try:
        decoder, tokenizer = load_decoder(path)
    except UserError:
        raise
    except Exception as error:  # onnxruntime's own errors for a file it cannot read
        raise UserError(f"{path}: not a readable ONNX model ({str(error).splitlines()[0]})") from error
    config = RunConfig.from_dict({"model": vars(decoder.config)})
    return LoadedModel(decoder, tokenizer, config, "onnx", path)

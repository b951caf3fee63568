"""`alrt inspect model`: one report on a checkpoint or an artifact's weights, learned scalars and (with data) loss.

The statistics live in `alrt_core/reports/` (weights, scalars, data_loss); this module loads the model through the
one loader and, for artifacts, measures the quantisation error per tensor:

- hessian error: tr(ΔHΔᵀ) / tr(WHWᵀ), recorded by GPTQ at quantisation time (int tensors only);
- relative error: ‖Ŵ − W‖_F / ‖W‖_F of the dequantised tensor against the source checkpoint (the manifest's, when
  it is still there at the same step, or `--reference`); per layer also the error of the whole map, where a kept
  layer's ‖ÛV̂ − UV‖_F comes from the factors (‖[Û, −U]·[V̂; V]‖_F) without forming either product.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alrt_core.config import RunConfig
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.errors import UserError
from alrt_core.evaluation.report import validation_tokens
from alrt_core.json_values import json_safe
from alrt_core.model.gpt import GPT
from alrt_core.precision import resolve_autocast
from alrt_core.ranks.spectral import frobenius_sq
from alrt_core.reports.data_loss import data_report
from alrt_core.reports.ranks import find_checkpoint
from alrt_core.reports.scalars import ScalarEntry, scalar_report
from alrt_core.reports.weights import MatrixStats, kind_summary, model_matrix_stats, recurring_outliers
from alrt_core.training.checkpoint import load_checkpoint
from alrt_core.training.distributed import resolve_device
from alrt_core.training.swa import checkpoint_eval_weights
from export.artifact import is_artifact
from export.loader import load_for_export, load_model, run_tokenizer

DEFAULT_MAX_TOKENS = 65536


@dataclass
class ModelReport:
    source: str
    kind: str  # checkpoint | artifact
    step: int | None
    config: RunConfig
    params: int
    matrices: list[MatrixStats]
    scalars: list[ScalarEntry]
    quantization: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready values (non-finite numbers, e.g. an undefined standard error, become null)."""
        model = self.config.model
        return json_safe({
            "source": self.source, "kind": self.kind, "step": self.step, "params": self.params,
            "model": {"num_layers": model.num_layers, "model_dim": model.model_dim, "num_heads": model.num_heads,
                      "num_kv_heads": model.num_kv_heads, "vocab_size": model.vocab_size, "seq_len": model.seq_len,
                      "rank_policy": self.config.rank.policy},
            "matrices": [stat.to_dict() for stat in self.matrices],
            "by_kind": kind_summary(self.matrices),
            "recurring_outliers": recurring_outliers(self.matrices),
            "scalars": [entry.to_dict() for entry in self.scalars],
            "quantization": self.quantization,
            "data": self.data,
            "seconds": self.seconds,
        })


def _relative(error_sq: float, reference_sq: float) -> float | None:
    return (max(error_sq, 0.0) / reference_sq) ** 0.5 if reference_sq > 0 else None


def _dense(state: dict[str, Tensor], layer: str) -> Tensor:
    if f"{layer}.weight" in state:
        return state[f"{layer}.weight"].double()
    return state[f"{layer}.U"].double() @ state[f"{layer}.V"].double()


def layer_error(quantized: dict[str, Tensor], reference: dict[str, Tensor], layer: str) -> float | None:
    """‖Ŵ − W‖_F / ‖W‖_F of one projection's whole map (kept factors: from the factors alone)."""
    if f"{layer}.U" in quantized and f"{layer}.U" in reference:
        u_hat, v_hat = quantized[f"{layer}.U"].double(), quantized[f"{layer}.V"].double()
        u, v = reference[f"{layer}.U"].double(), reference[f"{layer}.V"].double()
        difference = frobenius_sq(torch.cat((u_hat, -u), dim=1), torch.cat((v_hat, v), dim=0))
        return _relative(float(difference), float(frobenius_sq(u, v)))
    w_hat, w = _dense(quantized, layer), _dense(reference, layer)
    return _relative(float((w_hat - w).square().sum()), float(w.square().sum()))


def _same_shape(state: dict[str, Tensor], name: str, shape: tuple[int, ...]) -> bool:
    """Whether the reference holds `name` with this shape (a folded `X.weight` as factors `X.U`, `X.V`)."""
    if name in state:
        return tuple(state[name].shape) == shape
    base = name.rsplit(".", 1)[0]
    if name.endswith(".weight") and f"{base}.U" in state:
        return (state[f"{base}.U"].shape[0], state[f"{base}.V"].shape[1]) == shape
    return False


def _reference_state(manifest: dict[str, Any], reference: Path | None, names: dict[str, tuple[int, ...]]) -> tuple[dict[str, Tensor] | None, str]:
    """(the source checkpoint's weights or None, a note saying which were used or why none)."""
    source = manifest.get("source", {})
    explicit = reference is not None
    path = reference if explicit else Path(source.get("checkpoint", ""))
    if not explicit and not path.is_file():
        return None, f"source checkpoint {path} not found (pass --reference CKPT for relative errors)"
    checkpoint = load_checkpoint(path)
    if not explicit and checkpoint.get("step") != source.get("step"):
        return None, f"{path} is now at step {checkpoint.get('step')}, the artifact came from step {source.get('step')}"
    # The weights `alrt quantize` starts from (as load_for_export): the SWA mean or EMA when the run kept one.
    state = {name: value.float() for name, value in checkpoint_eval_weights(checkpoint).items()}
    for name, shape in names.items():
        if not _same_shape(state, name, shape):
            message = f"{path} does not match the artifact ({name})"
            if explicit:
                raise UserError(message)
            return None, message
    note = f"vs {path} (step {checkpoint.get('step')})"
    if checkpoint.get("step") != source.get("step"):
        note += f"; the artifact came from step {source.get('step')}"
    return state, note


def quantization_report(manifest: dict[str, Any], model: GPT, reference: Path | None) -> dict[str, Any]:
    quantized = {name: value.detach() for name, value in model.state_dict().items()}
    schemes: dict[str, dict[str, Any]] = manifest["tensors"]
    ref_state, note = _reference_state(manifest, reference, {name: tuple(s["shape"]) for name, s in schemes.items()})
    tensors = []
    for name, scheme in schemes.items():
        relative = None
        if ref_state is not None and name in ref_state:
            ref = ref_state[name].double()
            relative = _relative(float((quantized[name].double() - ref).square().sum()), float(ref.square().sum()))
        elif ref_state is not None and name.endswith(".weight"):  # a folded layer: the reference holds U, V
            relative = layer_error(quantized, ref_state, name.rsplit(".", 1)[0])
        tensors.append({
            "name": name, "scheme": f"int{scheme['bits']}" if scheme["type"] == "int" else "fp16",
            "clip": scheme.get("clip"), "hessian_error": scheme.get("error"), "relative_error": relative,
        })
    layers = {}
    if ref_state is not None:
        layers = {layer: layer_error(quantized, ref_state, layer) for layer in model.projections()}
    return {"reference": note, "fold": manifest.get("fold", {}), "tensors": tensors, "layers": layers}


def resolve_data(data: str, tokenizer: Tokenizer, config: RunConfig, max_tokens: int) -> tuple[Any, str]:
    """`val` = the run's validation split (as `alrt eval` resolves it); else a shard folder or text/jsonl file."""
    tokens, description = validation_tokens(None if data == "val" else data, tokenizer, config)
    tokens = tokens[: max_tokens + 1]
    if tokens.shape[0] < 2:
        raise UserError(f"{description}: fewer than two tokens to score")
    return tokens, description


def inspect_model(path: Path, *, data: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                  reference: Path | None = None, device: str = "auto", position_bins: int = 16) -> ModelReport:
    started = time.perf_counter()
    path = Path(path)
    if path.is_dir():
        path = find_checkpoint(path)[0]
    if not path.exists():
        raise UserError(f"no such checkpoint or artifact: {path}")
    tokenizer: Tokenizer | None = None
    manifest = None
    if is_artifact(path):
        loaded = load_model(path)
        model, config, tokenizer, manifest = loaded.model, loaded.config, loaded.tokenizer, loaded.manifest
        kind, step = "artifact", (manifest or {}).get("source", {}).get("step")
    else:
        checkpoint, config, model = load_for_export(path)
        kind, step = "checkpoint", int(checkpoint["step"])
    if reference is not None and manifest is None:
        raise UserError("--reference compares an artifact with its source checkpoint; this is a checkpoint")
    seconds = {"load": time.perf_counter() - started}
    mark = time.perf_counter()
    with torch.no_grad():
        matrices = model_matrix_stats(model)
        scalars = scalar_report(model)
    seconds["weights"] = time.perf_counter() - mark
    report = ModelReport(str(path), kind, step, config, model.num_parameters(), matrices, scalars, seconds=seconds)
    if manifest is not None:
        mark = time.perf_counter()
        report.quantization = quantization_report(manifest, model, reference)
        errors = report.quantization["layers"]
        for stat in matrices:
            stat.quant_error = errors.get(stat.name)
        seconds["quantization"] = time.perf_counter() - mark
    if data is not None:
        mark = time.perf_counter()
        tokenizer = tokenizer or run_tokenizer(path, config)
        tokens, description = resolve_data(data, tokenizer, config, max_tokens)
        target = resolve_device(device)
        report.data = {"data": description, **data_report(
            model.to(target), tokenizer, tokens, config.model.seq_len, position_bins=position_bins, device=target,
            autocast=resolve_autocast("auto", target))}
        seconds["data"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    return report

"""`alrt quantize`: a training checkpoint to a `.alrt` artifact that fits a byte budget.

Pipeline: load (EMA weights when the run kept them) → fold or keep each factorised layer by packed bytes →
Hessians from the data's training part (export.calibration_data) → GPTQ with clip search per matrix (int6
projections, int8 embedding; a kept U fitted to its stored V̂) → fp16 small tensors → payload (packed or
byte-stored integers, whichever compresses smaller) → brotli/zstd/lzma → fit the budget (fewer bits on the least
sensitive tensors, then ±1 pruning; U refitted when its V̂ changes) → one atomic write, never over budget.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from alrt_core.errors import UserError
from alrt_core.model.gpt import GPT
from alrt_core.quant_grid import EMBED_BITS, MATRIX_BITS
from alrt_core.settings import check_choices, setting
from export.artifact import encode_artifact
from export.budget_fit import FitAction, MatrixPlan, fit_factor, fit_to_budget
from export.calibration import HEAD_INPUT, TokenWindows, collect_hessians
from export.calibration_data import CalibrationData, resolve_calibration_data
from export.compress import COMPRESSORS, Compressor, available_cpus, compress, compress_frames, frame_bounds
from export.gptq import DEFAULT_CLIP_CANDIDATES, InverseHessian, QuantizedMatrix, quantize_matrix
from export.loader import load_for_export, run_tokenizer
from export.payload import STORAGES, Storage, encode_payload, integer_bytes, scale_bytes
from export.size_prediction import SizePredictor, proxy_size

ARTIFACT_FORMAT = "alrt-artifact"
EMBED_CLIP_CANDIDATES: tuple[float | None, ...] = (8.0, 12.0, 16.0, 20.0, None)
MIN_MATRIX_BITS = 4
MIN_EMBED_BITS = 5
CALIBRATION_SEED_OFFSET = 7919  # calibration batches differ from the training order's first batches


@dataclass
class QuantizeOptions:
    """What `alrt quantize` does; a field's doc is its flag's help. An options object that exists is valid."""

    bits: int = setting(MATRIX_BITS, "Bits of the projection matrices (dense, folded, or factors).")
    embed_bits: int = setting(EMBED_BITS, "Bits of the token embedding (and an untied head).")
    method: Literal["gptq", "rtn"] = setting("gptq", "gptq (Hessian-aware) or rtn (round to nearest).")
    clip_search: bool = setting(True, "Try several SDClip multipliers per matrix (off: the default one).")
    calib_tokens: int = setting(32768, "Training tokens for the Hessians.")
    compressor: Literal["auto", Compressor] = setting(
        "auto", "Compressor of the payload (auto: the smallest of all).")
    storage: Literal["auto", Storage] = setting(
        "auto", "Integers packed (dense bits) or as bytes (one per value); auto: whichever compresses smaller.")
    budget: int | None = None  # bytes (artifact + counted code); None = no budget
    count_code: list[Path] = field(default_factory=list)
    bit_overrides: dict[str, int] = field(default_factory=dict)  # fnmatch pattern on tensor names -> bits
    # 0 (none) by default: at small budgets fp16 matrices cost real bytes for nothing — a 4x64 model's attention
    # matrices (4,096 values each) took 20% of its artifact in fp16, and int6 GPTQ gave the same bpb (2.2118 vs
    # 2.2124; an ALRT model's small factors likewise: 2.2940 both, 21% smaller).
    small_max: int = setting(0, "Matrices with at most this many values stay fp16 (0: none).")
    device: str = setting(
        "auto", "Where calibration and GPTQ run: cpu, cuda[:N], or auto (the GPU when there is one).")
    data: str | None = setting(
        None, "Calibration/eval data (default: the run's): a shard folder (train shards calibrate, val shards "
              "evaluate) or .txt/.jsonl text, tokenised with the model's tokenizer and split by document (5% held "
              "out for --eval).")

    def __post_init__(self) -> None:
        # Errors name the `alrt quantize` flags, through which these options are given.
        check_choices(self, lambda name: f"--{name.replace('_', '-')}")
        for bits in (self.bits, self.embed_bits, *self.bit_overrides.values()):
            if not 2 <= bits <= 8:
                raise UserError(f"bit widths must be between 2 and 8, got {bits}")


@dataclass
class TensorReport:
    name: str
    tensor_class: str
    params: int
    bits: int | None  # None: fp16
    clip: float | None
    raw_bytes: int
    bytes: float  # estimated share of the compressed payload
    error: float | None  # Hessian-weighted relative error


@dataclass
class QuantizeResult:
    data: bytes  # the whole artifact file
    manifest: dict[str, Any]
    tensors: list[TensorReport]
    fold: dict[str, str]
    actions: list[FitAction]
    code_bytes: int
    seconds: dict[str, float]
    quantized: dict[str, QuantizedMatrix]
    passthrough: dict[str, Tensor]
    calibration_data: CalibrationData  # also what `--eval` scores: the data calibration held out

    def dequantized_state(self) -> dict[str, Tensor]:
        """The weights the artifact holds, as the quantiser made them (for checks against the loader)."""
        state = {name: matrix.dequantize() for name, matrix in self.quantized.items()}
        state.update({name: tensor.detach().half().float() for name, tensor in self.passthrough.items()})
        return state

    @property
    def total_bytes(self) -> int:
        return len(self.data) + self.code_bytes


def tensor_class(name: str) -> str:
    if name.startswith("embed.") or name.startswith("head."):
        return "embed" if name.startswith("embed.") else "head"
    if name.startswith(("bigram.table.", "bigram.proj.", "value_embed.table.", "value_embed.proj.")):
        return "table"  # BigramHash / value-embedding tables and their projections: int8 like the embedding
    if ".attn." in name and name.rsplit(".", 2)[-2] in ("q", "k", "v", "o"):
        return "attn"
    if ".mlp." in name:
        return "mlp"
    return "small"


def fold_decision(rank: int, out_features: int, in_features: int, bits: int) -> str:
    """`keep` factors when r·(m+n) values plus m+r row scales pack smaller than m·n values plus m scales."""
    factors = rank * (out_features + in_features) * bits / 8 + (out_features + rank) * 2
    dense = out_features * in_features * bits / 8 + out_features * 2
    return "keep" if factors < dense else "fold"


def _bits_for(name: str, default: int, overrides: dict[str, int]) -> int:
    for pattern, bits in overrides.items():
        if fnmatch.fnmatch(name, pattern):
            return bits
    return default


def quantize_checkpoint(
    checkpoint_path: Path, options: QuantizeOptions, on_progress: Callable[[str, int, int], None] | None = None,
) -> QuantizeResult:
    """Build the artifact bytes (not written: the caller writes them only when they fit)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    checkpoint, config, model = load_for_export(checkpoint_path)
    tokenizer = run_tokenizer(checkpoint_path, config)
    if tokenizer.vocab_size != config.model.vocab_size:
        raise UserError(f"tokenizer vocabulary {tokenizer.vocab_size} does not match the model's {config.model.vocab_size}")
    code_bytes = sum(_code_size(path) for path in options.count_code)

    # Calibration: training data only, in the model's tokenizer; what it holds out is what `--eval` scores.
    calibration_data = resolve_calibration_data(options.data, tokenizer, config)
    seed = config.train.seed + CALIBRATION_SEED_OFFSET
    batches = TokenWindows(calibration_data.calibration_streams(options.calib_tokens, seed), config.model.seq_len,
                           seed, config.model.vocab_size)
    device = _device(options.device)
    hessian_sums, used = collect_hessians(
        model.to(device), batches, options.calib_tokens,
        on_progress=(lambda done, total: on_progress("calibrate", done, total)) if on_progress else None,
    )
    hessians = {name: (h / used).cpu() for name, h in hessian_sums.items()}
    timings["calibrate"] = time.perf_counter() - started

    plans, passthrough, fold, ranks = _plan(model.cpu(), hessians, options)
    clips_for = {"embed": EMBED_CLIP_CANDIDATES, "head": EMBED_CLIP_CANDIDATES, "table": EMBED_CLIP_CANDIDATES}

    # GPTQ's preparation of each Hessian, kept with it: a budget fit re-quantises matrices at fewer bits.
    inverses: dict[int, tuple[Tensor, InverseHessian]] = {}

    def inverse_of(hessian: Tensor) -> InverseHessian:
        held = inverses.get(id(hessian))
        if held is None or held[0] is not hessian:
            held = inverses[id(hessian)] = (hessian, InverseHessian.of(hessian.to(device)))
        return held[1]

    def requantize(plan: MatrixPlan, bits: int) -> QuantizedMatrix:
        clips = clips_for.get(plan.tensor_class, DEFAULT_CLIP_CANDIDATES)
        if not options.clip_search:
            clips = (clips[len(clips) // 2],)
        inverse = inverse_of(plan.hessian) if options.method == "gptq" else None
        matrix = quantize_matrix(plan.weight.to(device), plan.hessian.to(device), bits, clips=clips,
                                 method=options.method, inverse=inverse)
        return QuantizedMatrix(matrix.q.cpu(), matrix.scale.cpu(), matrix.bits, matrix.clip, matrix.error)

    quant_start = time.perf_counter()
    quantized: dict[str, QuantizedMatrix] = {}
    for index, (name, plan) in enumerate(plans.items()):
        matrix_start = time.perf_counter()
        if plan.factor_of is not None:
            # U sees V̂·x with V as stored (quantised, or fp16 when small; V comes first in `plans`): fitted to that
            # V̂, U absorbs what it can of V's error. Budget fitting refits it whenever it changes V̂.
            v_name = plan.factor_of
            fit_factor(plan, quantized[v_name].dequantize() if v_name in quantized else passthrough[v_name].half().float())
        quantized[name] = requantize(plan, plan.bits)
        phase = f"gptq_{plan.tensor_class}"
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - matrix_start
        if on_progress:
            on_progress("quantize", index + 1, len(plans))
    timings["quantize"] = time.perf_counter() - quant_start

    tokenizer_bytes = tokenizer.model_bytes()
    choice_start = time.perf_counter()
    layout = _choose_layout(quantized, passthrough, tokenizer_bytes, options, timings)
    storage, compressor, speed = layout.storage, layout.compressor, layout.bytes_per_second
    timings["compress_choice"] = time.perf_counter() - choice_start

    base_manifest = {
        "format": ARTIFACT_FORMAT,
        "config": config.to_dict(),
        "ranks": ranks,
        "fold": fold,
        "compressor": compressor,
        "storage": storage,
        "tokenizer_sha256": _sha256(tokenizer_bytes),
        "source": {"checkpoint": str(checkpoint_path), "step": checkpoint["step"],
                   "val_bpb": checkpoint.get("val", {}).get("bpb"), "ema": checkpoint.get("ema") is not None},
        "calibration": {"tokens": used, **calibration_data.record()},
        "quantizer": {"method": options.method, "bits": options.bits, "embed_bits": options.embed_bits,
                      "clip_search": options.clip_search},
    }
    compress_seconds: list[float] = []
    built: dict[tuple[tuple[str, int], ...], tuple[dict[str, QuantizedMatrix], bytes, dict[str, Any]]] = {}

    def build(current: dict[str, QuantizedMatrix]) -> tuple[bytes, dict[str, Any]]:
        """The artifact of `current`: one pass of the final compressor, or a result kept from the last three passes
        (a fit whose last measurements are over the budget returns a state measured before them)."""
        key = tuple((name, id(matrix)) for name, matrix in current.items())
        if key in built:
            return built[key][1], built[key][2]
        raw_payload, schemes, sizes = encode_payload(current, passthrough, tokenizer_bytes, storage)
        pass_start = time.perf_counter()
        payload, frames = _compress_with_progress(raw_payload, compressor, speed, on_progress, f"compress {compressor}")
        compress_seconds.append(time.perf_counter() - pass_start)
        # The byte map: each entry's estimated share of the compressed payload (its proxy bytes; they add up to
        # the payload's size).
        weights = {name: predictor.entry_proxy(name, matrix) for name, matrix in current.items()}
        weights.update({name: predictor.fixed[name] for name in sizes if name not in weights})
        total_weight = max(sum(weights.values()), 1)
        byte_map = {name: round(len(payload) * weights[name] / total_weight) for name in sizes}
        manifest = {**base_manifest, "tensors": schemes, "raw_bytes": sizes, "byte_map": byte_map, "frames": frames}
        data = encode_artifact(manifest, payload)
        for old in list(built)[:-2]:  # keep three builds (with their matrices, so their ids stay theirs)
            del built[old]
        built[key] = (current, data, manifest)
        return data, manifest

    def ratio_of(sample: dict[str, QuantizedMatrix], compressed: int) -> float:
        """The final compressor's bytes per proxy byte on a sample payload that compressed to `compressed`."""
        proxy = sum(proxy_size(integer_bytes(m, storage)) + proxy_size(scale_bytes(m)) for m in sample.values())
        return compressed / max(proxy + sum(predictor.fixed.values()), 1)

    def sample_ratio(current: dict[str, QuantizedMatrix]) -> float:
        sample = sample_rows(current, layout.step)
        return ratio_of(sample, _compressed_size(encode_payload(sample, passthrough, tokenizer_bytes, storage)[0], compressor))

    manifest_bytes = len(encode_artifact({**base_manifest, **_manifest_tables(quantized, passthrough, tokenizer_bytes, storage)}, b""))
    predictor = SizePredictor(passthrough, tokenizer_bytes, storage, lambda current: len(build(current)[0]) + code_bytes,
                              sample_ratio, manifest_bytes + code_bytes)
    # The first anchor is the layout sample's estimate, so a fit needs no pass of the compressor before its moves.
    predictor.refine(quantized, ratio=ratio_of(layout.sample, layout.compressed_bytes))

    actions: list[FitAction] = []
    fit_start = time.perf_counter()
    if options.budget is not None:
        quantized, actions, size, fits = fit_to_budget(plans, quantized, predictor, options.budget, requantize)
        if not fits:
            raise UserError(
                f"cannot fit {options.budget:,} bytes: the smallest artifact reachable is {size:,} bytes "
                f"(lower --bits/--embed-bits, use a smaller model or raise the budget)"
            )
    timings["fit"] = time.perf_counter() - fit_start
    data, manifest = build(quantized)
    if options.budget is not None and len(data) + code_bytes > options.budget:
        raise AssertionError("the fit returned an artifact it did not measure within the budget")
    timings["compress_passes"] = float(len(compress_seconds))
    timings["compress_seconds"] = sum(compress_seconds)
    timings["total"] = time.perf_counter() - started
    reports = _reports(quantized, passthrough, manifest)
    return QuantizeResult(data, manifest, reports, fold, actions, code_bytes, timings, quantized, passthrough,
                          calibration_data)


def _plan(
    model: GPT, hessians: dict[str, Tensor], options: QuantizeOptions,
) -> tuple[dict[str, MatrixPlan], dict[str, Tensor], dict[str, str], dict[str, int | None]]:
    """Which tensors are quantised (and how), which pass through as fp16, and each layer's fold decision."""
    plans: dict[str, MatrixPlan] = {}
    fold: dict[str, str] = {}
    ranks: dict[str, int | None] = {}
    handled: set[str] = set()
    for name, layer in model.projections().items():
        bits = _bits_for(f"{name}.*", options.bits, options.bit_overrides)
        h = hessians[name]
        if layer.is_factorized:
            assert layer.U is not None and layer.V is not None and layer.rank is not None
            fold[name] = fold_decision(layer.rank, layer.out_features, layer.in_features, bits)
            handled |= {f"{name}.U", f"{name}.V"}
            if fold[name] == "keep":
                ranks[name] = layer.rank
                u, v = layer.U.detach().float(), layer.V.detach().float()
                plans[f"{name}.V"] = MatrixPlan(f"{name}.V", v, h, bits, MIN_MATRIX_BITS, tensor_class(name + ".V"))
                # U's weight and Hessian are fitted once V is quantised (see quantize_checkpoint).
                plans[f"{name}.U"] = MatrixPlan(f"{name}.U", u, h, bits, MIN_MATRIX_BITS, tensor_class(name + ".U"),
                                                factor_of=f"{name}.V", product=u @ v, layer_hessian=h)
                continue
        else:
            fold[name] = "dense"
            handled.add(f"{name}.weight")
        ranks[name] = None
        plans[f"{name}.weight"] = MatrixPlan(
            f"{name}.weight", layer.effective_weight().detach().float(), h, bits, MIN_MATRIX_BITS, tensor_class(f"{name}.weight"),
        )
    head_h = hessians[HEAD_INPUT]
    for name in ("embed.weight", "head.weight"):
        module = model.head if name.startswith("head.") else model.embed
        if module is None:
            continue
        bits = _bits_for(name, options.embed_bits, options.bit_overrides)
        weight = module.weight.detach().float()
        # The head (or the tied embedding, which is the head) multiplies the final normed hidden state: its
        # Hessian. An untied embedding is only looked up, one row per token, so its error is per row; the head's
        # Hessian would weigh it by inputs it never sees (on a trained model: 0.064 relative lookup error at 6 bits
        # against rounding's 0.024). The identity makes GPTQ plain rounding and the clip search choose by squared
        # error, as for the tables below.
        h = head_h if name == "head.weight" or model.head is None else torch.eye(weight.shape[1])
        plans[name] = MatrixPlan(name, weight, h, bits, MIN_EMBED_BITS, tensor_class(name))
        handled.add(name)
    # BigramHash / value-embedding tables and their projections: embedding bits, per-row scales. No calibration
    # Hessian is collected for them, so the identity weighs every entry alike (GPTQ reduces to rounding).
    for name, weight in {**model.extra_tables(), **model.extra_matrices()}.items():
        bits = _bits_for(name, options.embed_bits, options.bit_overrides)
        identity = torch.eye(weight.shape[1])
        plans[name] = MatrixPlan(name, weight.detach().float(), identity, bits, MIN_EMBED_BITS, tensor_class(name))
        handled.add(name)
    passthrough = {
        name: value for name, value in model.state_dict().items() if name not in handled and value.is_floating_point()
    }
    small = [name for name, plan in plans.items() if plan.weight.numel() <= options.small_max]
    for name in small:  # tiny matrices are not worth their scales
        passthrough[name] = plans.pop(name).weight
    return plans, passthrough, fold, ranks


SAMPLE_BYTES = 4_000_000  # payloads up to this size choose their layout on themselves (the whole payload)


@dataclass(frozen=True)
class Layout:
    """How the payload is stored and compressed, chosen on `sample`, which compressed to `compressed_bytes`."""

    storage: Storage
    compressor: str
    bytes_per_second: float  # of one thread (a payload of several frames compresses on several)
    step: int  # the sample holds every step-th row of each matrix
    sample: dict[str, QuantizedMatrix]
    compressed_bytes: int


def sample_rows(quantized: dict[str, QuantizedMatrix], step: int) -> dict[str, QuantizedMatrix]:
    """Every `step`-th row of each matrix (all rows at step 1): a payload with every tensor's statistics."""
    return {name: QuantizedMatrix(m.q[::step], m.scale[::step], m.bits, m.clip, m.error) for name, m in quantized.items()}


def _choose_layout(
    quantized: dict[str, QuantizedMatrix], passthrough: dict[str, Tensor], tokenizer: bytes, options: QuantizeOptions,
    timings: dict[str, float],
) -> Layout:
    """The storage and the compressor, each chosen once, on a sample of the payload.

    The sample holds evenly spaced rows of every matrix (all of them when the payload is at most SAMPLE_BYTES), so
    it has every tensor's statistics at a fraction of the cost: the storage is the one zstd compresses smaller, and
    with `--compressor auto` the compressor is the one that compresses the sample smallest."""
    raw_total = sum(m.q.numel() + 2 * m.scale.numel() for m in quantized.values())
    step = max(1, math.ceil(raw_total / SAMPLE_BYTES))
    sample = sample_rows(quantized, step)
    storages = STORAGES if options.storage == "auto" else (options.storage,)
    encoded = {name: encode_payload(sample, passthrough, tokenizer, name)[0] for name in storages}
    storage = min(encoded, key=lambda name: len(compress(encoded[name], "zstd"))) if len(encoded) > 1 else storages[0]
    raw = encoded[storage]
    sizes: dict[str, int] = {}
    speeds: dict[str, float] = {}
    threads = _compress_threads(len(raw))
    for name in COMPRESSORS if options.compressor == "auto" else (options.compressor,):
        start = time.perf_counter()
        sizes[name] = _compressed_size(raw, name)
        seconds = time.perf_counter() - start
        speeds[name] = len(raw) / max(seconds, 1e-6) / threads
        timings[f"sample_{name}"] = seconds
    compressor = min(sizes, key=lambda name: sizes[name])
    return Layout(storage, compressor, speeds[compressor], step, sample, sizes[compressor])


def _manifest_tables(quantized: dict[str, QuantizedMatrix], passthrough: dict[str, Tensor], tokenizer: bytes,
                     storage: Storage) -> dict[str, Any]:
    """The manifest's per-tensor tables as `build` writes them (byte map values as wide as the real ones)."""
    raw, schemes, sizes = encode_payload(quantized, passthrough, tokenizer, storage)
    frames = [end - start for start, end in frame_bounds(len(raw))]  # raw lengths: no shorter than compressed ones
    return {"tensors": schemes, "raw_bytes": sizes, "byte_map": dict(sizes), "frames": frames}


def _compress_threads(length: int) -> int:
    """Threads a payload of `length` bytes compresses on: one per frame, at most one per CPU."""
    return min(len(frame_bounds(length)), available_cpus())


def _compressed_size(raw: bytes, compressor: str) -> int:
    """Bytes of `raw` compressed as the artifact's payload is (in frames)."""
    return len(compress_frames(raw, compressor)[0])


def _compress_with_progress(raw: bytes, compressor: str, bytes_per_second: float,
                            on_progress: Callable[[str, int, int], None] | None, phase: str) -> tuple[bytes, list[int]]:
    """`compress_frames(raw, compressor)`, reporting estimated progress (from the sample's speed) while it runs."""
    if on_progress is None or len(raw) < 2 * SAMPLE_BYTES:  # a few seconds at most: no bar
        return compress_frames(raw, compressor)
    result: list[tuple[bytes, list[int]]] = []
    worker = threading.Thread(target=lambda: result.append(compress_frames(raw, compressor)), daemon=True)
    rate = bytes_per_second * _compress_threads(len(raw))
    started = time.perf_counter()
    worker.start()
    while worker.is_alive():
        estimate = min(int((time.perf_counter() - started) * rate), len(raw) * 99 // 100)
        on_progress(phase, estimate, len(raw))
        worker.join(0.5)
    on_progress(phase, len(raw), len(raw))
    if not result:
        raise RuntimeError(f"{compressor} compression failed")
    return result[0]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"--device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available")
    return device


def _reports(quantized: dict[str, QuantizedMatrix], passthrough: dict[str, Tensor], manifest: dict[str, Any]) -> list[TensorReport]:
    reports = []
    for name, matrix in quantized.items():
        reports.append(TensorReport(name, tensor_class(name), matrix.q.numel(), matrix.bits, matrix.clip,
                                    manifest["raw_bytes"][name], manifest["byte_map"][name], matrix.error))
    for name, tensor in passthrough.items():
        reports.append(TensorReport(name, tensor_class(name), tensor.numel(), None, None,
                                    manifest["raw_bytes"][name], manifest["byte_map"][name], None))
    return reports


def _code_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if not path.is_file():
        raise UserError(f"--count-code: no such file or folder: {path}")
    return path.stat().st_size


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

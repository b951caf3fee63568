"""Configuration dataclasses, presets and `--set section.key=value` overrides.

The resolved config of a run is written to `config.json` and stored in every checkpoint, so that a model can be
rebuilt and a run resumed from the file alone.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from alrt_core.errors import UserError
from alrt_core.units import parse_byte_size


@dataclass
class ModelConfig:
    """Shape and switches of the one GPT class."""

    vocab_size: int | None = None  # None: taken from the tokenizer
    num_layers: int = 6
    model_dim: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2  # grouped-query attention when smaller than num_heads
    mlp_mult: float = 4.0  # hidden width = round(mlp_mult * model_dim)
    seq_len: int = 256  # trained context; RoPE tables and KV caches are sized from it
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    rope_dims: int | None = None  # partial RoPE: rotate only the first rope_dims of each head (None = all)
    logit_softcap: float = 30.0  # 0 disables the tanh softcap
    qk_norm: bool = True
    qk_gain_init: float = 1.5  # learnable per-head multiplier on normalised queries
    unet_skips: bool = True  # encoder half feeds the decoder half through learned per-channel skip weights
    resid_mix: bool = True  # each block mixes the residual stream with the initial embedding stream
    embed_init_std: float = 0.005

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.mlp_mult * self.model_dim))

    def validate(self) -> None:
        if self.model_dim % self.num_heads:
            raise UserError(f"model.model_dim={self.model_dim} is not divisible by model.num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise UserError(f"head dimension {self.head_dim} must be even for RoPE")
        if self.rope_dims is not None and (self.rope_dims % 2 or not 0 < self.rope_dims <= self.head_dim):
            raise UserError(f"model.rope_dims={self.rope_dims} must be even and in (0, {self.head_dim}]")
        for name in ("num_layers", "model_dim", "num_heads", "num_kv_heads", "seq_len"):
            if getattr(self, name) < 1:
                raise UserError(f"model.{name} must be positive")


@dataclass
class TrainConfig:
    """Optimisation, schedule, evaluation cadence and stopping."""

    seed: int = 1337
    batch_tokens: int = 16384  # global tokens per optimizer step (all ranks, all micro-steps)
    micro_batch_tokens: int | None = None  # tokens per rank per forward/backward; None = batch_tokens / world
    max_steps: int | None = None
    max_minutes: float | None = None  # wallclock budget for training (evaluation time excluded)
    warmup_steps: int = 10
    warmdown_frac: float = 0.4  # final fraction of the run with linearly decaying LR
    matrix_lr: float = 0.04  # Muon, for every projection matrix and factor
    embed_lr: float = 0.05  # AdamW, token embedding (tied head)
    head_lr: float = 0.008  # AdamW, untied head
    scalar_lr: float = 0.04  # AdamW, gains, mixes, skip weights
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 300
    muon_ns_steps: int = 5
    weight_decay: float = 0.0  # decoupled, on matrices
    factor_scaling: str = "none"  # Muon update scale of factors U, V: "none" | "aspect" (√(rows/cols), as dense)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 0.0  # 0 disables clipping of the global gradient norm
    ema_decay: float = 0.0  # 0 disables the EMA of weights; when on, eval and checkpoints use it
    eval_every: int = 200  # steps between validation passes (and last.pt)
    eval_tokens: int | None = None  # cap on validation tokens per periodic eval (None = all)
    log_every: int = 25
    early_stop_patience: int | None = None  # evals without improvement before stopping
    autocast: str = "auto"  # auto (bf16 on CUDA and on CPUs with AMX, else fp32) | bf16 | off
    compile: bool = False  # torch.compile the model

    def validate(self) -> None:
        if self.max_steps is None and self.max_minutes is None:
            raise UserError("set train.max_steps or train.max_minutes (--max-steps / --max-minutes)")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"train.max_steps={self.max_steps} must be positive")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UserError(f"train.max_minutes={self.max_minutes} must be positive")
        if self.factor_scaling not in ("aspect", "none"):
            raise UserError(f"train.factor_scaling={self.factor_scaling!r} must be 'aspect' or 'none'")
        if self.autocast not in ("auto", "bf16", "off"):
            raise UserError(f"train.autocast={self.autocast!r} must be 'auto', 'bf16' or 'off'")
        if not 0.0 <= self.warmdown_frac <= 1.0:
            raise UserError(f"train.warmdown_frac={self.warmdown_frac} must be in [0, 1]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"train.ema_decay={self.ema_decay} must be in [0, 1)")
        if self.eval_every < 1 or self.log_every < 1:
            raise UserError("train.eval_every and train.log_every must be positive")


RANK_POLICIES = ("dense", "fixed", "stable", "energy", "schedule")
ADAPTIVE_POLICIES = ("stable", "energy", "schedule")


@dataclass
class RankConfig:
    """How the Q/K/V/O and MLP projections are factorised and how their ranks move while training (ALRT)."""

    policy: str = "stable"  # dense | fixed | stable | energy | schedule
    init: int | None = None  # starting rank of every projection; None = its break-even rank m·n/(m+n)
    kinds: str | None = None  # per-kind starting (or fixed) ranks, e.g. "q=16,k=16,o=64"; kinds not named use init
    min_rank: int = 4
    warmup_steps: int = 100  # no rank change before this step
    update_every: int | None = None  # steps between updates; None = once per epoch, at most every 100 steps
    safety_factor: float = 4.0  # stable: target = ceil(safety_factor · EMA of the stable rank)
    change_threshold: float = 0.1  # relative |target - rank| / rank below which a layer keeps its rank
    max_step: float = 0.5  # largest change per update as a fraction of the current rank
    ema_decay: float = 0.5  # weight of the previous estimate in the EMA
    power_iterations: int = 4  # per update, warm-started from the previous update's vector
    energy: float = 0.9  # energy: smallest rank keeping this fraction of Σσ²
    final: int | None = None  # schedule: rank every projection reaches at the end of the anneal
    anneal_steps: int = 500  # schedule: steps from warmup_steps over which the rank goes from init to final
    pressure_alpha: float = 0.0  # schedule: weight of the ordered penalty α·Σᵢ wᵢ(‖U[:,i]‖² + ‖V[i,:]‖²)
    resize_method: str = "svd"  # svd (truncated SVD, sqrt split) | truncate (drop trailing components)
    on_resize: str = "project"  # project the optimizer state into the new basis | reset it to zero
    target_params: int | None = None  # budget-driven: total model parameters to track
    target_bytes: str | None = None  # budget-driven: artifact bytes (int6 matrices, int8 embedding), e.g. "16MB"
    log_full: bool = False  # log every layer's measurement at every update (rank_full events)

    @property
    def adaptive(self) -> bool:
        return self.policy in ADAPTIVE_POLICIES

    def validate(self) -> None:
        if self.policy not in RANK_POLICIES:
            raise UserError(f"rank.policy={self.policy!r} must be one of {', '.join(RANK_POLICIES)}")
        if self.resize_method not in ("svd", "truncate"):
            raise UserError(f"rank.resize_method={self.resize_method!r} must be 'svd' or 'truncate'")
        if self.on_resize not in ("project", "reset"):
            raise UserError(f"rank.on_resize={self.on_resize!r} must be 'project' or 'reset'")
        for name in ("init", "final", "update_every", "target_params"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"rank.{name}={value} must be a positive integer")
        if self.min_rank < 1 or self.power_iterations < 1 or self.anneal_steps < 1 or self.warmup_steps < 0:
            raise UserError("rank.min_rank, rank.power_iterations and rank.anneal_steps must be positive")
        if self.safety_factor <= 0 or self.max_step <= 0 or self.change_threshold < 0:
            raise UserError("rank.safety_factor and rank.max_step must be positive, rank.change_threshold >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"rank.ema_decay={self.ema_decay} must be in [0, 1)")
        if not 0.0 < self.energy <= 1.0:
            raise UserError(f"rank.energy={self.energy} must be in (0, 1]")
        if self.policy == "schedule" and self.final is None:
            raise UserError("rank.policy=schedule needs rank.final (--rank-final)")
        if self.target_params is not None and self.target_bytes is not None:
            raise UserError("give one budget: rank.target_params or rank.target_bytes, not both")
        if (self.target_params is not None or self.target_bytes is not None) and self.policy not in ("stable", "energy"):
            raise UserError(f"a rank budget (--target-params/--target-bytes) needs rank.policy stable or energy, not {self.policy}")
        if self.target_bytes is not None:
            parse_byte_size(self.target_bytes)


@dataclass
class DataConfig:
    """Where the tokens come from; `path=None` is the embedded Shakespeare corpus."""

    path: str | None = None
    tokenizer: str | None = None
    vocab_size: int = 1024  # for data prepared on the fly


@dataclass
class RunConfig:
    preset: str = "cpu"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rank: RankConfig = field(default_factory=RankConfig)

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()
        self.rank.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        config = cls(preset=raw.get("preset", "custom"))
        for section in SECTIONS:
            for key, value in raw.get(section, {}).items():
                _set_field(config, f"{section}.{key}", value, from_text=False)
        return config

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _preset_tiny() -> RunConfig:
    """Seconds on a laptop: for tests and smoke runs."""
    return RunConfig(
        preset="tiny",
        model=ModelConfig(num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_mult=2.0, seq_len=64),
        train=TrainConfig(batch_tokens=1024, max_steps=20, warmup_steps=2, eval_every=10, eval_tokens=8192, log_every=5),
        rank=RankConfig(warmup_steps=3, update_every=3),
    )


def _preset_cpu() -> RunConfig:
    """The 10-minute default on a 2-core CPU with bf16 matmuls."""
    return RunConfig(
        preset="cpu",
        # Tuned on the embedded corpus: in 10 CPU minutes (~3M tokens) a 4-layer model with small batches (many
        # steps) beats deeper models and larger batches (see the README's quality benchmark).
        model=ModelConfig(num_layers=4, model_dim=256, num_heads=4, num_kv_heads=2, mlp_mult=4.0, seq_len=256),
        # torch.compile fuses the element-wise work (norms, RoPE, activation, softcap): 1.6x the eager tokens/s
        # here for ~35 s of compilation, which the 10-minute budget includes.
        # A long warmdown (60% of the run: 1.988 vs 1.994 bpb) and decoupled weight decay on the matrices (the run
        # repeats the corpus ~2 times and overfits it: 1.984 in 12% fewer steps than without) both helped.
        train=TrainConfig(
            batch_tokens=4096, max_minutes=10.0, warmup_steps=10, warmdown_frac=0.6, weight_decay=0.05,
            eval_every=250, log_every=25, compile=True,
        ),
    )


def _preset_golf() -> RunConfig:
    """Parameter-golf scale (one 8xH100 node); builds and steps on CPU too, slowly."""
    return RunConfig(
        preset="golf",
        model=ModelConfig(num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=3.0, seq_len=2048),
        train=TrainConfig(
            batch_tokens=524288,
            micro_batch_tokens=65536,
            max_minutes=10.0,
            warmup_steps=20,
            warmdown_frac=0.3,
            eval_every=1000,
            log_every=100,
            compile=True,
        ),
        rank=RankConfig(policy="dense"),  # the records' dense stack; `--rank-policy stable` adds ALRT on top
    )


SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig, "rank": RankConfig}

PRESETS: dict[str, typing.Callable[[], RunConfig]] = {
    "tiny": _preset_tiny,
    "cpu": _preset_cpu,
    "golf": _preset_golf,
}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]()


def apply_overrides(config: RunConfig, assignments: list[str]) -> RunConfig:
    """Apply `section.key=value` strings; values are parsed by the field's declared type."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise UserError(f"--set expects section.key=value, got {assignment!r}")
        _set_field(config, key.strip(), value.strip(), from_text=True)
    return config


def set_value(config: RunConfig, key: str, value: Any) -> None:
    """Set one field from a Python value (used by CLI flags that mirror config fields)."""
    _set_field(config, key, value, from_text=False)


def known_keys() -> list[str]:
    return [
        f"{section}.{f.name}"
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
    ]


def _set_field(config: RunConfig, key: str, value: Any, *, from_text: bool) -> None:
    section_name, _, field_name = key.partition(".")
    section = getattr(config, section_name, None) if section_name in SECTIONS else None
    fields = {f.name: f for f in dataclasses.fields(section)} if section is not None else {}
    if field_name not in fields:
        raise UserError(f"unknown config key {key!r} (known keys: {', '.join(known_keys())})")
    hint = typing.get_type_hints(type(section))[field_name]
    setattr(section, field_name, _coerce(key, value, hint, from_text))


def _coerce(key: str, value: Any, hint: Any, from_text: bool) -> Any:
    """Convert `value` to the declared type `hint` (int, float, bool, str, or X | None)."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if type(None) in allowed and (value is None or (from_text and str(value).lower() in ("none", "null"))):
        return None
    for kind in (t for t in allowed if t is not type(None)):
        try:
            if kind is bool:
                if isinstance(value, bool):
                    return value
                text = str(value).lower()
                if text in ("1", "true", "yes", "on"):
                    return True
                if text in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                return int(str(value).replace("_", "")) if from_text else int(value)
            if kind is float:
                return float(value)
            if kind is str:
                return str(value)
        except (TypeError, ValueError):
            continue
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise UserError(f"bad value {value!r} for {key}: expected {names}")

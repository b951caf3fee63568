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
from alrt_core.model.layer_sets import parse_layer_set, parse_span
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
    # Architecture switches (all off by default; layer sets are specs like "all", "7-10", "3,5", "8-").
    xsa_layers: str = ""  # XSA: subtract from each head's output its component along the head's own normalised value
    attn_gate: str = "none"  # none | dense | sparse: per-head sigmoid gate on the attention output (before o)
    attn_gate_dims: int = 12  # sparse gate (and SmearGate) read only the first dims of their input
    depth_norm_scale: bool = False  # block i multiplies its normed attention/MLP inputs by 1/sqrt(i+1)
    skip_gates: bool = False  # U-Net skips: x = lerp(w*skip, x, sigmoid(gate)), gates learned per channel
    parallel_from: int | None = None  # blocks >= this run attention and MLP on the same input, outputs summed
    recur_layers: str = ""  # depth recurrence: a contiguous span of blocks (e.g. "3-5") run recur_loops times
    recur_loops: int = 2  # how many times the span runs in total while recurrence is on
    recur_start_frac: float = 0.0  # training progress at which recurrence switches on (always on in eval)
    bigram_hash_size: int = 0  # BigramHash: rows of a hashed (previous, current) token table added to the embedding
    bigram_dim: int = 128  # BigramHash table width, projected to model_dim
    bigram_scale_init: float = 0.05  # BigramHash learned output scale (the table starts at zero)
    smear_gate: bool = False  # SmearGate: embedding += lambda*sigmoid(W*e[:dims])*previous token's embedding
    value_embed_layers: str = ""  # blocks whose V gets a learned per-token value embedding added (one shared table)
    value_embed_dim: int = 128  # value-embedding table width, projected to the KV width
    value_residual: bool = False  # every block's V becomes l0*V_first + l1*V (V_first: first application's V)
    doc_mask: bool = False  # attention never crosses a BOS: each BOS token starts a new document
    bos_id: int = 1  # the token that starts a document (doc_mask, SmearGate and BigramHash boundaries)

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
        self.validate_switches()

    def validate_switches(self) -> None:
        for key in ("xsa_layers", "value_embed_layers"):
            parse_layer_set(getattr(self, key), self.num_layers, key=key)
        parse_span(self.recur_layers, self.num_layers)
        if self.attn_gate not in ("none", "dense", "sparse"):
            raise UserError(f"model.attn_gate={self.attn_gate!r} must be 'none', 'dense' or 'sparse'")
        if not 1 <= self.attn_gate_dims <= self.model_dim:
            raise UserError(f"model.attn_gate_dims={self.attn_gate_dims} must be in [1, {self.model_dim}]")
        if self.parallel_from is not None and not 0 <= self.parallel_from < self.num_layers:
            raise UserError(f"model.parallel_from={self.parallel_from} must be a block index in [0, {self.num_layers - 1}]")
        if self.recur_loops < 1:
            raise UserError(f"model.recur_loops={self.recur_loops} must be >= 1")
        if self.skip_gates and not self.unet_skips:
            raise UserError("model.skip_gates needs model.unet_skips (the gates act on the U-Net skips)")
        if not 0.0 <= self.recur_start_frac <= 1.0:
            raise UserError(f"model.recur_start_frac={self.recur_start_frac} must be in [0, 1]")
        if self.bigram_hash_size == 1 or self.bigram_hash_size < 0:
            raise UserError(f"model.bigram_hash_size={self.bigram_hash_size} must be 0 (off) or >= 2")
        if self.bigram_dim < 1 or self.value_embed_dim < 1:
            raise UserError("model.bigram_dim and model.value_embed_dim must be positive")
        if self.vocab_size is not None and not 0 <= self.bos_id < self.vocab_size:
            raise UserError(f"model.bos_id={self.bos_id} is outside the vocabulary of {self.vocab_size}")


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
    muon_row_normalize: bool = False  # MuonEq-R: scale each row of the Nesterov update to unit norm before Newton–Schulz
    weight_decay: float = 0.0  # decoupled, on matrices
    embed_weight_decay: float = 0.0  # decoupled (AdamW), on the token embedding
    scalar_weight_decay: float = 0.0  # decoupled (AdamW), on gains, mixes, gates and skip weights
    factor_scaling: str = "none"  # Muon update scale of factors U, V: "none" | "aspect" (√(rows/cols), as dense)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 0.0  # 0 disables clipping of the global gradient norm
    ema_decay: float = 0.0  # 0 disables the EMA of weights; when on, eval and checkpoints use it
    swa_start_frac: float = 0.0  # 0 disables SWA; from this progress on, eval and checkpoints use the mean of samples
    swa_every: int = 50  # steps between SWA samples (of the EMA weights when the EMA is on, else the live ones)
    qat_lr_threshold: float = 0.0  # 0 disables late QAT; once the LR multiplier falls below it, projections fake-quantise
    qat_bits: int = 6  # QAT integer grid: symmetric per-row scales, as `alrt quantize` packs matrices
    eval_every: int = 200  # steps between validation passes (and last.pt)
    eval_tokens: int | None = None  # cap on validation tokens per periodic eval (None = all)
    log_every: int = 25
    early_stop_patience: int | None = None  # evals without improvement before stopping
    autocast: str = "auto"  # auto (bf16 on CUDA; on a CPU whichever a timed matmul probe finds faster) | bf16 | off
    compile: bool = False  # torch.compile the model
    sample_every: int = 0  # steps between text samples printed and logged as `sample` events (0: none)
    sample_prompt: str = ""  # text the samples continue ("" starts from BOS alone)
    sample_tokens: int = 64  # new tokens per sample
    sample_temperature: float = 0.8  # 0 = greedy; samples use top-k 50 and a seed fixed per step

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
        if self.sample_every < 0 or self.sample_tokens < 1 or self.sample_temperature < 0:
            raise UserError("train.sample_every must be >= 0, train.sample_tokens >= 1, train.sample_temperature >= 0")
        for name in ("embed_weight_decay", "scalar_weight_decay"):
            if getattr(self, name) < 0:
                raise UserError(f"train.{name}={getattr(self, name)} must be >= 0")
        if not 0.0 <= self.swa_start_frac < 1.0:
            raise UserError(f"train.swa_start_frac={self.swa_start_frac} must be in [0, 1) (0 disables SWA)")
        if self.swa_every < 1:
            raise UserError(f"train.swa_every={self.swa_every} must be positive")
        if not 0.0 <= self.qat_lr_threshold <= 1.0:
            raise UserError(f"train.qat_lr_threshold={self.qat_lr_threshold} must be in [0, 1] (0 disables QAT)")
        if not 2 <= self.qat_bits <= 8:
            raise UserError(f"train.qat_bits={self.qat_bits} must be in [2, 8]")


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
    target_bytes: str | None = None  # budget-driven: artifact bytes, e.g. "16MB" (see bytes_model)
    # How target_bytes counts: "artifact" = the compressed file `alrt quantize` writes (measured per-value rates plus
    # manifest and tokenizer); "packed" = int6/int8 packing before compression (an upper bound of the payload).
    bytes_model: str = "artifact"
    # Dense warm start (Cuttlefish): train every projection dense for this fraction of the run, then factorise each
    # by truncated SVD at the rank its spectrum (and the budget) asks for, carrying Muon's momentum; 0 = factorised
    # from the first step.
    dense_warmup_frac: float = 0.0
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
        if self.bytes_model not in ("artifact", "packed"):
            raise UserError(f"rank.bytes_model={self.bytes_model!r} must be 'artifact' or 'packed'")
        if not 0.0 <= self.dense_warmup_frac < 1.0:
            raise UserError(f"rank.dense_warmup_frac={self.dense_warmup_frac} must be in [0, 1)")
        if self.dense_warmup_frac > 0 and self.policy not in ("stable", "energy"):
            raise UserError(f"rank.dense_warmup_frac needs rank.policy stable or energy, not {self.policy}")
        if self.dense_warmup_frac > 0 and (self.init is not None or self.kinds is not None):
            raise UserError("rank.dense_warmup_frac starts every projection dense and factorises it at the rank its "
                            "spectrum asks for: drop rank.init/rank.kinds (--rank-init/--rank-kinds)")


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
        """A saved config. A key it lacks was added later: it takes what that run actually did (LEGACY_VALUES) where
        the default has since changed, so a resumed run goes on as it started."""
        config = cls(preset=raw.get("preset", "custom"))
        for section in SECTIONS:
            saved = raw.get(section, {})
            for key, value in saved.items():
                _set_field(config, f"{section}.{key}", value, from_text=False)
            for key, value in LEGACY_VALUES.get(section, {}).items():
                if saved and key not in saved:
                    _set_field(config, f"{section}.{key}", value, from_text=False)
        return config

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _preset_tiny() -> RunConfig:
    """Seconds on a laptop: for tests and smoke runs."""
    return RunConfig(
        preset="tiny",
        model=ModelConfig(num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_mult=2.0, seq_len=64),
        # fp32 without a probe: smoke runs and tests that compare two processes need the same arithmetic in both.
        train=TrainConfig(batch_tokens=1024, max_steps=20, warmup_steps=2, eval_every=10, eval_tokens=8192, log_every=5,
                          autocast="off"),
        rank=RankConfig(warmup_steps=3, update_every=3),
    )


def _preset_cpu() -> RunConfig:
    """The 10-minute default on a 2-core CPU."""
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
        # Dense: at equal wallclock and equal artifact bytes a dense model beat ALRT at every budget measured
        # (benchmarks/pareto.py, 10 minutes, widths 64-256: +0.03 to +0.07 bpb for ALRT after quantization);
        # `--rank-policy stable` trains this shape with ALRT.
        rank=RankConfig(policy="dense"),
    )


def _golf_model() -> ModelConfig:
    """The 2026-04-09 parameter-golf record's architecture (val bpb 1.0810, 15.99 MB, 8xH100 in 588 s):
    11 x 512, 8 heads / 4 KV heads, MLP 4x, partial RoPE on 16 of 64 head dims, QK gain 5.25, XSA in every layer,
    1/sqrt(i+1) depth scaling of normed inputs, sigmoid-gated U-Net skips, GPT-J parallel residuals from block 7,
    and blocks 3-5 looped three times (17 layer applications) from 35% of the run on."""
    return ModelConfig(
        num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=4.0, seq_len=2048,
        rope_dims=16, qk_gain_init=5.25, logit_softcap=30.0, embed_init_std=0.005,
        xsa_layers="all", depth_norm_scale=True, skip_gates=True, parallel_from=7,
        recur_layers="3-5", recur_loops=3, recur_start_frac=0.35,
    )


def _golf_train() -> TrainConfig:
    """The record's optimisation (its defaults, run with QK_GAIN_INIT=5.25); no SWA and no QAT in that record."""
    return TrainConfig(
        # 786,432 tokens per step; 48 sequences of 2048 per GPU per forward: one micro-step on 8 GPUs, eight on one.
        batch_tokens=786_432,
        micro_batch_tokens=98_304,
        # 600 s minus the 12 s the record reserves for GPTQ calibration, which `alrt quantize` does afterwards.
        # (The record compiles before its clock starts; here compilation counts, as on the first step.)
        max_minutes=9.8,
        # The record's 20 "warmup" steps only warm the compiler and are then undone: its LR starts at full scale.
        warmup_steps=0,
        warmdown_frac=0.72,
        matrix_lr=0.022, embed_lr=0.03, head_lr=0.008, scalar_lr=0.02,
        muon_momentum=0.99, muon_momentum_warmup_start=0.92, muon_momentum_warmup_steps=1500, muon_ns_steps=5,
        muon_row_normalize=True,
        weight_decay=0.095, embed_weight_decay=0.085, scalar_weight_decay=0.02,
        adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8,
        grad_clip=0.3,
        ema_decay=0.9965,
        eval_every=1000,
        log_every=100,
        compile=True,
    )


def _preset_golf() -> RunConfig:
    """Parameter-golf scale (one 8xH100 node), the 2026-04-09 record's recipe; builds and steps on CPU, slowly."""
    return RunConfig(
        preset="golf",
        model=_golf_model(),
        train=_golf_train(),
        # The records use an 8192-piece SentencePiece BPE on the FineWeb shards; the vocabulary comes from the
        # tokenizer given (`--data` shards with `--tokenizer`), and raw text or the embedded corpus is prepared at 8192.
        data=DataConfig(vocab_size=8192),
        rank=RankConfig(policy="dense"),  # the record's dense stack; `golf-lowrank` adds ALRT on top
    )


def _preset_golf_lowrank() -> RunConfig:
    """`golf` with ALRT: every projection factorised and its rank adapted by the stable-rank controller.

    Q and K start at rank 64 (1/8 of their input width): PR #215 of parameter-golf found Q nearly rank-deficient,
    and on the `cpu` preset the controller settles Q and K lowest of all kinds (mean ranks 20 and 14 of 128). That
    frees ~3.1M parameters (8.5%) from the first step. The other kinds start at their break-even rank m·n/(m+n),
    where U·V costs what dense W costs, and move from there by their own spectra (a policy cannot keep some kinds
    dense). No byte target by default: the record's dense stack already fits 16 MB after GPTQ and brotli;
    `--target-bytes 16MB` makes the controller track the artifact's estimated compressed size (rank.bytes_model)."""
    config = _preset_golf()
    config.preset = "golf-lowrank"
    config.rank = RankConfig(policy="stable", kinds="qk=64")
    return config


# Settings whose default changed after runs were saved without them: the value those runs used.
LEGACY_VALUES: dict[str, dict[str, Any]] = {
    "rank": {"bytes_model": "packed"},  # before measured artifact rates, --target-bytes counted int6/int8 packing
}

SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig, "rank": RankConfig}

PRESETS: dict[str, typing.Callable[[], RunConfig]] = {
    "tiny": _preset_tiny,
    "cpu": _preset_cpu,
    "golf": _preset_golf,
    "golf-lowrank": _preset_golf_lowrank,
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

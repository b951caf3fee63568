"""Configuration dataclasses, presets and `--set section.key=value` overrides.

The resolved config of a run is written to `config.json` and stored in every checkpoint, so that a model can be
rebuilt and a run resumed from the file alone. A field's doc (alrt_core.settings) is the help of the `alrt train`
flag that sets it; a `Literal` field's choices are checked by `validate` and listed by that help.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from alrt_core.errors import UserError
from alrt_core.model.layer_sets import parse_layer_set, parse_span
from alrt_core.quant_grid import MATRIX_BITS
from alrt_core.settings import check_choices, setting
from alrt_core.units import parse_byte_size

AttnGate = Literal["none", "dense", "sparse"]
FactorScaling = Literal["aspect", "none"]
Autocast = Literal["auto", "bf16", "off"]
RankPolicy = Literal["dense", "fixed", "stable", "energy", "schedule"]
ResizeMethod = Literal["svd", "truncate"]
OnResize = Literal["project", "reset"]
BytesModel = Literal["artifact", "packed"]

ADAPTIVE_POLICIES: tuple[RankPolicy, ...] = ("stable", "energy", "schedule")
# Their targets come from each layer's spectrum, which a budget scales and a dense warm start factorises at.
SPECTRAL_POLICIES: tuple[RankPolicy, ...] = ("stable", "energy")


@dataclass
class ModelConfig:
    """Shape and switches of the one GPT class."""

    vocab_size: int | None = setting(None, "Vocabulary size (None: taken from the tokenizer).")
    num_layers: int = 6
    model_dim: int = 256
    num_heads: int = 4
    num_kv_heads: int = setting(2, "Key/value heads: grouped-query attention when fewer than num_heads.")
    mlp_mult: float = setting(4.0, "MLP hidden width = round(mlp_mult · model_dim).")
    seq_len: int = setting(256, "Trained context; RoPE tables and KV caches are sized from it.")
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    rope_dims: int | None = setting(None, "Partial RoPE: rotate only the first rope_dims of each head (None: all).")
    logit_softcap: float = setting(30.0, "Tanh softcap of the logits (0: off).")
    qk_norm: bool = True
    qk_gain_init: float = setting(1.5, "Start of the learnable per-head multiplier on normalised queries.")
    unet_skips: bool = setting(True, "The encoder half feeds the decoder half through learned per-channel skip weights.")
    resid_mix: bool = setting(True, "Each block mixes the residual stream with the initial embedding stream.")
    embed_init_std: float = 0.005
    # Architecture switches (all off by default; layer sets are specs like "all", "7-10", "3,5", "8-").
    xsa_layers: str = setting(
        "", "XSA: subtract from each head's output its component along the head's own normalised value.")
    attn_gate: AttnGate = setting("none", "Per-head sigmoid gate on the attention output (before o).")
    attn_gate_dims: int = setting(12, "The sparse gate (and SmearGate) read only the first dims of their input.")
    depth_norm_scale: bool = setting(False, "Block i multiplies its normed attention/MLP inputs by 1/sqrt(i+1).")
    skip_gates: bool = setting(False, "U-Net skips: x = lerp(w*skip, x, sigmoid(gate)), gates learned per channel.")
    parallel_from: int | None = setting(
        None, "Blocks from this index on run attention and MLP on the same input, outputs summed.")
    recur_layers: str = setting(
        "", "Depth recurrence: a contiguous span of blocks (e.g. '3-5') run recur_loops times.")
    recur_loops: int = setting(2, "How many times the span runs in total while recurrence is on.")
    recur_start_frac: float = setting(
        0.0, "Training progress at which recurrence switches on (always on in eval).")
    bigram_hash_size: int = setting(
        0, "BigramHash: rows of a hashed (previous, current) token table added to the embedding.")
    bigram_dim: int = setting(128, "BigramHash table width, projected to model_dim.")
    bigram_scale_init: float = setting(0.05, "BigramHash learned output scale (the table starts at zero).")
    smear_gate: bool = setting(
        False, "SmearGate: embedding += lambda*sigmoid(W*e[:dims])*previous token's embedding.")
    value_embed_layers: str = setting(
        "", "Blocks whose V gets a learned per-token value embedding added (one shared table).")
    value_embed_dim: int = setting(128, "Value-embedding table width, projected to the KV width.")
    value_residual: bool = setting(
        False, "Every block's V becomes l0*V_first + l1*V (V_first: the first application's V).")
    doc_mask: bool = setting(False, "Attention never crosses a BOS: each BOS token starts a new document.")
    bos_id: int = setting(1, "The token that starts a document (doc_mask, SmearGate and BigramHash boundaries).")

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
        check_choices(self, lambda name: f"model.{name}")
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

    seed: int = setting(1337, "Seed for initialisation and data order.")
    batch_tokens: int = setting(16384, "Global tokens per optimizer step (all ranks, all micro-steps).")
    micro_batch_tokens: int | None = setting(
        None, "Tokens per rank per forward/backward (None: batch_tokens / world size).")
    max_steps: int | None = setting(None, "Number of optimizer steps.")
    max_minutes: float | None = setting(None, "Wallclock budget for training, evaluation excluded.")
    warmup_steps: int = 10
    warmdown_frac: float = setting(0.4, "Final fraction of the run with a linearly decaying LR.")
    matrix_lr: float = setting(0.04, "Muon LR of every projection matrix and factor.")
    embed_lr: float = setting(0.05, "AdamW LR of the token embedding (tied head).")
    head_lr: float = setting(0.008, "AdamW LR of an untied head.")
    scalar_lr: float = setting(0.04, "AdamW LR of gains, mixes and skip weights.")
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 300
    muon_ns_steps: int = 5
    muon_row_normalize: bool = setting(
        False, "MuonEq-R: scale each row of the Nesterov update to unit norm before Newton–Schulz.")
    weight_decay: float = setting(0.0, "Decoupled weight decay on the matrices.")
    embed_weight_decay: float = setting(0.0, "Decoupled (AdamW) weight decay on the token embedding.")
    scalar_weight_decay: float = setting(
        0.0, "Decoupled (AdamW) weight decay on gains, mixes, gates and skip weights.")
    factor_scaling: FactorScaling = setting(
        "none", "Muon update scale of the factors U, V: none, or aspect (√(rows/cols), as for dense matrices).")
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = setting(0.0, "Clip of the global gradient norm (0: off).")
    ema_decay: float = setting(0.0, "Decay of the EMA of the weights (0: off); when on, eval and checkpoints use it.")
    swa_start_frac: float = setting(
        0.0, "SWA: from this progress on, eval and checkpoints use the mean of samples (0: off).")
    swa_every: int = setting(
        50, "Steps between SWA samples (of the EMA weights when the EMA is on, else of the live ones).")
    qat_lr_threshold: float = setting(
        0.0, "Late QAT: once the LR multiplier falls below this, projections fake-quantise (0: off).")
    qat_bits: int = setting(MATRIX_BITS, "QAT integer grid: symmetric per-row scales, as `alrt quantize` packs matrices.")
    eval_every: int = setting(200, "Steps between validation evals (each writes last.pt).")
    eval_tokens: int | None = setting(None, "Cap on validation tokens per periodic eval (None: all).")
    log_every: int = 25
    early_stop_patience: int | None = setting(None, "Stop after this many evals without improvement.")
    autocast: Autocast = setting(
        "auto", "bf16 autocast: auto (on CUDA; on a CPU when a timed matmul probe finds bf16 faster), bf16 or off.")
    compile: bool = setting(False, "torch.compile the model.")
    sample_every: int = setting(0, "Print and log (as `sample` events) a short text sample every N steps (0: none).")
    sample_prompt: str = setting("", "Text the samples continue (default: from BOS alone).")
    sample_tokens: int = setting(64, "New tokens per sample.")
    sample_temperature: float = setting(
        0.8, "Temperature of the samples (0: greedy); they use top-k 50 and a seed fixed per step.")

    def validate(self) -> None:
        if self.max_steps is None and self.max_minutes is None:
            raise UserError("set train.max_steps or train.max_minutes (--max-steps / --max-minutes)")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"train.max_steps={self.max_steps} must be positive")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UserError(f"train.max_minutes={self.max_minutes} must be positive")
        check_choices(self, lambda name: f"train.{name}")
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


@dataclass
class RankConfig:
    """How the Q/K/V/O and MLP projections are factorised and how their ranks move while training (ALRT)."""

    policy: RankPolicy = setting(
        "stable", "How ranks move (stable: ALRT's stable-rank controller; energy: keep rank.energy of Σσ²; schedule: "
                  "rank.init → rank.final; dense: no factors).")
    init: int | None = setting(
        None, "Starting rank of every projection (default: its break-even rank m·n/(m+n)).")
    kinds: str | None = setting(
        None, "Per-kind starting (or fixed) ranks, e.g. 'q=16,k=16,mlp=128'; kinds not named start at rank.init.")
    min_rank: int = 4
    warmup_steps: int = setting(100, "No rank change before this step.")
    update_every: int | None = setting(
        None, "Steps between rank updates (default: once per epoch, at most every 100 steps).")
    safety_factor: float = setting(4.0, "stable: target rank = ceil(safety_factor · EMA of the stable rank).")
    change_threshold: float = setting(0.1, "Relative |target - rank| / rank under which a layer keeps its rank.")
    max_step: float = setting(0.5, "Largest rank change per update, as a fraction of the current rank.")
    ema_decay: float = setting(
        0.5, "EMA weight of the previous stable-rank estimate (the rank controller's; the weight EMA is "
             "train.ema_decay).")
    power_iterations: int = setting(4, "Power iterations per update, warm-started from the previous update's vector.")
    energy: float = setting(0.9, "energy: the smallest rank keeping this fraction of Σσ².")
    final: int | None = setting(None, "schedule: the rank every projection reaches at the end of the anneal.")
    anneal_steps: int = setting(
        500, "schedule: steps from rank.warmup_steps over which the rank goes from rank.init to rank.final.")
    pressure_alpha: float = setting(
        0.0, "schedule: weight of the ordered penalty α·Σᵢ wᵢ(‖U[:,i]‖² + ‖V[i,:]‖²).")
    resize_method: ResizeMethod = setting(
        "svd", "How a rank shrinks: svd (truncated SVD, sqrt split) or truncate (drop the trailing components).")
    on_resize: OnResize = setting(
        "project", "The optimizer state at a resize: project it into the new factors, or reset it to zero.")
    target_params: int | None = setting(None, "Budget-driven ranks: total model parameters to track.")
    target_bytes: str | None = setting(
        None, "Budget-driven ranks: artifact bytes to track, e.g. 16MB (decimal) or 16MiB, counted as "
              "rank.bytes_model says.")
    bytes_model: BytesModel = setting(
        "artifact", "How rank.target_bytes counts: artifact = the compressed file `alrt quantize` writes (measured "
                    "per-value rates plus manifest and tokenizer); packed = int6/int8 packing before compression "
                    "(an upper bound of the payload).")
    dense_warmup_frac: float = setting(
        0.0, "Dense warm start (Cuttlefish): train every projection dense for this fraction of the run, then "
             "factorise each by truncated SVD at the rank its spectrum (and the budget) asks for, carrying Muon's "
             "momentum (0: factorised from the first step).")
    log_full: bool = setting(False, "Log every layer's measurement at every update (rank_full events).")

    @property
    def adaptive(self) -> bool:
        return self.policy in ADAPTIVE_POLICIES

    def validate(self) -> None:
        check_choices(self, lambda name: f"rank.{name}")
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
        if (self.target_params is not None or self.target_bytes is not None) and self.policy not in SPECTRAL_POLICIES:
            raise UserError(f"a rank budget (--target-params/--target-bytes) needs rank.policy "
                            f"{' or '.join(SPECTRAL_POLICIES)}, not {self.policy}")
        if self.target_bytes is not None:
            parse_byte_size(self.target_bytes)
        if not 0.0 <= self.dense_warmup_frac < 1.0:
            raise UserError(f"rank.dense_warmup_frac={self.dense_warmup_frac} must be in [0, 1)")
        if self.dense_warmup_frac > 0 and self.policy not in SPECTRAL_POLICIES:
            raise UserError(f"rank.dense_warmup_frac needs rank.policy {' or '.join(SPECTRAL_POLICIES)}, "
                            f"not {self.policy}")
        if self.dense_warmup_frac > 0 and (self.init is not None or self.kinds is not None):
            raise UserError("rank.dense_warmup_frac starts every projection dense and factorises it at the rank its "
                            "spectrum asks for: drop rank.init/rank.kinds (--rank-init/--rank-kinds)")


@dataclass
class DataConfig:
    """Where the tokens come from."""

    path: str | None = setting(
        None, "Shard folder (ours or parameter-golf FineWeb), or a .txt/.jsonl file or folder; default: embedded "
              "Shakespeare.")
    tokenizer: str | None = setting(None, "sentencepiece .model for a shard folder without tokenizer.model.")
    vocab_size: int = setting(1024, "Vocabulary size when raw text is prepared on the fly.")


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
    """Convert `value` to the declared type `hint` (int, float, bool, str, a Literal of strings, or X | None).
    A Literal's choices are checked by the section's `validate`, like every other constraint."""
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
            if kind is str or typing.get_origin(kind) is Literal:
                return str(value)
        except (TypeError, ValueError):
            continue
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise UserError(f"bad value {value!r} for {key}: expected {names}")

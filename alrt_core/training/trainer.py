"""The training loop: single process or torchrun (DDP), with exact resume.

Everything the run does is reported as events (see `events.py`); rendering them is the CLI's job. Only rank 0
writes files. The loop checks a stop flag after every optimizer step, so Ctrl-C (once) or a listener calling
`request_stop` ends the run at a step boundary with a consistent `last.pt`.
"""

from __future__ import annotations

import math
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from alrt_core.config import RunConfig
from alrt_core.data.prepare import DatasetInfo, default_cache_dir, resolve_dataset
from alrt_core.data.shards import read_shard
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.errors import UserError
from alrt_core.evaluation.validation import EvalResult, evaluate
from alrt_core.fileio import atomic_write_text
from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import Session
from alrt_core.model.artifact_estimate import estimate_artifact
from alrt_core.model.gpt import GPT, uniform_baseline_nats
from alrt_core.precision import PrecisionProbe, autocast_context, matmul_shapes, probe_precision
from alrt_core.ranks.manager import RankManager, RankUpdate
from alrt_core.ranks.plan import initial_layer_ranks
from alrt_core.training.batches import TrainBatches
from alrt_core.training.checkpoint import load_checkpoint, save_checkpoint
from alrt_core.training.compile import compile_model, mark_ranks_dynamic, probe, warn_fallback
from alrt_core.training.distributed import DistributedContext, init_distributed
from alrt_core.training.ema import WeightEMA, restore_weights
from alrt_core.training.events import EventLog, Listener
from alrt_core.training.optimizers import (
    build_optimizers,
    set_lr_scale,
    set_muon_momentum,
)
from alrt_core.training.run_config import resolve_resume_config
from alrt_core.training.schedule import Schedule, muon_momentum
from alrt_core.training.state import TrainState
from alrt_core.training.swa import WeightSWA

CHINCHILLA_TOKENS_PER_PARAM = 20.0
# On CPU, micro-batches beyond this many tokens per process are split into more micro-steps: the golf preset's
# 98,304-token micro-batch needs ~130 GB of activations, and matmuls on a CPU gain nothing from rows beyond this.
CPU_MICRO_BATCH_TOKENS = 16_384


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    stop_reason: str
    best_val_bpb: float
    final: EvalResult


@dataclass(frozen=True)
class RunSetup:
    """What the run is built with besides its resumable state: data, batch layout, precision, LR schedule."""

    dataset: DatasetInfo
    tokenizer: Tokenizer
    val_tokens: np.ndarray
    micro_sequences: int  # sequences per micro-batch and process
    micro_batch_capped: bool  # CPU_MICRO_BATCH_TOKENS split the configured micro-batch into more micro-steps
    accumulation: int  # micro-batches per optimizer step
    precision_probe: PrecisionProbe | None
    autocast: bool  # bf16 autocast, else fp32
    schedule: Schedule


@dataclass(frozen=True)
class StepTotals:
    """One optimizer step's sums over its micro-batches and processes, and its gradient figures."""

    nll_sum: float
    token_count: float
    byte_count: float
    grad_norm: float | None
    rank_penalty: torch.Tensor | None


def rank_summary(model: GPT) -> dict[str, Any]:
    ranks = [rank for rank in model.layer_ranks().values() if rank is not None]
    if not ranks:
        return {"rank_min": None, "rank_mean": None, "rank_max": None}
    return {"rank_min": min(ranks), "rank_mean": round(sum(ranks) / len(ranks), 2), "rank_max": max(ranks)}


def cpu_micro_sequences(sequences: int, seq_len: int) -> int:
    """The largest divisor of a micro-batch's `sequences` within CPU_MICRO_BATCH_TOKENS (at least one sequence).

    The same global batch then runs as more micro-steps: the gradient is the same sum over the same rows."""
    limit = max(1, CPU_MICRO_BATCH_TOKENS // seq_len)
    return max(d for d in range(1, min(sequences, limit) + 1) if sequences % d == 0)


class Trainer:
    # Set by `run` before anything reads them. `compiled_model` is the model as compiled (or the model itself) and
    # `forward_model` that one as training calls it (in DDP under torchrun); both are rewrapped after every resize.
    setup: RunSetup
    state: TrainState
    events: EventLog
    compiled_model: torch.nn.Module
    forward_model: torch.nn.Module

    def __init__(
        self,
        config: RunConfig | None,
        run_dir: Path | None = None,
        *,
        resume: Path | None = None,
        resume_changes: dict[str, Any] | None = None,
        listeners: list[Listener] | None = None,
        device: str = "auto",
        progress: bool = True,
    ) -> None:
        """`config` is the requested run. With `resume`, the checkpoint's config is used; `config` (if given) and
        `resume_changes` (single fields such as a longer train.max_steps) may only change resumable fields."""
        self.checkpoint = load_checkpoint(resume) if resume is not None else None
        if self.checkpoint is not None:
            saved = RunConfig.from_dict(self.checkpoint["config"])
            config = resolve_resume_config(saved, config, resume_changes)
            run_dir = resume.parent
        if config is None or run_dir is None:
            raise ValueError("a config and a run directory are required unless resuming")
        self.config, self.run_dir, self.resume_path = config, run_dir, resume
        self.listeners = list(listeners or [])
        self.progress = progress
        self.distributed: DistributedContext = init_distributed(device)
        self._stop_reason: str | None = None
        # Training seconds since the last rank update, for the cost of its measurement (restarts at 0 on resume).
        self._train_seconds_since_rank_update = 0.0

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the loop to stop after the current optimizer step (thread- and signal-safe)."""
        self._stop_reason = self._stop_reason or reason

    # -- setup -----------------------------------------------------------------------------------------------

    def _prepare_data(self) -> DatasetInfo:
        data = self.config.data
        # Rank 0 prepares (tokenizer training, sharding) while the others wait, then everyone reads the cache.
        if self.distributed.is_main:
            info = resolve_dataset(data.path, data.tokenizer, default_cache_dir(), data.vocab_size, progress=self.progress)
        self.distributed.barrier()
        if not self.distributed.is_main:
            info = resolve_dataset(data.path, data.tokenizer, default_cache_dir(), data.vocab_size, progress=False)
        return info

    def _build(self) -> tuple[RunSetup, TrainState]:
        """The run's parts, fresh from its config; the model's initial weights are the first draws after the seed."""
        config, distributed, train = self.config, self.distributed, self.config.train
        dataset = self._prepare_data()
        tokenizer = self._load_tokenizer(dataset)
        micro_sequences, micro_batch_capped, accumulation = self._micro_batches()
        torch.manual_seed(train.seed)
        ranks = self.checkpoint["ranks"] if self.checkpoint else initial_layer_ranks(config.model, config.rank)
        model = GPT(config.model, layer_ranks=ranks).to(distributed.device)
        precision_probe, autocast = self._choose_precision(model, micro_sequences)
        optimizers = build_optimizers(model, train, bf16=autocast)
        ema = WeightEMA(model, train.ema_decay) if train.ema_decay > 0 else None
        swa = WeightSWA(train.swa_start_frac, train.swa_every) if train.swa_start_frac > 0 else None
        batches = TrainBatches(dataset.train_files, config.model.seq_len, train.seed, distributed.rank,
                               distributed.world_size)
        rank_manager = RankManager(
            config.rank, model, seed=train.seed,
            steps_per_epoch=max(1, batches.tokens_per_epoch // train.batch_tokens),
            tokenizer_bytes=len(tokenizer.model_bytes()),
        )
        setup = RunSetup(
            dataset=dataset, tokenizer=tokenizer,
            val_tokens=np.concatenate([np.asarray(read_shard(path)) for path in dataset.val_files]),
            micro_sequences=micro_sequences, micro_batch_capped=micro_batch_capped, accumulation=accumulation,
            precision_probe=precision_probe, autocast=autocast,
            schedule=Schedule(
                train.warmup_steps, train.warmdown_frac, train.max_steps,
                train.max_minutes * 60.0 if train.max_minutes is not None else None,
            ),
        )
        state = TrainState(model=model, optimizers=optimizers, ema=ema, swa=swa, rank_manager=rank_manager,
                           batches=batches)
        return setup, state

    def _load_tokenizer(self, dataset: DatasetInfo) -> Tokenizer:
        """The dataset's tokenizer; it sets `model.vocab_size` when unset, and the config is validated with it."""
        config = self.config
        tokenizer = Tokenizer.load(dataset.tokenizer_path)
        if config.model.vocab_size is None:
            config.model.vocab_size = tokenizer.vocab_size
        elif config.model.vocab_size != tokenizer.vocab_size:
            raise UserError(
                f"model.vocab_size={config.model.vocab_size} does not match the tokenizer's vocabulary "
                f"of {tokenizer.vocab_size} ({dataset.tokenizer_path})"
            )
        config.validate()
        return tokenizer

    def _micro_batches(self) -> tuple[int, bool, int]:
        """(sequences per micro-batch and process, whether CPU_MICRO_BATCH_TOKENS capped them, micro-batches per
        optimizer step) for train.batch_tokens over this world."""
        train, seq_len, world_size = self.config.train, self.config.model.seq_len, self.distributed.world_size
        micro_tokens = train.micro_batch_tokens or train.batch_tokens // world_size
        if micro_tokens < seq_len or micro_tokens % seq_len or train.batch_tokens % (micro_tokens * world_size):
            raise UserError(
                f"train.batch_tokens={train.batch_tokens} must split into {world_size} rank(s) x micro-batches of "
                f"whole sequences (micro_batch_tokens={micro_tokens}, seq_len={seq_len})"
            )
        sequences = micro_tokens // seq_len
        if self.distributed.device.type == "cpu":
            sequences = cpu_micro_sequences(sequences, seq_len)
        return sequences, sequences * seq_len < micro_tokens, train.batch_tokens // (sequences * seq_len * world_size)

    def _choose_precision(self, model: GPT, micro_sequences: int) -> tuple[PrecisionProbe | None, bool]:
        """(the probe, bf16 autocast or not). `train.autocast=auto` times fp32 and bf16 matmuls at this model's
        shapes (`precision.py`); a resumed run keeps the choice its checkpoint recorded, so it trains exactly as
        the uninterrupted run would; under torchrun every process takes rank 0's measurement."""
        mode = self.config.train.autocast
        if mode != "auto":
            return None, mode == "bf16"
        saved = (self.checkpoint or {}).get("precision")
        if saved is not None:
            probe = PrecisionProbe.from_dict(saved) if "device" in saved else None
            return probe, bool(saved["bf16"])
        shapes = []
        for layer in model.projections().values():
            shapes += [(layer.in_features, layer.rank), (layer.rank, layer.out_features)] if layer.is_factorized \
                else [(layer.in_features, layer.out_features)]
        rows = micro_sequences * self.config.model.seq_len
        probe = probe_precision(self.distributed.device.type, matmul_shapes(shapes, rows))
        (bf16,) = self.distributed.broadcast(torch.tensor([float(probe.bf16)], dtype=torch.float64)).tolist()
        return probe, bool(bf16)

    def _compile(self) -> None:
        """torch.compile the model and run one micro-batch forward and backward through it, wrapped as training
        wraps it (its compile time counts as training time, as it would in the first step). If either fails on any
        process, every process trains eagerly and the run says so once (stderr and a `compile_fallback` event).
        Called after `run_start`, so the run's header is on screen while the compiler works."""
        started = time.perf_counter()
        state, setup, distributed = self.state, self.setup, self.distributed
        dynamic = state.rank_manager.active or self.config.rank.dense_warmup_frac > 0
        if dynamic:
            mark_ranks_dynamic(state.model)
        compiled, reason = compile_model(state.model, dynamic_parameter_shapes=dynamic)
        if reason is None:
            self.compiled_model = compiled
            self._wrap_for_training()
            # Trace the layer schedule the first step runs (depth recurrence may switch on later in the run).
            if setup.schedule.progress(state.step, state.elapsed) < self.config.model.recur_start_frac:
                state.model.set_recurrence(False)
            position = state.batches.state_dict()
            inputs, targets = state.batches.next_batch(setup.micro_sequences)
            state.batches.load_state_dict(position)

            def step() -> None:
                # no_sync: no gradient all-reduce, so a process whose compiler fails cannot leave the others waiting.
                with self.forward_model.no_sync() if distributed.enabled else nullcontext():
                    with autocast_context(distributed.device, setup.autocast):
                        loss = self.forward_model(inputs.to(distributed.device), targets.to(distributed.device))
                    loss.backward()

            reason = probe(step)
            state.model.zero_grad(set_to_none=True)
        (failures,) = self._synced([1.0 if reason else 0.0])
        if failures:
            self.compiled_model = state.model
            self._wrap_for_training()
            if distributed.is_main:
                warn_fallback(reason or "failed on another process")
            self.events.emit("compile_fallback", state.step, reason=reason or "failed on another process")
        state.elapsed += time.perf_counter() - started

    def _wrap_for_training(self) -> None:
        """DDP around the (compiled) model; rebuilt after a resize, since DDP's buckets hold the old parameters."""
        distributed = self.distributed
        self.forward_model = self.compiled_model
        if distributed.enabled:
            device_ids = [distributed.device.index] if distributed.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.compiled_model, device_ids=device_ids, broadcast_buffers=False)

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from `checkpoint`: its training state, with late QAT back on if it was on."""
        self.state.load_state_dict(checkpoint)
        if self.state.qat_active:
            self._set_fake_quant(self.config.train.qat_bits)

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.json", self.config.to_json() + "\n")
        target = self.run_dir / "tokenizer.model"
        if not target.exists() or target.read_bytes() != self.setup.tokenizer.model_bytes():
            shutil.copyfile(self.setup.dataset.tokenizer_path, target)

    # -- loop ------------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self.setup, self.state = self._build()
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        self.compiled_model = self.state.model
        self._wrap_for_training()
        log_path = self.run_dir / "train.jsonl" if self.distributed.is_main else None
        if self.distributed.is_main:
            self._write_run_files()
        self.events = EventLog(log_path, self.listeners)
        previous_handler = self._install_interrupt_handler()
        try:
            self._emit_start()
            if self.config.train.compile:
                self._compile()
            result = self._loop()
        finally:
            self.events.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        return result

    def _install_interrupt_handler(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_interrupt(signum: int, frame: Any) -> None:
            if self._stop_reason == "interrupted":
                raise KeyboardInterrupt  # second Ctrl-C: stop now
            self.request_stop("interrupted")

        return signal.signal(signal.SIGINT, on_interrupt)

    def _emit_start(self) -> None:
        config, setup, state = self.config, self.setup, self.state
        model, batches, rank_manager = state.model, state.batches, state.rank_manager
        params, vocab = model.num_parameters(), config.model.vocab_size or 0
        val_bytes = int(setup.tokenizer.count_bytes(setup.val_tokens[:-1], setup.val_tokens[1:]))
        val_scored = setup.val_tokens.shape[0] - 1
        planned = config.train.max_steps * config.train.batch_tokens if config.train.max_steps else None
        artifact = estimate_artifact(model)
        self.events.emit(
            "run_start", state.step,
            run_dir=str(self.run_dir), resumed_from=str(self.resume_path) if self.resume_path else None,
            preset=config.preset, device=str(self.distributed.device), world_size=self.distributed.world_size,
            precision="bf16 autocast" if setup.autocast else "fp32", compiled=config.train.compile,
            precision_mode=config.train.autocast,
            precision_probe=setup.precision_probe.to_dict() if setup.precision_probe is not None else None,
            params=params, vocab_size=vocab, layer_ranks=model.layer_ranks(),
            artifact_packed_bytes=artifact.packed_bytes, artifact_estimate_bytes=artifact.compressed_bytes,
            train_tokens=batches.total_tokens, tokens_per_epoch=batches.tokens_per_epoch,
            val_tokens=val_scored, val_bytes=val_bytes, planned_tokens=planned,
            tokens_per_param_epoch=batches.tokens_per_epoch / params,
            chinchilla_fraction_epoch=batches.tokens_per_epoch / params / CHINCHILLA_TOKENS_PER_PARAM,
            chinchilla_fraction_planned=planned / params / CHINCHILLA_TOKENS_PER_PARAM if planned else None,
            uniform_loss=uniform_baseline_nats(vocab),
            uniform_bpb=uniform_baseline_nats(vocab) / math.log(2) * val_scored / val_bytes,
            batch_tokens=config.train.batch_tokens, micro_batch_sequences=setup.micro_sequences,
            accumulation=setup.accumulation, micro_batch_capped=setup.micro_batch_capped,
            max_steps=config.train.max_steps, max_minutes=config.train.max_minutes,
            log_every=config.train.log_every, eval_every=config.train.eval_every,
            rank_policy=config.rank.policy,
            rank_update_every=rank_manager.update_every if rank_manager.active else None,
            rank_budget_unit=rank_manager.budget_unit, rank_budget=rank_manager.budget,
            projection_params=rank_manager.costs.projection_params(model.layer_ranks()),
            dense_projection_params=rank_manager.costs.projection_params(dict.fromkeys(model.layer_ranks())),
            **rank_summary(model),
        )

    def _synced(self, values: list[float]) -> list[float]:
        """Sum `values` over ranks in one collective (rank 0 alone contributes the clock)."""
        if not self.distributed.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.distributed.device)
        return self.distributed.all_reduce(tensor).tolist()

    def _loop(self) -> TrainResult:
        """Optimizer steps, each in its phases, until every process agrees to stop; then the final evaluation."""
        final: EvalResult | None = None  # the evaluation after the latest step, when that step had one
        while (reason := self._agreed_stop_reason()) is None:
            self._factorize_if_due()  # before the step's timing: its seconds are counted by the update's record
            started = time.perf_counter()
            lr_scale = self._apply_schedules()
            totals = self._optimizer_step()
            self._after_step(totals, lr_scale, started)
            final = self._evaluate_if_due()
        return self._finish(reason, final)

    def _agreed_stop_reason(self) -> str | None:
        """Why the run stops before its next step, the same on every process: rank 0's clock, anyone's request."""
        state = self.state
        local_stop = 1.0 if self._stop_reason else 0.0
        clock = state.elapsed if self.distributed.is_main else 0.0
        stop_votes, state.elapsed = self._synced([local_stop, clock])
        # Any process's request stops them all; one that had no request of its own reports "interrupted".
        requested = (self._stop_reason or "interrupted") if stop_votes else None
        return self.setup.schedule.finished(state.step, state.elapsed) or requested

    def _factorize_if_due(self) -> None:
        """At rank.dense_warmup_frac of the run, end the dense warm start: every projection becomes U·V."""
        state = self.state
        progress = self.setup.schedule.progress(state.step, state.elapsed)
        if not state.rank_manager.factorization_due(state.model, state.step, progress):
            return
        update = state.rank_manager.factorize(state.step, state.model, state.optimizers, self._followers(),
                                              self.distributed)
        self.events.emit("factorize", state.step, ranks=update.ranks, params_before=update.params_before,
                         params_after=update.params_after, budget_estimate=update.budget_estimate)
        self._record_rank_update(update)  # its time counts as training time

    def _apply_schedules(self) -> float:
        """Set this step's learning rates, depth recurrence, late QAT and Muon momentum; returns the LR scale."""
        train, model_config, state, schedule = self.config.train, self.config.model, self.state, self.setup.schedule
        scale = schedule.lr_scale(state.step, state.elapsed)
        set_lr_scale(state.optimizers, scale)
        # Depth recurrence loops from model.recur_start_frac of the run on (set every step, so resume too).
        if state.model.set_recurrence(schedule.progress(state.step, state.elapsed) >= model_config.recur_start_frac):
            self.events.emit("recurrence_on", state.step, layers=model_config.recur_layers, loops=model_config.recur_loops)
        if not state.qat_active and scale < train.qat_lr_threshold and state.step >= train.warmup_steps:
            self._set_fake_quant(train.qat_bits)
            self.events.emit("qat_on", state.step, lr_scale=scale, bits=train.qat_bits)
        set_muon_momentum(state.optimizers, muon_momentum(
            state.step, train.muon_momentum_warmup_start, train.muon_momentum, train.muon_momentum_warmup_steps))
        return scale

    def _optimizer_step(self) -> StepTotals:
        """The micro-batches' forward and backward passes, the rank penalty, clipping, then every optimizer's step."""
        train, setup, state, distributed = self.config.train, self.setup, self.state, self.distributed
        nll_sum, byte_count, token_count = 0.0, 0, 0
        for micro in range(setup.accumulation):
            inputs, targets = state.batches.next_batch(setup.micro_sequences)
            sync = micro == setup.accumulation - 1 or not distributed.enabled
            with nullcontext() if sync else self.forward_model.no_sync():
                with autocast_context(distributed.device, setup.autocast):
                    loss = self.forward_model(inputs.to(distributed.device), targets.to(distributed.device))
                (loss / setup.accumulation).backward()
            nll_sum += float(loss.detach()) * targets.numel()
            token_count += targets.numel()
            byte_count += int(setup.tokenizer.count_bytes(inputs.numpy(), targets.numpy()))
        penalty = state.rank_manager.penalty(state.model)
        if penalty is not None:
            # Identical on every process, so its gradient is added locally after DDP's all-reduce.
            penalty.backward()
        grad_norm = None
        if train.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(state.model.parameters(), train.grad_clip))
        nll_total, tokens, bytes_total = self._synced([nll_sum, float(token_count), float(byte_count)])
        if not math.isfinite(nll_total):
            self._fail_non_finite(nll_total)
        for optimizer in state.optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return StepTotals(nll_total, tokens, bytes_total, grad_norm, penalty)

    def _after_step(self, totals: StepTotals, lr_scale: float, started: float) -> None:
        """Count the step (its time includes the EMA's update), then SWA, its log line, rank updates, samples."""
        train, state = self.config.train, self.state
        if state.ema is not None:
            state.ema.update(state.model)
        seconds = time.perf_counter() - started
        state.step += 1
        state.elapsed += seconds
        state.tokens_seen += int(totals.token_count)
        progress = self.setup.schedule.progress(state.step, state.elapsed)
        if state.swa is not None and state.swa.is_due(state.step, progress):
            state.swa.add(state.ema.shadow if state.ema is not None else state.model.state_dict())
        self._emit_train_step(totals, lr_scale, seconds)
        self._train_seconds_since_rank_update += seconds
        if state.rank_manager.is_due(state.step):
            self._update_ranks()
        if train.sample_every and state.step % train.sample_every == 0 and self.distributed.is_main:
            self._sample()

    def _emit_train_step(self, totals: StepTotals, lr_scale: float, seconds: float) -> None:
        """The step's log line: loss and bpb over all processes, LR, speed, progress, gradient figures, ranks."""
        state = self.state
        self.events.emit(
            "train_step", state.step,
            loss=totals.nll_sum / totals.token_count, bpb=totals.nll_sum / (math.log(2) * totals.byte_count),
            lr_scale=lr_scale, lr=lr_scale * self.config.train.matrix_lr, tok_s=totals.token_count / seconds,
            tokens=state.tokens_seen, elapsed=round(state.elapsed, 3), epoch=round(state.batches.epoch, 4),
            grad_norm=totals.grad_norm,
            rank_penalty=float(totals.rank_penalty) if totals.rank_penalty is not None else None,
            **rank_summary(state.model),
        )

    def _evaluate_if_due(self) -> EvalResult | None:
        """Every train.eval_every steps: evaluate and save, and stop early after train.early_stop_patience
        evaluations without improvement. Returns the evaluation, or None when none was due."""
        train, state = self.config.train, self.state
        if state.step % train.eval_every:
            return None
        result = self._evaluate_and_save(max_tokens=train.eval_tokens)
        if self._stop_reason is None and train.early_stop_patience is not None \
                and state.evals_without_improvement >= train.early_stop_patience:
            self.request_stop("early_stop")
        return result

    def _finish(self, reason: str, final: EvalResult | None) -> TrainResult:
        """The run's end: an evaluation of its last step unless it had one, the whole split, and `run_end`."""
        train, state = self.config.train, self.state
        if final is None:
            final = self._evaluate_and_save(max_tokens=train.eval_tokens)
        if train.eval_tokens is not None and final.tokens < self.setup.val_tokens.shape[0] - 1:
            # The whole split, reported as the run's final figure; it is not compared with the capped evals
            # (other tokens), so it never decides best.pt.
            final = self._evaluate_and_save(max_tokens=None, compared=False)
        self.events.emit(
            "run_end", state.step, reason=reason, best_val_bpb=state.best_val_bpb, final_val_bpb=final.bpb,
            final_val_loss=final.loss, tokens=state.tokens_seen, elapsed=round(state.elapsed, 3),
        )
        return TrainResult(self.run_dir, state.step, reason, state.best_val_bpb, final)

    def _update_ranks(self) -> None:
        """One controller update; its time counts against the wallclock budget like any training work."""
        state = self.state
        self._record_rank_update(state.rank_manager.update(state.step, state.model, state.optimizers,
                                                           self._followers(), self.distributed))

    def _followers(self) -> list[WeightEMA | WeightSWA]:
        """The weight copies that must follow every rank change (the EMA, the SWA mean), where the run keeps them."""
        return [copy for copy in (self.state.ema, self.state.swa) if copy is not None]

    def _record_rank_update(self, update: RankUpdate) -> None:
        """Rewrap after a change, count the time, log the update and each changed layer."""
        state = self.state
        if update.changed:
            if self.compiled_model is not state.model:
                mark_ranks_dynamic(state.model)  # the new factors: no recompilation for their new ranks
            self._wrap_for_training()
        seconds = update.measure_seconds + update.resize_seconds
        state.elapsed += seconds
        if self.distributed.is_main and self.config.rank.log_full:
            self.events.emit("rank_full", state.step, layers=[layer.to_dict() for layer in update.layers])
        for layer in update.changed:
            self.events.emit("rank_change", state.step, pressure=round(update.pressure, 4), **layer.to_dict())
        self.events.emit(
            "rank_update", state.step, policy=self.config.rank.policy, changed=len(update.changed),
            layers=len(update.layers), params_before=update.params_before, params_after=update.params_after,
            projection_params_before=update.projection_params_before,
            projection_params_after=update.projection_params_after,
            pressure=round(update.pressure, 4), budget_unit=update.budget_unit, budget=update.budget,
            budget_estimate=update.budget_estimate, disagreements=update.disagreements, seconds=round(seconds, 4),
            measure_seconds=round(update.measure_seconds, 4), resize_seconds=round(update.resize_seconds, 4),
            # The measurement's cost against the training steps it rides on (those since the previous update).
            measure_fraction=round(update.measure_seconds / max(self._train_seconds_since_rank_update, 1e-9), 5),
            **rank_summary(state.model),
        )
        self._train_seconds_since_rank_update = 0.0

    def _sample(self) -> None:
        """A short continuation of train.sample_prompt by the generation code of `alrt generate`, with the weights
        evaluation uses (the EMA when on). Its time is not training time, and its seeded generator leaves the
        global RNG alone, so a run with samples trains exactly like one without."""
        train, model, tokenizer = self.config.train, self.state.model, self.setup.tokenizer
        started = time.perf_counter()
        live = self._swap_in_eval_weights()
        try:
            session = Session(model, tokenizer)
            prompt = [tokenizer.bos_id, *tokenizer.encode(train.sample_prompt)]
            sampling = SamplingConfig(temperature=train.sample_temperature, top_k=50, seed=train.seed + self.state.step)
            with autocast_context(self.distributed.device, self.setup.autocast):
                result = session.generate(prompt, max_new_tokens=train.sample_tokens, sampling=sampling)
        finally:
            model.train()
            if live is not None:
                restore_weights(model, live)
        self.events.emit(
            "sample", self.state.step, prompt=train.sample_prompt, text=result.text,
            new_tokens=result.stats.new_tokens, stop_reason=result.stats.stop_reason,
            seconds=round(time.perf_counter() - started, 3),
        )

    def _swap_in_eval_weights(self) -> dict[str, torch.Tensor] | None:
        """Load the weights evaluation and checkpoints use: the SWA mean once it has a sample, else the EMA, else
        none (the live weights). Returns the live weights to restore, or None."""
        state = self.state
        if state.swa is not None and state.swa.count:
            return state.swa.swap_into(state.model)
        return state.ema.swap_into(state.model) if state.ema is not None else None

    def _set_fake_quant(self, bits: int) -> None:
        """Late QAT: from now on every projection's training forward sees its weights on the int grid (it stays on,
        and a resumed run restores it; compiled graphs recompile once for the switch)."""
        self.state.qat_active = True
        for layer in self.state.model.projections().values():
            layer.fake_quant_bits = bits

    def _fail_non_finite(self, value: float) -> None:
        last = self.run_dir / "last.pt"
        kept = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written yet"
        self.events.emit("error", self.state.step, message="non-finite loss", loss=value)
        raise UserError(f"loss became {value} at step {self.state.step + 1}; training stopped ({kept})")

    def _evaluate_and_save(self, max_tokens: int | None, compared: bool = True) -> EvalResult:
        """Evaluate (the weights evaluation uses) and write last.pt. Only evaluations on the run's comparison set
        (`train.eval_tokens`, or the whole split when that is unset) feed `best_val_bpb`, `best.pt` and early
        stopping, so the best is always chosen among scores of the same tokens."""
        config, setup, state, distributed = self.config, self.setup, self.state, self.distributed
        live = self._swap_in_eval_weights()
        try:
            started = time.perf_counter()
            result = evaluate(
                state.model, setup.val_tokens, setup.tokenizer, seq_len=config.model.seq_len,
                batch_sequences=max(1, setup.micro_sequences), device=distributed.device,
                autocast=setup.autocast, max_tokens=max_tokens, dist_ctx=distributed,
            )
        finally:
            if live is not None:
                restore_weights(state.model, live)
        improved = compared and result.bpb < state.best_val_bpb
        if improved:
            state.best_val_bpb, state.evals_without_improvement = result.bpb, 0
        elif compared:
            state.evals_without_improvement += 1
        self.events.emit(
            "eval", state.step, val_loss=result.loss, val_bpb=result.bpb, val_tokens=result.tokens,
            val_bytes=result.bytes, best_val_bpb=state.best_val_bpb, improved=improved, ema=state.ema is not None,
            swa_samples=state.swa.count if state.swa is not None else None,
            seconds=round(time.perf_counter() - started, 3), full=max_tokens is None, compared=compared,
        )
        if distributed.is_main:
            payload = self._checkpoint_payload(result)
            save_checkpoint(self.run_dir / "last.pt", payload)
            self.events.emit("checkpoint", state.step, path=str(self.run_dir / "last.pt"), kind="last")
            if improved:
                save_checkpoint(self.run_dir / "best.pt", payload)
                self.events.emit("checkpoint", state.step, path=str(self.run_dir / "best.pt"), kind="best")
        return result

    def _checkpoint_payload(self, result: EvalResult) -> dict[str, Any]:
        """The training state, beside what rebuilds the run before that state loads (the config, every
        projection's rank, the precision chosen) and the evaluation the checkpoint was written after."""
        setup = self.setup
        precision = {**(setup.precision_probe.to_dict() if setup.precision_probe else {}), "bf16": setup.autocast}
        return {"config": self.config.to_dict(), "ranks": self.state.model.layer_ranks(), "precision": precision,
                "val": result.to_dict(), **self.state.state_dict()}

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
from alrt_core.evaluate import EvalResult, evaluate
from alrt_core.fileio import atomic_write_text
from alrt_core.model.artifact_estimate import estimate_artifact
from alrt_core.model.gpt import GPT, uniform_baseline_nats
from alrt_core.model.rank_plan import initial_layer_ranks
from alrt_core.precision import PrecisionProbe, autocast_context, matmul_shapes, probe_precision
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
from alrt_core.training.rank_manager import RankManager, RankUpdate
from alrt_core.training.run_config import resolve_resume_config
from alrt_core.training.schedule import Schedule, muon_momentum
from alrt_core.training.swa import WeightSWA
from serve.generation import Session
from serve.sampling import SamplingConfig

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
        self.ctx: DistributedContext = init_distributed(device)
        self._stop_reason: str | None = None

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the loop to stop after the current optimizer step (thread- and signal-safe)."""
        self._stop_reason = self._stop_reason or reason

    # -- setup -----------------------------------------------------------------------------------------------

    def _prepare_data(self) -> DatasetInfo:
        data = self.config.data
        # Rank 0 prepares (tokenizer training, sharding) while the others wait, then everyone reads the cache.
        if self.ctx.is_main:
            info = resolve_dataset(data.path, data.tokenizer, default_cache_dir(), data.vocab_size, progress=self.progress)
        self.ctx.barrier()
        if not self.ctx.is_main:
            info = resolve_dataset(data.path, data.tokenizer, default_cache_dir(), data.vocab_size, progress=False)
        return info

    def _build(self) -> None:
        config, ctx = self.config, self.ctx
        self.dataset = self._prepare_data()
        self.tokenizer = Tokenizer.load(self.dataset.tokenizer_path)
        if config.model.vocab_size is None:
            config.model.vocab_size = self.tokenizer.vocab_size
        elif config.model.vocab_size != self.tokenizer.vocab_size:
            raise UserError(
                f"model.vocab_size={config.model.vocab_size} does not match the tokenizer's vocabulary "
                f"of {self.tokenizer.vocab_size} ({self.dataset.tokenizer_path})"
            )
        config.validate()
        train = config.train
        seq_len = config.model.seq_len
        micro_tokens = train.micro_batch_tokens or train.batch_tokens // ctx.world_size
        if micro_tokens < seq_len or micro_tokens % seq_len or train.batch_tokens % (micro_tokens * ctx.world_size):
            raise UserError(
                f"train.batch_tokens={train.batch_tokens} must split into {ctx.world_size} rank(s) x micro-batches of "
                f"whole sequences (micro_batch_tokens={micro_tokens}, seq_len={seq_len})"
            )
        self.micro_sequences = cpu_micro_sequences(micro_tokens // seq_len, seq_len) if ctx.device.type == "cpu" \
            else micro_tokens // seq_len
        self.micro_batch_capped = self.micro_sequences * seq_len < micro_tokens
        self.accumulation = train.batch_tokens // (self.micro_sequences * seq_len * ctx.world_size)

        torch.manual_seed(train.seed)
        ranks = self.checkpoint["ranks"] if self.checkpoint else initial_layer_ranks(config.model, config.rank)
        self.model = GPT(config.model, layer_ranks=ranks).to(ctx.device)
        self.precision_probe, self.autocast = self._choose_precision()
        self.optimizers = build_optimizers(self.model, train, bf16=self.autocast)
        self.ema = WeightEMA(self.model, train.ema_decay) if train.ema_decay > 0 else None
        self.swa = WeightSWA(train.swa_start_frac, train.swa_every) if train.swa_start_frac > 0 else None
        self.qat_active = False
        self.batches = TrainBatches(self.dataset.train_files, seq_len, train.seed, ctx.rank, ctx.world_size)
        self.ranks = RankManager(
            config.rank, self.model, seed=train.seed,
            steps_per_epoch=max(1, self.batches.tokens_per_epoch // train.batch_tokens),
            tokenizer_bytes=len(self.tokenizer.model_bytes()),
        )
        self.val_tokens = np.concatenate([np.asarray(read_shard(path)) for path in self.dataset.val_files])
        self.schedule = Schedule(
            train.warmup_steps, train.warmdown_frac, train.max_steps,
            train.max_minutes * 60.0 if train.max_minutes is not None else None,
        )
        self.step, self.elapsed, self.tokens_seen = 0, 0.0, 0
        self._train_seconds_since_rank_update = 0.0
        self.best_bpb, self.evals_without_improvement = math.inf, 0
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        self.compiled_model: torch.nn.Module = self.model
        self._wrap_for_training()

    def _choose_precision(self) -> tuple[PrecisionProbe | None, bool]:
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
        for layer in self.model.projections().values():
            shapes += [(layer.in_features, layer.rank), (layer.rank, layer.out_features)] if layer.is_factorized \
                else [(layer.in_features, layer.out_features)]
        probe = probe_precision(self.ctx.device.type, matmul_shapes(shapes, self.micro_sequences * self.config.model.seq_len))
        (bf16,) = self.ctx.broadcast(torch.tensor([float(probe.bf16)], dtype=torch.float64)).tolist()
        return probe, bool(bf16)

    def _compile(self) -> None:
        """torch.compile the model and run one micro-batch forward and backward through it, wrapped as training
        wraps it (its compile time counts as training time, as it would in the first step). If either fails on any
        process, every process trains eagerly and the run says so once (stderr and a `compile_fallback` event).
        Called after `run_start`, so the run's header is on screen while the compiler works."""
        started = time.perf_counter()
        dynamic = self.ranks.active or self.config.rank.dense_warmup_frac > 0
        if dynamic:
            mark_ranks_dynamic(self.model)
        compiled, reason = compile_model(self.model, dynamic_parameter_shapes=dynamic)
        if reason is None:
            self.compiled_model = compiled
            self._wrap_for_training()
            # Trace the layer schedule the first step runs (depth recurrence may switch on later in the run).
            if self.schedule.progress(self.step, self.elapsed) < self.config.model.recur_start_frac:
                self.model.set_recurrence(False)
            position = self.batches.state_dict()
            inputs, targets = self.batches.next_batch(self.micro_sequences)
            self.batches.load_state_dict(position)

            def step() -> None:
                # no_sync: no gradient all-reduce, so a process whose compiler fails cannot leave the others waiting.
                with self.forward_model.no_sync() if self.ctx.enabled else nullcontext():
                    with autocast_context(self.ctx.device, self.autocast):
                        loss = self.forward_model(inputs.to(self.ctx.device), targets.to(self.ctx.device))
                    loss.backward()

            reason = probe(step)
            self.model.zero_grad(set_to_none=True)
        (failures,) = self._synced([1.0 if reason else 0.0])
        if failures:
            self.compiled_model = self.model
            self._wrap_for_training()
            if self.ctx.is_main:
                warn_fallback(reason or "failed on another process")
            self.events.emit("compile_fallback", self.step, reason=reason or "failed on another process")
        self.elapsed += time.perf_counter() - started

    def _wrap_for_training(self) -> None:
        """DDP around the (compiled) model; rebuilt after a resize, since DDP's buckets hold the old parameters."""
        ctx = self.ctx
        self.forward_model = self.compiled_model
        if ctx.enabled:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.compiled_model, device_ids=device_ids, broadcast_buffers=False)

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if self.swa is not None and state.get("swa") is not None:
            self.swa.load_state_dict(state["swa"])
        if state.get("qat_active"):
            self._set_fake_quant(self.config.train.qat_bits)
        if state.get("rank_manager") is not None:
            self.ranks.load_state_dict(state["rank_manager"])
        self.batches.load_state_dict(state["batches"])
        self.step, self.elapsed, self.tokens_seen = state["step"], state["elapsed"], state["tokens_seen"]
        self.best_bpb, self.evals_without_improvement = state["best_val_bpb"], state["evals_without_improvement"]
        torch.set_rng_state(state["rng"])

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.json", self.config.to_json() + "\n")
        target = self.run_dir / "tokenizer.model"
        if not target.exists() or target.read_bytes() != self.tokenizer.model_bytes():
            shutil.copyfile(self.dataset.tokenizer_path, target)

    # -- loop ------------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self._build()
        log_path = self.run_dir / "train.jsonl" if self.ctx.is_main else None
        if self.ctx.is_main:
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
        config, params = self.config, self.model.num_parameters()
        vocab = config.model.vocab_size or 0
        val_bytes = int(self.tokenizer.count_bytes(self.val_tokens[:-1], self.val_tokens[1:]))
        val_scored = self.val_tokens.shape[0] - 1
        planned = config.train.max_steps * config.train.batch_tokens if config.train.max_steps else None
        artifact = estimate_artifact(self.model)
        self.events.emit(
            "run_start", self.step,
            run_dir=str(self.run_dir), resumed_from=str(self.resume_path) if self.resume_path else None,
            preset=config.preset, device=str(self.ctx.device), world_size=self.ctx.world_size,
            precision="bf16 autocast" if self.autocast else "fp32", compiled=config.train.compile,
            precision_mode=config.train.autocast,
            precision_probe=self.precision_probe.to_dict() if self.precision_probe is not None else None,
            params=params, vocab_size=vocab, layer_ranks=self.model.layer_ranks(),
            artifact_packed_bytes=artifact.packed_bytes, artifact_estimate_bytes=artifact.compressed_bytes,
            train_tokens=self.batches.total_tokens, tokens_per_epoch=self.batches.tokens_per_epoch,
            val_tokens=val_scored, val_bytes=val_bytes, planned_tokens=planned,
            tokens_per_param_epoch=self.batches.tokens_per_epoch / params,
            chinchilla_fraction_epoch=self.batches.tokens_per_epoch / params / CHINCHILLA_TOKENS_PER_PARAM,
            chinchilla_fraction_planned=planned / params / CHINCHILLA_TOKENS_PER_PARAM if planned else None,
            uniform_loss=uniform_baseline_nats(vocab),
            uniform_bpb=uniform_baseline_nats(vocab) / math.log(2) * val_scored / val_bytes,
            batch_tokens=config.train.batch_tokens, micro_batch_sequences=self.micro_sequences,
            accumulation=self.accumulation, micro_batch_capped=self.micro_batch_capped, max_steps=config.train.max_steps, max_minutes=config.train.max_minutes,
            log_every=config.train.log_every, eval_every=config.train.eval_every,
            rank_policy=config.rank.policy, rank_update_every=self.ranks.update_every if self.ranks.active else None,
            rank_budget_unit=self.ranks.budget_unit, rank_budget=self.ranks.budget,
            projection_params=self.ranks.costs.projection_params(self.model.layer_ranks()),
            dense_projection_params=self.ranks.costs.projection_params(dict.fromkeys(self.model.layer_ranks())),
            **rank_summary(self.model),
        )

    def _synced(self, values: list[float]) -> list[float]:
        """Sum `values` over ranks in one collective (rank 0 alone contributes the clock)."""
        if not self.ctx.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.ctx.device)
        return self.ctx.all_reduce(tensor).tolist()

    def _loop(self) -> TrainResult:
        train, ctx = self.config.train, self.ctx
        autocast = self.autocast
        last_eval_step, final = -1, None
        reason = None
        while True:
            local_stop = 1.0 if self._stop_reason else 0.0
            clock = self.elapsed if ctx.is_main else 0.0
            stop_votes, self.elapsed = self._synced([local_stop, clock])
            reason = self.schedule.finished(self.step, self.elapsed) or (self._stop_reason or "interrupted" if stop_votes else None)
            if reason:
                break
            if self.ranks.factorization_due(self.model, self.step, self.schedule.progress(self.step, self.elapsed)):
                self._factorize()  # outside the step's own timing: its seconds are counted by the update's record
            started = time.perf_counter()
            scale = self.schedule.lr_scale(self.step, self.elapsed)
            set_lr_scale(self.optimizers, scale)
            # Depth recurrence loops from model.recur_start_frac of the run on (set every step, so resume too).
            model_config = self.config.model
            if self.model.set_recurrence(self.schedule.progress(self.step, self.elapsed) >= model_config.recur_start_frac):
                self.events.emit("recurrence_on", self.step, layers=model_config.recur_layers, loops=model_config.recur_loops)
            if not self.qat_active and scale < train.qat_lr_threshold and self.step >= train.warmup_steps:
                self._set_fake_quant(train.qat_bits)
                self.events.emit("qat_on", self.step, lr_scale=scale, bits=train.qat_bits)
            set_muon_momentum(self.optimizers, muon_momentum(
                self.step, train.muon_momentum_warmup_start, train.muon_momentum, train.muon_momentum_warmup_steps))
            nll_sum, byte_count, token_count = 0.0, 0, 0
            for micro in range(self.accumulation):
                inputs, targets = self.batches.next_batch(self.micro_sequences)
                sync = micro == self.accumulation - 1 or not ctx.enabled
                with nullcontext() if sync else self.forward_model.no_sync():
                    with autocast_context(ctx.device, autocast):
                        loss = self.forward_model(inputs.to(ctx.device), targets.to(ctx.device))
                    (loss / self.accumulation).backward()
                nll_sum += float(loss.detach()) * targets.numel()
                token_count += targets.numel()
                byte_count += int(self.tokenizer.count_bytes(inputs.numpy(), targets.numpy()))
            penalty = self.ranks.penalty(self.model)
            if penalty is not None:
                # Identical on every process, so its gradient is added locally after DDP's all-reduce.
                penalty.backward()
            grad_norm = None
            if train.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), train.grad_clip))
            nll_sum, token_count, byte_count = self._synced([nll_sum, float(token_count), float(byte_count)])
            if not math.isfinite(nll_sum):
                self._fail_non_finite(nll_sum)
            for optimizer in self.optimizers:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.model)
            seconds = time.perf_counter() - started
            self.step += 1
            self.elapsed += seconds
            self.tokens_seen += int(token_count)
            if self.swa is not None and self.swa.is_due(self.step, self.schedule.progress(self.step, self.elapsed)):
                self.swa.add(self.ema.shadow if self.ema is not None else self.model.state_dict())
            self.events.emit(
                "train_step", self.step,
                loss=nll_sum / token_count, bpb=nll_sum / (math.log(2) * byte_count), lr_scale=scale,
                lr=scale * train.matrix_lr, tok_s=token_count / seconds, tokens=self.tokens_seen,
                elapsed=round(self.elapsed, 3), epoch=round(self.batches.epoch, 4), grad_norm=grad_norm,
                rank_penalty=float(penalty) if penalty is not None else None,
                **rank_summary(self.model),
            )
            self._train_seconds_since_rank_update += seconds
            if self.ranks.is_due(self.step):
                self._update_ranks()
            if train.sample_every and self.step % train.sample_every == 0 and ctx.is_main:
                self._sample()
            if self.step % train.eval_every == 0:
                final = self._evaluate_and_save(max_tokens=train.eval_tokens)
                last_eval_step = self.step
                if self._stop_reason is None and train.early_stop_patience is not None \
                        and self.evals_without_improvement >= train.early_stop_patience:
                    self.request_stop("early_stop")
        if last_eval_step != self.step or final is None:
            final = self._evaluate_and_save(max_tokens=train.eval_tokens)
        if train.eval_tokens is not None and final.tokens < self.val_tokens.shape[0] - 1:
            # The whole split, reported as the run's final figure; it is not compared with the capped evals
            # (other tokens), so it never decides best.pt.
            final = self._evaluate_and_save(max_tokens=None, compared=False)
        self.events.emit(
            "run_end", self.step, reason=reason, best_val_bpb=self.best_bpb, final_val_bpb=final.bpb,
            final_val_loss=final.loss, tokens=self.tokens_seen, elapsed=round(self.elapsed, 3),
        )
        return TrainResult(self.run_dir, self.step, reason, self.best_bpb, final)

    def _update_ranks(self) -> None:
        """One controller update; its time counts against the wallclock budget like any training work."""
        self._record_rank_update(self.ranks.update(self.step, self.model, self.optimizers, self._followers(), self.ctx))

    def _factorize(self) -> None:
        """The end of the dense warm start: every projection becomes U·V (its time counts as training time)."""
        update = self.ranks.factorize(self.step, self.model, self.optimizers, self._followers(), self.ctx)
        self.events.emit("factorize", self.step, ranks=update.ranks, params_before=update.params_before,
                         params_after=update.params_after, budget_estimate=update.budget_estimate)
        self._record_rank_update(update)

    def _followers(self) -> list[WeightEMA | WeightSWA]:
        """The weight copies that must follow every rank change (the EMA, the SWA mean), where the run keeps them."""
        return [copy for copy in (self.ema, self.swa) if copy is not None]

    def _record_rank_update(self, update: RankUpdate) -> None:
        """Rewrap after a change, count the time, log the update and each changed layer."""
        if update.changed:
            if self.compiled_model is not self.model:
                mark_ranks_dynamic(self.model)  # the new factors: no recompilation for their new ranks
            self._wrap_for_training()
        seconds = update.measure_seconds + update.resize_seconds
        self.elapsed += seconds
        if self.ctx.is_main and self.config.rank.log_full:
            self.events.emit("rank_full", self.step, layers=[layer.to_dict() for layer in update.layers])
        for layer in update.changed:
            self.events.emit("rank_change", self.step, pressure=round(update.pressure, 4), **layer.to_dict())
        self.events.emit(
            "rank_update", self.step, policy=self.config.rank.policy, changed=len(update.changed),
            layers=len(update.layers), params_before=update.params_before, params_after=update.params_after,
            projection_params_before=update.projection_params_before,
            projection_params_after=update.projection_params_after,
            pressure=round(update.pressure, 4), budget_unit=update.budget_unit, budget=update.budget,
            budget_estimate=update.budget_estimate, disagreements=update.disagreements, seconds=round(seconds, 4),
            measure_seconds=round(update.measure_seconds, 4), resize_seconds=round(update.resize_seconds, 4),
            # The measurement's cost against the training steps it rides on (those since the previous update).
            measure_fraction=round(update.measure_seconds / max(self._train_seconds_since_rank_update, 1e-9), 5),
            **rank_summary(self.model),
        )
        self._train_seconds_since_rank_update = 0.0

    def _sample(self) -> None:
        """A short continuation of train.sample_prompt by the generation code of `alrt generate`, with the weights
        evaluation uses (the EMA when on). Its time is not training time, and its seeded generator leaves the
        global RNG alone, so a run with samples trains exactly like one without."""
        train = self.config.train
        started = time.perf_counter()
        live = self._swap_in_eval_weights()
        try:
            session = Session(self.model, self.tokenizer)
            prompt = [self.tokenizer.bos_id, *self.tokenizer.encode(train.sample_prompt)]
            sampling = SamplingConfig(temperature=train.sample_temperature, top_k=50, seed=train.seed + self.step)
            with autocast_context(self.ctx.device, self.autocast):
                result = session.generate(prompt, max_new_tokens=train.sample_tokens, sampling=sampling)
        finally:
            self.model.train()
            if live is not None:
                restore_weights(self.model, live)
        self.events.emit(
            "sample", self.step, prompt=train.sample_prompt, text=result.text, new_tokens=result.stats.new_tokens,
            stop_reason=result.stats.stop_reason, seconds=round(time.perf_counter() - started, 3),
        )

    def _swap_in_eval_weights(self) -> dict[str, torch.Tensor] | None:
        """Load the weights evaluation and checkpoints use: the SWA mean once it has a sample, else the EMA, else
        none (the live weights). Returns the live weights to restore, or None."""
        if self.swa is not None and self.swa.count:
            return self.swa.swap_into(self.model)
        return self.ema.swap_into(self.model) if self.ema is not None else None

    def _set_fake_quant(self, bits: int) -> None:
        """Late QAT: from now on every projection's training forward sees its weights on the int grid (it stays on,
        and a resumed run restores it; compiled graphs recompile once for the switch)."""
        self.qat_active = True
        for layer in self.model.projections().values():
            layer.fake_quant_bits = bits

    def _fail_non_finite(self, value: float) -> None:
        last = self.run_dir / "last.pt"
        kept = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written yet"
        self.events.emit("error", self.step, message="non-finite loss", loss=value)
        raise UserError(f"loss became {value} at step {self.step + 1}; training stopped ({kept})")

    def _evaluate_and_save(self, max_tokens: int | None, compared: bool = True) -> EvalResult:
        """Evaluate (the weights evaluation uses) and write last.pt. Only evaluations on the run's comparison set
        (`train.eval_tokens`, or the whole split when that is unset) feed `best_bpb`, `best.pt` and early
        stopping, so the best is always chosen among scores of the same tokens."""
        config = self.config
        live = self._swap_in_eval_weights()
        try:
            started = time.perf_counter()
            result = evaluate(
                self.model, self.val_tokens, self.tokenizer, seq_len=config.model.seq_len,
                batch_sequences=max(1, self.micro_sequences), device=self.ctx.device,
                autocast=self.autocast, max_tokens=max_tokens, dist_ctx=self.ctx,
            )
        finally:
            if live is not None:
                restore_weights(self.model, live)
        improved = compared and result.bpb < self.best_bpb
        if improved:
            self.best_bpb, self.evals_without_improvement = result.bpb, 0
        elif compared:
            self.evals_without_improvement += 1
        self.events.emit(
            "eval", self.step, val_loss=result.loss, val_bpb=result.bpb, val_tokens=result.tokens,
            val_bytes=result.bytes, best_val_bpb=self.best_bpb, improved=improved, ema=self.ema is not None,
            swa_samples=self.swa.count if self.swa is not None else None,
            seconds=round(time.perf_counter() - started, 3), full=max_tokens is None, compared=compared,
        )
        if self.ctx.is_main:
            payload = self._checkpoint_payload(result)
            save_checkpoint(self.run_dir / "last.pt", payload)
            self.events.emit("checkpoint", self.step, path=str(self.run_dir / "last.pt"), kind="last")
            if improved:
                save_checkpoint(self.run_dir / "best.pt", payload)
                self.events.emit("checkpoint", self.step, path=str(self.run_dir / "best.pt"), kind="best")
        return result

    def _checkpoint_payload(self, result: EvalResult) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "qat_active": self.qat_active,
            "ranks": self.model.layer_ranks(),
            "rank_manager": self.ranks.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "batches": self.batches.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "tokens_seen": self.tokens_seen,
            "best_val_bpb": self.best_bpb,
            "evals_without_improvement": self.evals_without_improvement,
            "val": result.to_dict(),
            "rng": torch.get_rng_state(),
            "precision": {**(self.precision_probe.to_dict() if self.precision_probe else {}), "bf16": self.autocast},
        }

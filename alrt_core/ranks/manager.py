"""ALRT while training: measure every factorised projection, decide its rank by policy, resize it.

Every `update_every` steps the manager measures each layer from its factors (stable rank by warm-started power
iteration, or the full spectrum from an r×r core for `energy`), folds the estimate into the layer's EMA, turns it
into a target (safety factor × budget pressure), and moves the rank a bounded step towards it. Resizes carry the
optimizer state (`resize.py`), and the weight EMA and SWA mean follow each
resize through the live layer's own maps. Every process of a distributed run computes the same
decisions from identical weights, and rank 0's are broadcast so they cannot drift.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from alrt_core.config import RankConfig
from alrt_core.model.factorized import FactorizedLinear
from alrt_core.model.gpt import GPT, layer_kind
from alrt_core.ranks.budget import ARTIFACT, PACKED, CostModel, artifact_overhead_bytes
from alrt_core.ranks.controller import (
    ControllerSettings,
    LayerRankState,
    RankDecision,
    decide,
    smooth,
    target_rank,
)
from alrt_core.ranks.plan import (
    break_even_rank,
    energy_rank,
    ordered_penalty_weights,
    schedule_rank,
)
from alrt_core.ranks.resize import factorize_layer, resize_layer
from alrt_core.ranks.spectral import Resize, singular_values, stable_rank
from alrt_core.training.distributed import DistributedContext
from alrt_core.units import parse_byte_size

# Updates happen about once per epoch, but at least this often, so short runs still adapt.
MAX_DERIVED_UPDATE_INTERVAL = 100
PRESSURE_RANGE = (1.0 / 16.0, 16.0)


def max_factor_rank(layer: FactorizedLinear, scheduled_final: int | None = None) -> int:
    """The largest rank the controller gives a layer: break-even, or the layer's own rank when it starts above
    (or, for the schedule policy, the final rank it was told to reach)."""
    wanted = max(break_even_rank(layer.out_features, layer.in_features), layer.rank or 0, scheduled_final or 0)
    return min(wanted, layer.max_rank)


class ResizeFollower(Protocol):
    """A copy of the weights kept beside the model (the weight EMA, the SWA mean) that must follow each resize."""

    def follow_resize(self, layer: str, resize: Resize) -> None: ...

    def follow_factorization(self, layer: str, v: Tensor) -> None: ...


@dataclass(frozen=True)
class LayerReport:
    """One layer at one update: what was measured and what was decided."""

    name: str
    kind: str
    stable_rank: float
    decision: RankDecision

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        return {
            "layer": self.name, "kind": self.kind, "stable_rank": round(self.stable_rank, 3),
            "estimate": round(d.estimate, 3), "ema": round(d.ema, 3), "target": d.target,
            "old_rank": d.old_rank, "new_rank": d.new_rank,
        }


@dataclass
class RankUpdate:
    step: int
    layers: list[LayerReport]
    pressure: float
    params_before: int
    params_after: int
    projection_params_before: int
    projection_params_after: int
    budget_unit: str | None = None
    budget: float | None = None
    budget_estimate: float | None = None  # cost of the ranks after this update, in budget_unit
    measure_seconds: float = 0.0
    resize_seconds: float = 0.0
    ranks: dict[str, int] = field(default_factory=dict)
    disagreements: int = 0  # layers where some process had decided differently from rank 0 (expected: 0)

    @property
    def changed(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.decision.changed]


class RankManager:
    def __init__(self, config: RankConfig, model: GPT, *, seed: int, steps_per_epoch: int,
                 tokenizer_bytes: int = 0) -> None:
        """`tokenizer_bytes`: the size of the tokenizer model the artifact will carry (for `bytes_model=artifact`)."""
        self.config = config
        self.seed = seed
        self.settings = ControllerSettings(
            change_threshold=config.change_threshold, max_step=config.max_step, ema_decay=config.ema_decay,
            warmup_steps=config.warmup_steps, min_rank=config.min_rank,
        )
        factorised = {name: layer for name, layer in model.projections().items() if layer.is_factorized}
        # A layer never grows past its break-even rank m·n/(m+n) (or its starting rank, if that is higher): beyond
        # it the factors cost more parameters, bytes and FLOPs than the dense W they can at most represent.
        final = config.final if config.policy == "schedule" else None
        self.states = {name: LayerRankState(rank=layer.rank or 0, max_rank=max_factor_rank(layer, final))
                       for name, layer in factorised.items()}
        self.start_ranks = {name: state.rank for name, state in self.states.items()}
        generator = torch.Generator().manual_seed(seed)
        # Deterministic warm-start vectors (never the global RNG, which training's reproducibility depends on).
        self.vectors = {name: torch.randn(layer.in_features, generator=generator) for name, layer in factorised.items()}
        self.pressure = 1.0
        self.update_every = config.update_every or max(1, min(steps_per_epoch, MAX_DERIVED_UPDATE_INTERVAL))
        if config.bytes_model == "artifact":
            self.costs = CostModel.of(model, ARTIFACT, artifact_overhead_bytes(tokenizer_bytes))
        else:
            self.costs = CostModel.of(model, PACKED)
        self.budget_unit, self.budget = self._budget(config)

    @staticmethod
    def _budget(config: RankConfig) -> tuple[str | None, float | None]:
        if config.target_params is not None:
            return "params", float(config.target_params)
        if config.target_bytes is not None:
            return "bytes", float(parse_byte_size(config.target_bytes))
        return None, None

    @property
    def active(self) -> bool:
        return self.config.adaptive and bool(self.states)

    def factorization_due(self, model: GPT, step: int, progress: float) -> bool:
        """Whether a dense warm start (`rank.dense_warmup_frac`) ends now: the run has reached that fraction and
        every projection is still dense (a resumed run past the switch has factorised layers). Never before the
        first step: a wallclock run's progress includes compilation, which can pass a small fraction at step 0."""
        return (self.config.adaptive and self.config.dense_warmup_frac > 0 and step >= 1
                and progress >= self.config.dense_warmup_frac
                and not any(layer.is_factorized for layer in model.projections().values()))

    def is_due(self, step: int) -> bool:
        return self.active and step > 0 and step % self.update_every == 0

    # -- the ordered penalty of the schedule policy ----------------------------------------------------------

    def penalty(self, model: GPT) -> Tensor | None:
        """α·Σ_layers Σᵢ wᵢ(‖U[:,i]‖² + ‖V[i,:]‖²), or None when the policy has no penalty."""
        if self.config.policy != "schedule" or self.config.pressure_alpha <= 0:
            return None
        total: Tensor | None = None
        for name in self.states:
            layer = model.get_submodule(name)
            weights = ordered_penalty_weights(layer.rank, layer.U.device)
            term = (weights * (layer.U.square().sum(0) + layer.V.square().sum(1))).sum()
            total = term if total is None else total + term
        return None if total is None else self.config.pressure_alpha * total

    # -- one update ------------------------------------------------------------------------------------------

    def _measure(self, model: GPT) -> tuple[dict[str, float], dict[str, float]]:
        """(stable rank, policy estimate) of every factorised layer, from its factors."""
        stable, estimates = {}, {}
        for name in self.states:
            layer = model.get_submodule(name)
            u, v = layer.U.detach().float(), layer.V.detach().float()
            stable[name], self.vectors[name] = stable_rank(u, v, self.vectors[name].to(u.device), self.config.power_iterations)
            self.vectors[name] = self.vectors[name].cpu()
            if self.config.policy == "energy":
                estimates[name] = float(energy_rank(singular_values(u, v), self.config.energy))
            else:
                estimates[name] = stable[name]
        return stable, estimates

    def _ranks_at(self, scale: float) -> dict[str, int | None]:
        ranks: dict[str, int | None] = dict.fromkeys(self.costs.shapes)
        ranks.update({name: target_rank(state, scale, self.settings) for name, state in self.states.items()})
        return ranks

    def _solve_pressure(self, base_scale: float) -> float:
        """The largest pressure in PRESSURE_RANGE whose targets fit the budget (bisection in log space; the
        total is non-decreasing in the pressure). Re-solved every update from the current spectra."""
        assert self.budget is not None and self.budget_unit is not None
        low, high = (math.log(p) for p in PRESSURE_RANGE)
        if self.costs.total(self._ranks_at(base_scale * math.exp(low)), self.budget_unit) > self.budget:
            return math.exp(low)
        if self.costs.total(self._ranks_at(base_scale * math.exp(high)), self.budget_unit) <= self.budget:
            return math.exp(high)
        for _ in range(40):
            middle = (low + high) / 2
            if self.costs.total(self._ranks_at(base_scale * math.exp(middle)), self.budget_unit) <= self.budget:
                low = middle
            else:
                high = middle
        return math.exp(low)

    def _decide(self, step: int, estimates: dict[str, float]) -> dict[str, RankDecision]:
        config = self.config
        for name, state in self.states.items():
            smooth(state, estimates[name], self.settings)
        base = config.safety_factor if config.policy == "stable" else 1.0
        if self.budget is not None:
            self.pressure = self._solve_pressure(base)
        decisions = {}
        for name, state in self.states.items():
            if config.policy == "schedule":
                final = min(config.final or state.max_rank, state.max_rank)
                target = schedule_rank(step, self.start_ranks[name], final, config.warmup_steps, config.anneal_steps)
                new_rank = target  # the schedule is followed exactly
            else:
                target = target_rank(state, base * self.pressure, self.settings)
                new_rank = decide(state, target, step, self.settings)
            assert state.ema is not None
            decisions[name] = RankDecision(estimates[name], state.ema, target, state.rank, new_rank)
        return decisions

    @torch.no_grad()
    def update(
        self,
        step: int,
        model: GPT,
        optimizers: list[torch.optim.Optimizer],
        followers: Sequence[ResizeFollower] = (),
        ctx: DistributedContext | None = None,
    ) -> RankUpdate:
        """Measure, decide and resize; every follower (EMA, SWA) is moved by each resized layer's own maps. Under
        torchrun rank 0's decisions are broadcast, and the number of layers where a process had decided otherwise
        is counted (it should always be 0: the weights are identical)."""
        started = time.perf_counter()
        ranks_before = model.layer_ranks()
        params_before = model.num_parameters()
        stable, estimates = self._measure(model)
        decisions = self._decide(step, estimates)
        disagreements = 0
        if ctx is not None and ctx.enabled:
            local = torch.tensor([d.new_rank for d in decisions.values()], dtype=torch.int64)
            agreed_tensor = ctx.broadcast(local.clone())
            count = torch.tensor([float((agreed_tensor != local).sum())], dtype=torch.float64, device=ctx.device)
            disagreements = int(ctx.all_reduce(count).item())
            agreed = agreed_tensor.tolist()
            decisions = {
                name: RankDecision(d.estimate, d.ema, d.target, d.old_rank, int(rank))
                for (name, d), rank in zip(decisions.items(), agreed, strict=True)
            }
        measured = time.perf_counter()
        for index, (name, decision) in enumerate(decisions.items()):
            if not decision.changed:
                continue
            layer = model.get_submodule(name)
            # Growth noise from (seed, step, layer): identical on every process and on resume.
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 1_009 + index)
            resize = resize_layer(
                layer, decision.new_rank, optimizers, method=self.config.resize_method,
                on_resize=self.config.on_resize, generator=generator,
            )
            if resize is not None:
                for follower in followers:
                    follower.follow_resize(name, resize)
            self.states[name].rank = decision.new_rank
        reports = [LayerReport(name, layer_kind(name), stable[name], d) for name, d in decisions.items()]
        return self._report(step, model, reports, ranks_before, params_before, started, measured, disagreements)

    def _report(self, step: int, model: GPT, reports: list[LayerReport], ranks_before: dict, params_before: int,
                started: float, measured: float, disagreements: int = 0) -> RankUpdate:
        """The record of an update or of the factorisation: parameters, budget estimate and timings."""
        ranks_after = model.layer_ranks()
        return RankUpdate(
            step=step,
            layers=reports,
            pressure=self.pressure,
            params_before=params_before,
            params_after=model.num_parameters(),
            projection_params_before=self.costs.projection_params(ranks_before),
            projection_params_after=self.costs.projection_params(ranks_after),
            budget_unit=self.budget_unit,
            budget=self.budget,
            budget_estimate=self.costs.total(ranks_after, self.budget_unit) if self.budget_unit else None,
            measure_seconds=measured - started,
            resize_seconds=time.perf_counter() - measured,
            ranks={name: int(rank) for name, rank in ranks_after.items() if rank is not None},
            disagreements=disagreements,
        )

    @torch.no_grad()
    def factorize(
        self,
        step: int,
        model: GPT,
        optimizers: list[torch.optim.Optimizer],
        followers: Sequence[ResizeFollower] = (),
        ctx: DistributedContext | None = None,
    ) -> RankUpdate:
        """End of the dense warm start (Cuttlefish-style): every dense projection becomes `U·V` at the rank its own
        spectrum asks for (the policy's estimate from W's singular values, times the safety factor and the budget
        pressure solved for the byte/parameter budget), at most its break-even rank m·n/(m+n), where the factors
        cost what W costs. Muon's momentum of W is carried into both factors; followers (EMA, SWA) are projected
        onto the live factors. The controller then goes on from these ranks as from any update."""
        started = time.perf_counter()
        ranks_before, params_before = model.layer_ranks(), model.num_parameters()
        layers = {name: layer for name, layer in model.projections().items() if not layer.is_factorized}
        stable, estimates = {}, {}
        for name, layer in layers.items():
            sigma = torch.linalg.svdvals(layer.weight.detach().float())
            energy = sigma.square()
            stable[name] = float(energy.sum() / energy[0].clamp_min(1e-30))
            estimates[name] = float(energy_rank(sigma, self.config.energy)) if self.config.policy == "energy" else stable[name]
            # Capped at break-even, now and for every later update (as `max_factor_rank` caps a factorised start):
            # beyond it the factors cost more than W.
            cap = break_even_rank(layer.out_features, layer.in_features)
            self.states[name] = LayerRankState(rank=cap, max_rank=cap, ema=estimates[name])
        base = self.config.safety_factor if self.config.policy == "stable" else 1.0
        if self.budget is not None:
            self.pressure = self._solve_pressure(base)
        chosen = {name: target_rank(self.states[name], base * self.pressure, self.settings) for name in layers}
        if ctx is not None and ctx.enabled:
            agreed = ctx.broadcast(torch.tensor(list(chosen.values()), dtype=torch.int64)).tolist()
            chosen = dict(zip(chosen, (int(rank) for rank in agreed), strict=True))
        measured = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed * 7_919 + step)
        reports = []
        for name, layer in layers.items():
            v = factorize_layer(layer, chosen[name], optimizers, generator)
            for follower in followers:
                follower.follow_factorization(name, v)
            state = self.states[name]
            decision = RankDecision(estimates[name], float(state.ema or 0.0), chosen[name], None, chosen[name])
            state.rank = chosen[name]
            self.vectors[name] = torch.randn(layer.in_features, generator=generator)
            self.start_ranks[name] = chosen[name]
            reports.append(LayerReport(name, layer_kind(name), stable[name], decision))
        return self._report(step, model, reports, ranks_before, params_before, started, measured)

    # -- checkpoints -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "layers": {name: {"rank": s.rank, "max_rank": s.max_rank, "ema": s.ema} for name, s in self.states.items()},
            "vectors": dict(self.vectors),
            "start_ranks": dict(self.start_ranks),
            "pressure": self.pressure,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, saved in state["layers"].items():
            self.states[name] = LayerRankState(rank=saved["rank"], max_rank=saved["max_rank"], ema=saved["ema"])
        self.vectors = {name: vector.clone() for name, vector in state["vectors"].items()}
        self.start_ranks = dict(state["start_ranks"])
        self.pressure = float(state["pressure"])

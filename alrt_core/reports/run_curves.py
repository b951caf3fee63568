"""`alrt inspect run`: a run's curves and summary from its train.jsonl and config.json only.

Nothing else is read, so a run that is still going can be inspected (its last, possibly half-written line is
skipped). A resumed run appends a new `run_start` at the step it resumed from; steps logged after that point by
the earlier process were redone, so their points are replaced by the new ones.

Series: train loss/bpb, learning rate and tokens/s per `train_step` (against step, tokens seen and training
wallclock, which excludes evaluation); validation loss/bpb per `eval` (placed at the tokens and wallclock of its
step; when a step was evaluated twice, a periodic evaluation capped at `train.eval_tokens` and then the final full
one, the full one is kept; the best is chosen among the evaluations the trainer compared, which all score the same
tokens); attention+MLP parameters and mean rank per `rank_update` (ALRT rank totals over time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alrt_core.errors import UserError
from alrt_core.training.events import read_events

TRAIN_FIELDS = ("step", "tokens", "elapsed", "loss", "bpb", "lr", "tok_s", "rank_mean")
EVAL_FIELDS = ("step", "tokens", "elapsed", "val_loss", "val_bpb", "full", "compared")
RANK_FIELDS = ("step", "projection_params", "params", "rank_mean", "changed")


@dataclass
class RunCurves:
    name: str
    path: str
    config: dict[str, Any] | None
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    compared_evals: list[dict[str, Any]] = field(default_factory=list)  # those that competed for best.pt
    ranks: list[dict[str, Any]] = field(default_factory=list)
    start: dict[str, Any] = field(default_factory=dict)  # the first run_start event
    end: dict[str, Any] | None = None  # the run_end event, when the run finished

    def series(self, kind: str, key: str) -> list[Any]:
        return [point.get(key) for point in getattr(self, kind)]

    def summary(self) -> dict[str, Any]:
        last = self.train[-1] if self.train else {}
        evals = [e for e in self.evals if e.get("val_bpb") is not None]
        # Runs logged before `compared` existed compared every evaluation.
        compared = [e for e in self.compared_evals if e.get("val_bpb") is not None]
        best = min(compared, key=lambda e: e["val_bpb"]) if compared else None
        elapsed = last.get("elapsed") or 0.0
        dense = self.start.get("dense_projection_params")
        projection = self.ranks[-1]["projection_params"] if self.ranks else self.start.get("projection_params")
        params = self.ranks[-1]["params"] if self.ranks else self.start.get("params")
        config = self.config or {}
        return {
            "name": self.name,
            "status": f"finished ({self.end.get('reason')})" if self.end else "running or stopped",
            "preset": config.get("preset", self.start.get("preset")),
            "rank_policy": config.get("rank", {}).get("policy", self.start.get("rank_policy")),
            "params": params,
            "projection_params": projection,
            "projection_fraction": projection / dense if projection and dense else None,
            "steps": last.get("step", 0),
            "tokens": last.get("tokens", 0),
            "train_seconds": elapsed,
            "tokens_per_second": (last.get("tokens", 0) / elapsed) if elapsed else None,
            "best_val_bpb": best["val_bpb"] if best else None,
            "best_step": best["step"] if best else None,
            "final_val_bpb": self.end.get("final_val_bpb") if self.end else (evals[-1]["val_bpb"] if evals else None),
            "last_train_bpb": _tail_mean([p.get("bpb") for p in self.train]),
            "evals": len(evals),
            "rank_updates": len(self.ranks),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "summary": self.summary(), "train": self.train,
                "evals": self.evals, "ranks": self.ranks}


def _tail_mean(values: list[float | None], fraction: float = 0.05) -> float | None:
    """Mean of the last `fraction` of the (noisy, per-step) train values, at least one."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    tail = present[-max(1, int(len(present) * fraction)) :]
    return sum(tail) / len(tail)


def _pick(event: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {key: event.get(key) for key in fields}


def read_run(run_dir: Path, name: str | None = None) -> RunCurves:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"no such run directory: {run_dir}")
    log = run_dir / "train.jsonl"
    if not log.is_file():
        raise UserError(f"{run_dir}: no train.jsonl (not a run directory, or the run has not started)")
    config = None
    if (run_dir / "config.json").is_file():
        try:
            config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise UserError(f"{run_dir / 'config.json'}: not valid JSON ({error.msg})") from None
    run = RunCurves(name or run_dir.name, str(run_dir), config)
    at_step: dict[int, dict[str, Any]] = {}  # train point of each step, to place evals on tokens and wallclock
    for event in read_events(log):
        if not isinstance(event, dict) or not isinstance(event.get("step"), int):
            continue
        kind, step = event.get("event"), event["step"]
        if kind == "run_start":
            if not run.start:
                run.start = event
            # A resumed process restarts at `step`: drop what the earlier process logged beyond it.
            run.train = [p for p in run.train if p["step"] <= step]
            run.evals = [p for p in run.evals if p["step"] <= step]
            run.compared_evals = [p for p in run.compared_evals if p["step"] <= step]
            run.ranks = [p for p in run.ranks if p["step"] <= step]
            run.end = None
        elif kind == "train_step":
            point = _pick(event, TRAIN_FIELDS)
            run.train.append(point)
            at_step[step] = point
        elif kind == "eval":
            point = _pick(event, EVAL_FIELDS)
            point["tokens"] = at_step.get(step, {}).get("tokens")
            point["elapsed"] = at_step.get(step, {}).get("elapsed")
            if run.evals and run.evals[-1]["step"] == step:
                run.evals.pop()  # the final full evaluation after a periodic (possibly capped) one at the same step
            run.evals.append(point)
            if event.get("compared", True):
                run.compared_evals.append(point)
        elif kind == "rank_update":
            run.ranks.append({"step": step, "projection_params": event.get("projection_params_after"),
                              "params": event.get("params_after"), "rank_mean": event.get("rank_mean"),
                              "changed": event.get("changed")})
        elif kind == "run_end":
            run.end = event
    if not run.start and not run.train:
        raise UserError(f"{log}: no run_start or train_step events yet")
    return run


def read_runs(run_dirs: list[Path]) -> list[RunCurves]:
    """Runs named by their directory; full paths where two directories share a name."""
    names = [Path(d).name for d in run_dirs]
    return [read_run(d, name=Path(d).name if names.count(Path(d).name) == 1 else str(d)) for d in run_dirs]

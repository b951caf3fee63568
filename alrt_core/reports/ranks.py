"""`alrt inspect ranks`: every projection's rank, stable rank and compression in a checkpoint, and each layer's
rank trajectory from the run's train.jsonl.

Spectra come from the factors (an r×r core after QR), never from a materialised m×n product, so a report on the
`cpu` model takes well under a second.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from alrt_core.errors import UserError
from alrt_core.model.gpt import PROJECTION_KINDS, layer_kind
from alrt_core.ranks.spectral import singular_values
from alrt_core.training.checkpoint import load_checkpoint
from alrt_core.training.events import read_events

_BLOCK = re.compile(r"blocks\.(\d+)\.")


@dataclass(frozen=True)
class LayerRank:
    layer: str
    block: int
    kind: str
    rank: int | None  # None: dense
    max_rank: int
    stable_rank: float
    params: int
    dense_params: int

    @property
    def compression(self) -> float:
        """Parameters now over the dense matrix's parameters (below 1 = smaller than dense)."""
        return self.params / self.dense_params


@dataclass
class RankReport:
    source: str
    step: int
    policy: str
    layers: list[LayerRank]
    history: dict[str, list[tuple[int, int | None]]] = field(default_factory=dict)  # layer -> [(step, rank)]

    @property
    def projection_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def dense_projection_params(self) -> int:
        return sum(layer.dense_params for layer in self.layers)

    def kind_means(self) -> dict[str, float | None]:
        means: dict[str, float | None] = {}
        for kind in PROJECTION_KINDS:
            ranks = [layer.rank for layer in self.layers if layer.kind == kind and layer.rank is not None]
            means[kind] = sum(ranks) / len(ranks) if ranks else None
        return means

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "step": self.step,
            "policy": self.policy,
            "layers": [{**asdict(layer), "compression": layer.compression} for layer in self.layers],
            "totals": {
                "projection_params": self.projection_params,
                "dense_projection_params": self.dense_projection_params,
                "compression": self.projection_params / self.dense_projection_params,
                "mean_rank_by_kind": self.kind_means(),
            },
            "history": {name: [list(point) for point in points] for name, points in self.history.items()},
        }


def _stable_rank(sigma: torch.Tensor) -> float:
    top = float(sigma[0]) if sigma.numel() else 0.0
    return float(sigma.double().square().sum()) / top**2 if top > 0 else 0.0


def layer_ranks_from_state(model_state: dict[str, torch.Tensor], ranks: dict[str, int | None]) -> list[LayerRank]:
    layers = []
    for name, rank in ranks.items():
        if rank is None:
            weight = model_state[f"{name}.weight"].float()
            sigma = torch.linalg.svdvals(weight)
            out_features, in_features = weight.shape
            params = weight.numel()
        else:
            u, v = model_state[f"{name}.U"].float(), model_state[f"{name}.V"].float()
            sigma = singular_values(u, v)
            out_features, in_features = u.shape[0], v.shape[1]
            params = u.numel() + v.numel()
        match = _BLOCK.match(name)
        layers.append(LayerRank(
            layer=name, block=int(match.group(1)) if match else -1, kind=layer_kind(name), rank=rank,
            max_rank=min(out_features, in_features), stable_rank=_stable_rank(sigma), params=params,
            dense_params=out_features * in_features,
        ))
    return layers


def rank_history(events: list[dict[str, Any]], until: int | None = None) -> dict[str, list[tuple[int, int | None]]]:
    """Each layer's (step, rank) points: its starting rank, one point per rank_update (changed or not), and the
    ranks held at step `until` (e.g. the checkpoint's step) when that is later than the last update."""
    start = next((e for e in events if e["event"] == "run_start"), None)
    if start is None:
        return {}
    current: dict[str, int | None] = dict(start["layer_ranks"])
    history = {name: [(start["step"], rank)] for name, rank in current.items()}
    for event in events:
        if event["event"] == "run_start":
            current.update(event["layer_ranks"])  # a resumed run restates the ranks it continues from
        elif event["event"] == "rank_change":
            current[event["layer"]] = event["new_rank"]
        elif event["event"] == "rank_update":
            for name, rank in current.items():
                history[name].append((event["step"], rank))
    if until is not None:
        for name, rank in current.items():
            if history[name][-1][0] < until:
                history[name].append((until, rank))
    return history


def find_checkpoint(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint, train.jsonl or None) for a run directory or a checkpoint file."""
    if path.is_dir():
        for candidate in ("last.pt", "best.pt"):
            if (path / candidate).is_file():
                log = path / "train.jsonl"
                return path / candidate, log if log.is_file() else None
        raise UserError(f"{path}: no last.pt or best.pt in this run directory")
    if not path.exists():
        raise UserError(f"no such run directory or checkpoint: {path}")
    log = path.parent / "train.jsonl"
    return path, log if log.is_file() else None


def rank_report(path: Path, *, history: bool = False) -> RankReport:
    checkpoint_path, log = find_checkpoint(path)
    checkpoint = load_checkpoint(checkpoint_path)
    report = RankReport(
        source=str(checkpoint_path),
        step=int(checkpoint["step"]),
        policy=checkpoint["config"].get("rank", {}).get("policy", "unknown"),
        layers=layer_ranks_from_state(checkpoint["model"], checkpoint["ranks"]),
    )
    if history:
        if log is None:
            raise UserError(f"--history needs the run's train.jsonl next to {checkpoint_path}")
        events = [e for e in read_events(log) if e["step"] <= report.step]
        report.history = rank_history(events, until=report.step)
    return report

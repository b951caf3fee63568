"""The model's learned scalars and gates, found generically, grouped by name, and flagged when driven near 0.

Which parameters: those the optimizer trains as scalars (`split_parameters(model)["scalar"]`: everything that is
not a projection, an embedding or lookup table, their projections or the head), so gains, mixes, skip weights and
any gate added to the model later (SmearGate, BigramHash scale, skip gates, value-residual mixes, attention gates)
are picked up without changes here.

How they are shown: a 2-D parameter that is a stack of vectors (`resid_mix` 2×d, `skip_weights` S×d) is split
along its short side into vectors named `name[i]` (the weight of a small gate layer stays whole); the block prefix
`blocks.N.` is stripped to make a group (`attn.q_gain`, `resid_mix[1]`), so groups that every block has become a
per-layer table and the rest are listed one by one. Values are the raw parameters.

Near-zero rule: a vector is flagged when its mean |x| is below `NEAR_ZERO` × max(1, mean |x| at initialisation):
"driven to 0" when it started away from 0 (initial mean |x| ≥ 0.1), "stayed at 0" when it started there. The
initial values come from a freshly built model of the same config (scalars start from fixed constants). Gates read
through a sigmoid (`SIGMOID_GATES`) are never flagged: their 0 is a half-open gate, not an unused feature.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from alrt_core.model.gpt import GPT
from alrt_core.training.optimizers import split_parameters

NEAR_ZERO = 0.01
STARTED_AWAY_FROM_ZERO = 0.1
_BLOCK = re.compile(r"^blocks\.(\d+)\.")

# What known groups mean (glob on the group name); unknown names are shown as they are.
DESCRIPTIONS: dict[str, str] = {
    "attn.q_gain": "query gain per head (after QK-norm)",
    "attn_scale": "attention output scale per channel",
    "mlp_scale": "MLP output scale per channel",
    "resid_mix[[]0[]]": "residual mix: weight of the running stream",
    "resid_mix[[]1[]]": "residual mix: weight of the initial embedding x0",
    "skip_weights[[]*[]]": "U-Net skip weight (encoder → decoder)",
    "skip_gates[[]*[]]": "U-Net skip gate g: lerp(w·skip, x, sigmoid(g))",
    "smear.lam": "SmearGate strength λ",
    "smear.gate.weight": "SmearGate gate weights (sigmoid)",
    "bigram.scale": "BigramHash output scale",
    "attn.gate.weight": "attention output gate per head (sigmoid)",
    "attn.value_embed_scale": "value-embedding scale",
    "attn.value_mix": "value residual mix (first V, own V)",
}
SIGMOID_GATES = ("skip_gates[[]*[]]", "smear.gate.weight", "attn.gate.weight")


def _matches(group: str, patterns: Any) -> str | None:
    return next((pattern for pattern in patterns if fnmatch.fnmatchcase(group, pattern)), None)


def describe(group: str) -> str:
    pattern = _matches(group, DESCRIPTIONS)
    return DESCRIPTIONS[pattern] if pattern else ""


@dataclass
class ScalarEntry:
    name: str  # full name, with [i] for a row of a 2-D parameter
    group: str  # name without the blocks.N. prefix
    block: int | None
    description: str
    numel: int
    mean: float
    mean_abs: float
    std: float
    min: float
    max: float
    init_mean_abs: float | None
    flag: str | None  # "driven to 0" | "stayed at 0" | None
    values: list[float] | None  # the values themselves when there are few

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scalar_parameters(model: GPT) -> dict[str, Tensor]:
    """Every learned scalar/gate parameter by name: the optimizer's scalar group."""
    scalar_ids = {id(p) for p in split_parameters(model)["scalar"]}
    return {name: p.detach() for name, p in model.named_parameters() if id(p) in scalar_ids}


def _layer_weights(model: nn.Module) -> set[str]:
    """Names of parameters that belong to a linear layer (a gate's weight matrix: kept whole)."""
    return {f"{module_name}.{name}" for module_name, module in model.named_modules() if isinstance(module, nn.Linear)
            for name, _ in module.named_parameters(recurse=False)}


def _vectors(name: str, tensor: Tensor, whole: bool) -> list[tuple[str, Tensor]]:
    """A parameter as named vectors: a 2-D stack of vectors split along its short side."""
    if not whole and tensor.ndim == 2 and tensor.shape[0] != tensor.shape[1]:
        axis = 0 if tensor.shape[0] < tensor.shape[1] else 1
        return [(f"{name}[{i}]", tensor.select(axis, i)) for i in range(tensor.shape[axis])]
    return [(name, tensor)]


def initial_scalars(model: GPT) -> dict[str, Tensor]:
    """The scalar parameters of a freshly built model of the same config (dense: no SVD at construction)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = GPT(model.config)
    return scalar_parameters(fresh)


def scalar_report(model: GPT) -> list[ScalarEntry]:
    initial = initial_scalars(model)
    layer_weights = _layer_weights(model)
    entries = []
    for name, tensor in scalar_parameters(model).items():
        whole = name in layer_weights
        same = name in initial and initial[name].shape == tensor.shape
        init_vectors = dict(_vectors(name, initial[name], whole)) if same else {}
        for vector_name, vector in _vectors(name, tensor, whole):
            x = vector.double().flatten()
            mean_abs = float(x.abs().mean())
            init = init_vectors.get(vector_name)
            init_mean_abs = float(init.double().abs().mean()) if init is not None else None
            reference = max(1.0, init_mean_abs or 0.0)
            match = _BLOCK.match(vector_name)
            group = vector_name[match.end():] if match else vector_name
            flag = None
            if mean_abs < NEAR_ZERO * reference and not _matches(group, SIGMOID_GATES):
                started_away = init_mean_abs is None or init_mean_abs >= STARTED_AWAY_FROM_ZERO
                flag = "driven to 0" if started_away else "stayed at 0"
            entries.append(ScalarEntry(
                name=vector_name, group=group, block=int(match.group(1)) if match else None,
                description=describe(group), numel=x.numel(), mean=float(x.mean()), mean_abs=mean_abs,
                std=float(x.std()) if x.numel() > 1 else 0.0, min=float(x.min()), max=float(x.max()),
                init_mean_abs=init_mean_abs, flag=flag, values=[float(value) for value in x] if x.numel() <= 8 else None,
            ))
    return entries


def per_layer_groups(entries: list[ScalarEntry]) -> dict[str, dict[int, ScalarEntry]]:
    """group -> {block: entry} for groups found in blocks (the per-layer table), in first-seen order."""
    groups: dict[str, dict[int, ScalarEntry]] = {}
    for entry in entries:
        if entry.block is not None:
            groups.setdefault(entry.group, {})[entry.block] = entry
    return groups

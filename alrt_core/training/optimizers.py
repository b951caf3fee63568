"""Parameter groups: Muon for projection matrices (dense weights and both factors), AdamW for the rest."""

from __future__ import annotations

import torch
from torch import nn

from alrt_core.config import TrainConfig
from alrt_core.model.gpt import GPT
from alrt_core.training.muon import Muon


def split_parameters(model: GPT) -> dict[str, list[nn.Parameter]]:
    """Group every trainable parameter exactly once: matrices, embedding, head, scalars/vectors."""
    # Optional lookup tables (BigramHash, value embeddings) train like the embedding; their projections to the
    # width are plain (never factorised) Muon matrices.
    matrices = [p for layer in model.projections().values() for p in layer.parameters()]
    matrices += list(model.extra_matrices().values())
    embedding = [model.embed.weight, *model.extra_tables().values()]
    head = [model.head.weight] if model.head is not None else []
    taken = {id(p) for p in matrices + embedding + head}
    scalars = [p for p in model.parameters() if id(p) not in taken]
    return {"matrix": matrices, "embed": embedding, "head": head, "scalar": scalars}


def build_optimizers(model: GPT, config: TrainConfig, bf16: bool | None = None) -> list[torch.optim.Optimizer]:
    """Optimizers in a fixed order (their state dicts are saved as a list in that order). `bf16`: the run's
    precision, which Muon's Newton–Schulz iterations follow (None: measured on the device)."""
    groups = split_parameters(model)
    dense = [p for layer in model.projections().values() if not layer.is_factorized for p in layer.parameters()]
    dense += list(model.extra_matrices().values())
    factors = [p for layer in model.projections().values() if layer.is_factorized for p in layer.parameters()]
    # Two Muon groups, always both (a resize moves no parameter between them): dense matrices get Muon's
    # aspect-ratio scaling; factors get `train.factor_scaling` (see Muon.step).
    muon = Muon(
        [{"params": dense, "name": "dense", "aspect_scaling": True},
         {"params": factors, "name": "factor", "aspect_scaling": config.factor_scaling == "aspect"}],
        lr=config.matrix_lr, momentum=config.muon_momentum,
        ns_steps=config.muon_ns_steps, weight_decay=config.weight_decay, row_normalize=config.muon_row_normalize,
        ns_bf16=bf16,
    )
    # Decoupled weight decay per group (p ← p·(1 − lr·wd)); an untied head gets none, as in the golf records.
    adam_groups = [
        {"params": groups["embed"], "lr": config.embed_lr, "weight_decay": config.embed_weight_decay, "name": "embed"},
        {"params": groups["scalar"], "lr": config.scalar_lr, "weight_decay": config.scalar_weight_decay, "name": "scalar"},
    ]
    if groups["head"]:
        adam_groups.append({"params": groups["head"], "lr": config.head_lr, "weight_decay": 0.0, "name": "head"})
    adam = torch.optim.AdamW(
        adam_groups, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps, weight_decay=0.0,
    )
    optimizers: list[torch.optim.Optimizer] = [muon, adam]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def set_lr_scale(optimizers: list[torch.optim.Optimizer], scale: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale


def set_muon_momentum(optimizers: list[torch.optim.Optimizer], momentum: float) -> None:
    for optimizer in optimizers:
        if isinstance(optimizer, Muon):
            for group in optimizer.param_groups:
                group["momentum"] = momentum

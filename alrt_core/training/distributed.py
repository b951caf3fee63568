"""Process-group setup for torchrun: `nccl` on CUDA, `gloo` on CPU, and a no-op for a single process."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from alrt_core.errors import UserError


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank `src`'s tensor on every rank (a copy of the input for a single process)."""
        if self.enabled:
            tensor = tensor.to(self.device)
            dist.broadcast(tensor, src=src)
        return tensor.cpu()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: CUDA is not available on this machine")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda[:N], got {requested!r}")
    return torch.device(requested)


def init_distributed(requested_device: str = "auto") -> DistributedContext:
    """Join the torchrun process group if RANK/WORLD_SIZE are set; otherwise a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu" and world > 1:
        # Processes sharing one machine split its cores instead of oversubscribing them.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world, device=device)


def shutdown_distributed(clean: bool = True) -> None:
    """Leave the process group. After a clean run every process first drops what still references the group's
    work (DDP's reducer, finished collectives' tensors) and waits at a barrier, so no process tears down its gloo
    connections, or exits with gloo worker threads still holding work, while a peer is still communicating (a
    2-process run once aborted in rank 1 with "terminate called without an active exception"). After an error
    the barrier is skipped: a peer that failed would never reach it."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if clean:
        gc.collect()
        dist.barrier()
    dist.destroy_process_group()

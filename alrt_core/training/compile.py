"""`train.compile`: torch.compile the model, and fall back to eager execution when compilation is unavailable.

Compilation can fail at two moments: when `torch.compile` is called (an unsupported Python or platform) and at the
first forward/backward, where dynamo traces and the backend builds kernels (no C++ compiler for inductor on CPU,
no Triton on an old GPU, an operator the backend cannot lower). The trainer calls `compile_model` and then
`probe` on one real micro-batch before training starts; either failure returns the reason, and the run goes on
eagerly with one warning on stderr instead of ending.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn


def describe(error: BaseException) -> str:
    """One line: the exception type and the first line of its message."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}"[:300] if first_line else type(error).__name__


def compile_model(model: nn.Module, *, dynamic_parameter_shapes: bool) -> tuple[nn.Module, str | None]:
    """(compiled model, None), or (the model itself, why compiling failed)."""
    if dynamic_parameter_shapes:
        # Resized factors change parameter shapes. With static parameter shapes every resize would recompile
        # (~12 s on CPU) until dynamo's recompile limit drops to eager; dynamic ones compile once more at the first
        # resize and then run at the same speed.
        torch._dynamo.config.force_parameter_static_shapes = False
    try:
        return torch.compile(model), None
    except Exception as error:  # noqa: BLE001 - any failure to set up compilation means: run eagerly
        return model, describe(error)


def mark_ranks_dynamic(model: nn.Module) -> None:
    """Mark the rank dimension of every factor (`U`'s columns, `V`'s rows) dynamic, before compiling and again on
    the new parameters after each resize. Left to dynamo's automatic dynamic shapes, the first compilation
    specialises on the starting ranks and the first resize compiles everything again: on the `cpu` shape at width
    128, 56 s, then 39 s more at the first resize; marked, 68 s once and no recompilation at any resize, the same
    step time."""
    for module in model.modules():
        u, v = getattr(module, "U", None), getattr(module, "V", None)
        # Dynamo specialises sizes 0 and 1, so a rank-1 factor stays static (it recompiles if it moves).
        if isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and u.shape[1] > 1:
            torch._dynamo.mark_dynamic(u, 1)
            torch._dynamo.mark_dynamic(v, 0)


def probe(step: Callable[[], None]) -> str | None:
    """Run `step` (one forward and backward through the compiled model) with compile errors raised, not hidden.

    Returns None when it ran, else why it failed. Afterwards errors are suppressed again, so a later recompilation
    (after a rank resize, or when late QAT switches on) that fails runs that part eagerly instead of ending the run.
    """
    torch._dynamo.config.suppress_errors = False
    try:
        step()
        return None
    except Exception as error:  # noqa: BLE001 - whatever the compiler raised, eager execution is the fallback
        if is_out_of_memory(error):
            raise  # not a compiler failure: the eager step would not fit either
        torch._dynamo.reset()
        return describe(error)
    finally:
        torch._dynamo.config.suppress_errors = True


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(error)


def warn_fallback(reason: str) -> None:
    print(f"warning: torch.compile failed ({reason}); training continues without compilation",
          file=sys.stderr, flush=True)

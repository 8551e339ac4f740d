"""Which process this is when `accelerate launch` (torchrun) starts several, and how they wait.

A run launched in N processes trains data-parallel in every process, but everything
that writes the run folder — resetting a stage, appending rows, checkpoints, adapters,
manifests — happens in the main process alone, and generation stages run there alone
while the others wait at a barrier. One process writing is what makes a multi-process
run resumable the same way as a single one: no duplicate rows, no two writers of one
manifest.

The process group is started here, before the Trainer would start it, with a long
timeout: the other processes wait at a barrier for as long as the main process
generates (hours, for a real run), and the default timeout of 30 minutes would kill
them. If the main process fails, torchrun ends the others.

Example:
    >>> from valign import distributed
    >>> distributed.world_size(), distributed.is_main()
    (1, True)
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")

# How long a waiting process may sit at a barrier: the longest stage the main process
# runs alone. Override with VALIGN_BARRIER_TIMEOUT_HOURS.
DEFAULT_BARRIER_HOURS = 48.0


def world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's place among them; 0 is the main process."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the run folder."""
    return rank() == 0


def _ensure_group() -> None:
    """Start the process group once, through accelerate, so the Trainer finds it started
    (accelerate keeps one shared state per process): gloo on CPUs, NCCL on GPUs."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    from accelerate import PartialState

    hours = float(os.environ.get("VALIGN_BARRIER_TIMEOUT_HOURS", DEFAULT_BARRIER_HOURS))
    PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=hours))


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in a single process)."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    _ensure_group()
    dist.barrier()


def gather_with_offset(items: list[T]) -> tuple[list[T], int]:
    """Every process's ``items``, concatenated in rank order, and where this process's
    own begin in that list; in a single process, ``(items, 0)``.

    Example:
        >>> gather_with_offset(["a", "b"])
        (['a', 'b'], 0)
    """
    if world_size() <= 1:
        return list(items), 0
    import torch.distributed as dist

    _ensure_group()
    parts: list[list[T] | None] = [None] * world_size()
    dist.all_gather_object(parts, list(items))
    start = sum(len(p or []) for p in parts[: rank()])
    return [x for p in parts for x in (p or [])], start

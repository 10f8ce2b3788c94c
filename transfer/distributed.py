"""The process group of a run started by ``torchrun``, and what ranks need to agree on.

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous variables (MASTER_ADDR/PORT); torch's ``env://``
init method reads them, so this module only picks the backend, the CUDA device, and tears the group down cleanly.
Without torchrun (no WORLD_SIZE, or 1) nothing is initialised and every helper answers as for one process.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes the run directory, checkpoints and W&B."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(obj: object) -> list[object]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` with one process."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over ranks (``t`` itself with one process); ``t`` must be on the backend's device."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@contextlib.contextmanager
def process_group_from_env() -> Iterator[int]:
    """Initialise the process group when started by torchrun (WORLD_SIZE > 1); yields the world size.

    NCCL on CUDA (each process on the GPU of its LOCAL_RANK), gloo on CPU. On exit every rank meets at a barrier
    before the group is destroyed: gloo aborts a rank whose peer closed its sockets first (seen as rank 1 dying at
    exit). A group that someone else initialised is left alone.
    """
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield world_size()
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    ok = False
    try:
        yield dist.get_world_size()
        ok = True
    finally:
        # after an error on one rank the others may never reach the barrier: skip it, destroy only
        if ok:
            dist.barrier()
        dist.destroy_process_group()

"""DataLoader workers: each reseeded per epoch from (seed, rank, epoch, worker), so an epoch's draws in a worker are
the same whether or not the run was resumed before it."""
from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset

from transfer.engine import make_loader, worker_epoch_seed
from transfer.runs.seeding import loader_seed


class _Draws(Dataset):
    """Draws in the worker (as an augmenting dataset would)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.rand(1), "index": i, "r": random.random()}


def _epochs(start: int, n: int, rank: int = 0) -> list:
    loader = make_loader(_Draws(), 2, shuffle=True, num_workers=2, seed=3, worker_seed=loader_seed(3, rank))
    out = []
    for e in range(start, start + n):
        loader.sampler.set_epoch(e)
        out.append([(b["index"].tolist(), b["image"].flatten().tolist(), b["r"].tolist()) for b in loader])
    return out


def test_worker_draws_of_an_epoch_do_not_depend_on_where_the_run_started():
    full = _epochs(0, 3)
    assert _epochs(2, 1) == full[2:]  # a run resumed at epoch 2: fresh workers, the same draws
    assert full[0] != full[1]  # another epoch, other draws
    other_rank = _epochs(0, 1, rank=1)[0]
    assert [b[0] for b in other_rank] == [b[0] for b in full[0]]  # the shuffle is shared by ranks ...
    assert [b[1] for b in other_rank] != [b[1] for b in full[0]]  # ... the workers' draws are not


def test_worker_epoch_seeds_are_distinct():
    seeds = {worker_epoch_seed(loader_seed(s, r), e, w) for s in range(3) for r in range(3) for e in range(4)
             for w in range(4)}
    assert len(seeds) == 3 * 3 * 4 * 4 and all(0 <= x < 2**63 for x in seeds)

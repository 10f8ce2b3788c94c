"""Seeds for Python, NumPy and torch: one per run, offset per rank and per DataLoader worker.

Under torchrun every rank must draw its own augmentations (flips, crops, the refinement's jitter, stage-1 views):
with one seed for all, two ranks apply the same random transform to different images, and half the augmentation
a batch should see is lost. nanoGPT's way: a seed offset per rank. Rank 0 keeps the run's ``seed`` itself, so a
one-process run draws exactly what it drew before, and rank 0 of a multi-process run draws what it would alone.
What every rank must share (splits, label fractions, each epoch's shuffle) is drawn from generators seeded with
the run's ``seed`` directly, never from these. Worker processes of a DataLoader get a seed per (rank, epoch, worker)
(see :func:`loader_seed`).
"""
from __future__ import annotations

import random

import numpy as np
import torch

#: rank r's offset is r times this odd 63-bit constant (the golden ratio's), so rank seeds of neighbouring run seeds
#: (seed 0 rank 1, seed 1 rank 0) never coincide
_RANK_STRIDE = 0x9E3779B97F4A7C15 >> 1


def rank_seed(seed: int, rank: int = 0) -> int:
    """The seed of ``rank``'s RNGs in a run seeded with ``seed`` (``seed`` itself for rank 0)."""
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    return (seed + rank * _RANK_STRIDE) % 2**63


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA) for ``rank`` of a run seeded with ``seed``; returns the seed used."""
    s = rank_seed(seed, rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


def loader_seed(seed: int, rank: int = 0) -> int:
    """The seed of a training DataLoader's generator on ``rank``: torch seeds worker w's Python, NumPy and torch
    RNGs from (a draw of this generator, w), so workers differ within a rank and between ranks. Workers persist
    across epochs (``persistent_workers``), so ``transfer.engine.make_loader`` also reseeds each worker at the start
    of every epoch from (this seed, epoch, worker) (``transfer.engine.worker_epoch_seed``): a worker's draws in epoch
    k depend on (seed, rank, epoch, worker) alone, and a run resumed at epoch k draws what an uninterrupted one
    does."""
    return rank_seed(seed, rank)

"""Seeds per rank: rank 0 keeps the run's seed, every other rank draws its own augmentations."""
from __future__ import annotations

import torch

from transfer.data.augment import BatchAugment
from transfer.config.experiment import AugmentConfig
from transfer.runs.seeding import loader_seed, rank_seed, seed_everything


def test_rank_zero_keeps_the_seed_and_ranks_differ():
    assert rank_seed(7, 0) == 7 and loader_seed(7, 0) == 7
    seeds = {rank_seed(s, r) for s in range(5) for r in range(8)}
    assert len(seeds) == 40  # no (seed, rank) pair shares another's stream (seed 1 rank 0 vs seed 0 rank 1)
    assert seed_everything(3, 0) == 3


def _draws(seed: int, rank: int) -> torch.Tensor:
    seed_everything(seed, rank)
    aug = BatchAugment(AugmentConfig(hflip=True, rotation=10.0, brightness=0.2))
    images, _ = aug(torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    return images


def test_ranks_draw_different_augmentations_of_the_same_images():
    assert torch.equal(_draws(0, 0), _draws(0, 0))  # reproducible per (seed, rank)
    assert not torch.allclose(_draws(0, 0), _draws(0, 1))

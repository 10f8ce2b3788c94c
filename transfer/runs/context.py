"""What a run works out once, from its config and the process it runs in, and hands down to every step.

A fine-tune or a pretrain run used to ask again at every level which device it ran on, under which autocast, as
which rank, and with which seed, each time from the whole config. :class:`RunContext` answers once, at the top of
the run (:meth:`RunContext.resolve`), and every step below (model building, each fit, scoring, the probe) takes it:
the training engine, the DataLoader and every scoring pass then agree by construction (torchvision's reference
``train.py`` keeps the same facts in its ``args`` after ``init_distributed_mode``; here they are typed and frozen).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from transfer.config import RuntimeConfig
from transfer.distributed import rank, world_size
from transfer.engine import Engine, make_loader, resolve_device
from transfer.precision import Precision
from transfer.runs.seeding import loader_seed, rank_seed, seed_everything


@dataclass(frozen=True)
class RunContext:
    """The device, precision, process and seeds of one run.

    ``seed`` is the run's seed: what every rank must share (splits, label fractions, each epoch's shuffle, the
    model's initial weights) is drawn from it. ``rank_seed`` is this rank's own (``seed`` itself on rank 0): the
    augmentations, crops, jitter and views each rank draws for its shard.
    """

    device: torch.device
    precision: Precision
    rank: int
    world_size: int
    seed: int
    compile: bool = False

    @classmethod
    def resolve(cls, runtime: RuntimeConfig, seed: int) -> "RunContext":
        """The context of a run of ``runtime`` and ``seed`` in this process."""
        dev = resolve_device(runtime.device)
        return cls(device=dev, precision=Precision.resolve(dev, runtime.amp, runtime.channels_last),
                   rank=rank(), world_size=world_size(), seed=seed, compile=runtime.compile)

    @property
    def rank_seed(self) -> int:
        return rank_seed(self.seed, self.rank)

    @property
    def rank_seeds(self) -> list[int]:
        """Every rank's seed, in rank order (recorded in the summary: ranks draw their own augmentations)."""
        return [rank_seed(self.seed, r) for r in range(self.world_size)]

    @property
    def device_name(self) -> str | None:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None

    def seed_shared(self) -> None:
        """Seed every RNG with the run's seed: for draws all ranks must make alike (a model's initial weights)."""
        seed_everything(self.seed)

    def seed_own(self) -> None:
        """Seed every RNG with this rank's seed: for the draws of training (augmentations, crops, views)."""
        seed_everything(self.seed, self.rank)

    def engine(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, grad_clip: float | None = None,
               progress: bool = True, train_mode: Callable[[], None] | None = None) -> Engine:
        """The training engine on this run's device and precision (so training and scoring run alike)."""
        return Engine(model, optimizer, scheduler=scheduler, device=self.device, compile=self.compile,
                      grad_clip=grad_clip, progress=progress, train_mode=train_mode, precision=self.precision)

    def train_loader(self, dataset: Dataset, batch_size: int, *, num_workers: int, drop_last: bool,
                     num_samples: int | None = None) -> DataLoader:
        """The training DataLoader: the shuffle from the run's seed (shared by ranks, each rank its shard), the
        workers' RNGs from this rank's seed (see :func:`transfer.runs.seeding.loader_seed`)."""
        return make_loader(dataset, batch_size, shuffle=True, num_workers=num_workers, seed=self.seed,
                           drop_last=drop_last, device=self.device, num_samples=num_samples,
                           worker_seed=loader_seed(self.seed, self.rank))

"""The one training loop for every task and stage-1 method.

Device-agnostic: CPU here; on CUDA it uses AMP (bf16 where supported, else
fp16 with a gradient scaler), channels_last and optional ``torch.compile``;
under ``torchrun`` it wraps the model in DistributedDataParallel and shards
batches with a DistributedSampler.
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from transfer.api import Batch
from transfer.config.pretrain import method_options_only
from transfer.distributed import all_gather_object, all_reduce_sum, is_main_process, rank, world_size
from transfer.errors import MedTransferError, UnsafeCheckpointError
from transfer.precision import Precision, amp_dtype  # noqa: F401 (amp_dtype: re-exported)
from transfer.safe_load import load_weights_only
from transfer.tracking import RESTART_OR_RENAME as _WAYS_OUT
from transfer.tracking import atomic_torch_save, config_changes, config_fingerprint


class ResumeStateError(MedTransferError):
    """A resume state (``last.pt``) that cannot be read, or that another config wrote."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if dist.is_available() and dist.is_initialized() and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@runtime_checkable
class EpochSampler(Protocol):
    """A sampler whose order is a function of the epoch (``EpochRandomSampler``, torch's ``DistributedSampler``)."""

    def set_epoch(self, epoch: int) -> None: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of ``epoch``'s shuffle: a function of (seed, epoch) alone, so a resumed run needs no sampler state."""
    return (seed * 1_000_003 + epoch) % 2**63


class EpochRandomSampler(Sampler[int]):
    """Shuffled indices drawn from a generator seeded with ``epoch_seed(seed, epoch)``.

    Like torch's ``RandomSampler`` without replacement: ``num_samples`` (default ``n``) indices from consecutive
    shuffled passes. :meth:`set_epoch` pins the epoch (the engine calls it before every epoch, so epoch k's order is
    the same whether or not the run was interrupted before it); without it, each pass moves to the next epoch.

    Under DDP (``world_size`` > 1) every rank draws the same global sequence of ``num_samples * world_size`` indices
    and takes its own share of every step's global batch: step s's ``batch_size * world_size`` indices, rank r's
    ``batch_size`` of them from position ``r * batch_size``. So W ranks at batch B see, step by step, the images one
    process sees at batch W * B, whatever the dataset's size (``train.steps_per_epoch``).
    """

    def __init__(self, n: int, seed: int = 0, num_samples: int | None = None, *, rank: int = 0,
                 world_size: int = 1, batch_size: int | None = None) -> None:
        self.n, self.seed = n, seed
        self.num_samples = n if num_samples is None else num_samples
        self.rank, self.world_size = rank, world_size
        if world_size > 1 and (batch_size is None or self.num_samples % batch_size):
            raise ValueError(f"a sampler shared by {world_size} ranks needs num_samples ({self.num_samples}) to be a "
                             f"multiple of batch_size ({batch_size})")
        self.batch_size = batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        if self.n == 0:  # an empty training set: the engine says so when the epoch has no batch
            return
        total = self.num_samples * self.world_size
        order = [torch.randperm(self.n, generator=g) for _ in range(total // self.n)]
        order.append(torch.randperm(self.n, generator=g)[: total % self.n])
        indices = torch.cat(order).tolist()
        if self.world_size == 1:
            yield from indices
            return
        b, w = self.batch_size, self.world_size
        assert b is not None
        for step in range(self.num_samples // b):
            start = step * b * w + self.rank * b
            yield from indices[start : start + b]


def worker_epoch_seed(base: int, epoch: int, worker: int) -> int:
    """The seed of DataLoader worker ``worker`` in ``epoch`` of a loader whose generator was seeded with ``base``
    (a run's ``transfer.runs.seeding.loader_seed(seed, rank)``): a 63-bit hash of (base, epoch, worker), so no two
    (rank, epoch, worker) share a stream, and epoch k's is the same whether or not the run was resumed before it."""
    import hashlib

    digest = hashlib.blake2b(f"{base}:{epoch}:{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _EpochKeys(Sampler):
    """Wraps an epoch sampler: yields ``(epoch, index)``, so a worker knows which epoch an item belongs to."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = int(self.inner.epoch)  # read before the inner sampler starts (EpochRandomSampler moves it on)
        for i in self.inner:
            yield epoch, i


class _EpochSeeded(Dataset):
    """Wraps a dataset read by worker processes: at its first item of each epoch, a worker seeds Python, NumPy and
    torch with :func:`worker_epoch_seed` (base, epoch, worker id). Workers persist across epochs
    (``persistent_workers``), so without this a worker's random stream would run on from epoch to epoch, and a
    run resumed at epoch k would restart it: an augmentation drawn in a worker would differ from the uninterrupted
    run's. With it, what a worker draws in epoch k depends on (seed, rank, epoch, worker) alone."""

    def __init__(self, inner: Dataset, base: int) -> None:
        self.inner, self.base = inner, base
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "base", "_epoch") or name.startswith("__"):  # unpickling; __getitems__ takes indices
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, i = key
        if epoch != self._epoch:
            info = torch.utils.data.get_worker_info()
            s = worker_epoch_seed(self.base, epoch, info.id if info is not None else 0)
            random.seed(s)
            np.random.seed(s % 2**32)
            torch.manual_seed(s)
            self._epoch = epoch
        return self.inner[i]


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int = 0, seed: int = 0,
                drop_last: bool = False, device: torch.device | None = None,
                num_samples: int | None = None, worker_seed: int | None = None) -> DataLoader:
    """A DataLoader that shards across processes under DDP and is reproducible per seed and epoch.

    The shuffle of epoch k depends on (seed, k) only (:class:`EpochRandomSampler`, or ``DistributedSampler``'s
    ``set_epoch``), so a run resumed before epoch k sees the same batches as an uninterrupted one.
    ``num_samples``: samples per epoch (per process) drawn from consecutive shuffled passes (torch's RandomSampler
    without replacement), for a fixed number of steps per epoch whatever the dataset size; under DDP each rank takes
    its share of every step's global batch (:class:`EpochRandomSampler`). ``worker_seed``: the seed of the loader's
    generator, from which torch seeds its worker processes (default ``seed``; runs pass one per rank,
    ``transfer.runs.seeding.loader_seed``); the shuffle never depends on it, so every rank shares it. With workers
    and an epoch sampler, each worker also reseeds at the start of every epoch from (worker_seed, epoch, worker id)
    (:class:`_EpochSeeded`): workers persist across epochs (``persistent_workers``), and a resumed run's draws in
    them match an uninterrupted run's. ``pin_memory`` on CUDA.
    """
    sampler: Sampler[int] | None = None
    g = torch.Generator()
    g.manual_seed(seed if worker_seed is None else worker_seed)
    if dist.is_available() and dist.is_initialized():
        if num_samples is not None:
            sampler = EpochRandomSampler(len(dataset), seed, num_samples, rank=dist.get_rank(),  # type: ignore[arg-type]
                                         world_size=dist.get_world_size(), batch_size=batch_size)
        else:
            sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle or num_samples is not None:
        sampler = EpochRandomSampler(len(dataset), seed, num_samples)  # type: ignore[arg-type]
    if num_workers > 0 and isinstance(sampler, EpochSampler):  # workers reseeded per epoch (never the main process)
        dataset, sampler = _EpochSeeded(dataset, seed if worker_seed is None else worker_seed), _EpochKeys(sampler)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=num_workers,
        drop_last=drop_last, generator=g, pin_memory=device is not None and device.type == "cuda",
        persistent_workers=num_workers > 0,
    )


#: integer images a dataset may hand over (a streamed pool's uint16 rows), and the value that maps to 1.0
_QUANTIZED = {torch.uint8: 255.0, torch.uint16: 65535.0}


def to_device(batch: Batch, device: torch.device, channels_last: bool = False) -> Batch:
    """The batch on ``device``; an ``image`` of uint8/uint16 (a streamed pool) is moved as integers (2-4x fewer
    bytes to copy and pin) and only then converted to float32 in [0, 1] (``q / 65535``: the same values as the
    decode cache's in-memory float images)."""
    out: Batch = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if k == "image" and v.dtype in _QUANTIZED:
                v = v.to(torch.float32).div_(_QUANTIZED[v.dtype])
            if channels_last and v.dim() == 4 and v.is_floating_point():
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


#: steps between host reads of the running loss (finiteness check, progress bar); each read syncs a GPU
SYNC_EVERY = 20


class _StepForward(nn.Module):
    """Routes ``forward`` to ``training_step`` so DDP's gradient hooks see the step."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.inner.training_step(batch)


@dataclass
class EpochStats:
    epoch: int
    loss: float
    steps: int
    images: int
    seconds: float
    data_seconds: float  #: time spent waiting for the loader
    logs: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    #: the logged learning rates: ``lr_<role>`` per parameter-group role (``lr_head``, ``lr_backbone``: the base
    #: rate of each, the same at every depth), or ``lr`` (the first group's) for groups without roles
    lrs: dict[str, float] = field(default_factory=dict)
    #: optimiser steps the fp16 gradient scaler skipped (inf/NaN gradients); None without a scaler
    skipped_steps: int | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    @property
    def data_wait_share(self) -> float:
        return self.data_seconds / max(self.seconds, 1e-9)


@dataclass
class FitResult:
    best_metric: float | None
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor] | None
    stopped_early: bool
    resumed_from: int | None = None  #: the first epoch trained after resuming from a saved state (None: fresh)


class Engine:
    """Trains a :class:`~transfer.api.StepModel` with an optimiser and a per-epoch schedule."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        device: torch.device | str = "cpu",
        amp: str = "auto",
        channels_last: bool = True,
        compile: bool = False,
        grad_clip: float | None = None,
        progress: bool = True,
        train_mode: Callable[[], None] | None = None,
        precision: Precision | None = None,
    ) -> None:
        self.device = torch.device(device) if isinstance(device, str) else device
        #: autocast dtype and memory format; a run resolves it once and scores under the same (``Task.precision``)
        self.precision = precision or Precision.resolve(self.device, amp, channels_last)
        self.model = self.precision.model(model.to(self.device))
        self.channels_last = self.precision.channels_last
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.dtype = self.precision.dtype
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.grad_clip = grad_clip
        self.progress = progress and is_main_process()
        self.train_mode = train_mode or self.model.train
        step: nn.Module = _StepForward(self.model)
        if dist.is_available() and dist.is_initialized():
            step = nn.parallel.DistributedDataParallel(
                step, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False,
            )
        self.step_module = torch.compile(step) if compile else step

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.precision.autocast(self.device.type)

    def train_epoch(self, loader: Iterable[Batch], epoch: int, *, max_steps: int | None = None,
                    progress_total: int | None = None, total_steps: int | None = None,
                    global_step: int = 0) -> EpochStats:
        """One pass over ``loader`` (at most ``max_steps`` batches); the mean loss is per image.

        ``total_steps``/``global_step`` give the model's ``after_optimizer_step`` its progress in [0, 1].
        The LR scheduler is not stepped here: :meth:`fit` steps it once per epoch, so benchmarks and
        stage-1 loops that call this directly see a constant learning rate.
        """
        self.train_mode()
        if isinstance(loader, DataLoader) and isinstance(loader.sampler, EpochSampler):
            loader.sampler.set_epoch(epoch)  # the epoch's shuffle from (seed, epoch): the same after a resume
        # running sums stay on the device; they are read (a host sync) only every SYNC_EVERY steps
        total = torch.zeros((), device=self.device)
        logs: dict[str, torch.Tensor] = {}
        steps = images = skipped = 0
        data_s = 0.0
        t0 = time.perf_counter()
        it = iter(loader)
        bar = self._progress_bar(progress_total, epoch)
        while max_steps is None or steps < max_steps:
            td = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            batch = to_device(batch, self.device, self.channels_last)
            data_s += time.perf_counter() - td
            with self.autocast():
                out = self.step_module(batch)
            stepped = self._backward_and_step(out["loss"])
            steps += 1
            if stepped:  # a step the fp16 scaler skipped (inf/NaN gradients) moves no momentum encoder either
                self.model.after_optimizer_step(min(1.0, (global_step + steps) / total_steps) if total_steps else 0.0)
            else:
                skipped += 1
            n = _batch_size(batch)
            images += n
            total = total + out["loss"].detach().float() * n
            for k, v in out.items():
                if k != "loss" and isinstance(v, torch.Tensor) and v.numel() == 1:
                    logs[k] = logs.get(k, 0.0) + v.detach().float().reshape(()) * n
            if bar is not None:
                bar.update(1)
            if steps % SYNC_EVERY == 0:
                mean = self._check_finite(total, images, epoch, steps)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean:.4f}")
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        if steps == 0:
            raise RuntimeError("the training loader produced no batch (empty training set?)")
        # under DDP each rank saw its shard: the epoch's row is over every rank's images (steps stay per rank)
        keys = sorted(logs)
        sums = all_reduce_sum(torch.stack([total, torch.tensor(float(images), device=self.device),
                                           *[logs[k] for k in keys]]).float())
        total, images = sums[0], int(sums[1])
        mean = self._check_finite(total, images, epoch, steps)
        return EpochStats(epoch, mean, steps, images, seconds, data_s,
                          {k: float(v) / images for k, v in zip(keys, sums[2:])}, self.optimizer.param_groups[0]["lr"],
                          lrs=group_lrs(self.optimizer), skipped_steps=skipped if self.scaler is not None else None)

    def _progress_bar(self, total: int | None, epoch: int) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)

    def _backward_and_step(self, loss: torch.Tensor) -> bool:
        """Backward pass and optimiser step, through the fp16 gradient scaler when there is one.

        Returns False when the scaler skipped the step (inf or NaN gradients: it lowers its scale instead), so the
        hooks that follow an optimiser step do not run for it. Only with a scaler does this read a value on the host.
        """
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        else:
            loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.grad_clip)
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return self.scaler.get_scale() >= scale  # the scale drops exactly when the step was skipped
        self.optimizer.step()
        return True

    @staticmethod
    def _check_finite(total: torch.Tensor, images: int, epoch: int, steps: int) -> float:
        mean = float(total) / max(images, 1)
        if not math.isfinite(mean):
            raise FloatingPointError(f"epoch {epoch}, by step {steps}: the training loss is {mean}")
        return mean

    def fit(
        self,
        loader: Iterable[Batch],
        epochs: int,
        *,
        evaluate: Callable[[int], dict[str, float]] | None = None,
        monitor: str | None = None,
        mode: str = "max",
        patience: int | None = None,
        min_delta: float = 0.0,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        state_of: Callable[[], dict[str, torch.Tensor]] | None = None,
        resume_path: Path | None = None,
        resume_config: dict[str, Any] | None = None,
        resume_data: dict[str, Any] | None = None,
        on_start: Callable[[list[dict[str, Any]]], None] | None = None,
        max_steps: int | None = None,
    ) -> FitResult:
        """Train for ``epochs``; select the best epoch on ``monitor`` of ``evaluate(epoch)``.

        ``state_of`` returns the state kept for the best epoch (default: the
        model's state dict). With ``resume_path``, state is saved there after
        every epoch and an interrupted fit continues from it: model (with its
        extra state, e.g. MoCo's queue), optimiser, scheduler, AMP scaler,
        selection and early stopping, and every RNG (Python, NumPy, torch CPU
        and CUDA); the shuffle of each epoch is a function of (seed, epoch)
        (:class:`EpochRandomSampler`), so on CPU the resumed fit equals an
        uninterrupted one. ``resume_config`` (the training-relevant config,
        flat) is stored with the state; a state stored with another one is
        refused (:class:`ResumeStateError` naming the changed keys). ``resume_data`` (what the fit trains on,
        e.g. :func:`transfer.data.fingerprint.data_fingerprint`) is stored beside it, for the caller to compare
        before it resumes.
        ``on_start(history)`` is called once before the first epoch this call
        trains (not when a restored fit has nothing left to train) with the
        restored history ([] when starting fresh), so logs can be made to match
        it: anything logged after the restored epochs is stale.
        When every monitored value is NaN, no epoch is selected: ``best_metric``
        and ``best_state`` are None and the model holds the last epoch's weights.
        An epoch for which ``evaluate`` returns nothing (a check every k epochs)
        is not selected and does not count against ``patience``; an improvement
        must exceed ``min_delta``.
        """
        selection = Selection(mode, min_delta=min_delta)
        state_of = state_of or self.model.state_dict
        history, start = self._load_resume(resume_path, selection, resume_config)
        resumed_from = start if history else None
        stopped = bool(history) and selection.exhausted(patience)  # it had stopped early before the interruption
        if on_start is not None and not stopped and start < epochs:
            on_start(history)
        per_epoch = _steps_per_epoch(loader, max_steps)
        total_steps = per_epoch * epochs if per_epoch else None
        for epoch in range(start, start if stopped else epochs):
            # the epoch's cost, training and evaluation, kept in its row: a resumed run adds up its earlier
            # sessions' epochs from the restored history (transfer.runs.timing)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            stats = self.train_epoch(loader, epoch, max_steps=max_steps, progress_total=per_epoch,
                                     total_steps=total_steps, global_step=(per_epoch or 0) * epoch)
            if self.scheduler is not None and stats.skipped_steps != stats.steps:
                # per epoch, after it: the row's lr is the one the epoch trained with; an epoch whose every step the
                # fp16 scaler skipped trained nothing, so its schedule does not advance either
                self.scheduler.step()
            row = _epoch_row(stats)
            measured = evaluate(epoch) if evaluate is not None else {}
            row.update({f"val_{k}": v for k, v in measured.items()})
            # an evaluation that measures every k epochs (stage 1's probe) returns nothing in between: those epochs
            # neither improve nor count against the patience
            if monitor is None or measured:
                selection.update(epoch, _monitored(row, monitor), state_of)
            row["best_epoch"] = selection.best_epoch
            row["epoch_seconds"] = time.perf_counter() - wall0
            row["epoch_cpu_seconds"] = time.process_time() - cpu0
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if resume_path is not None:
                rngs = all_gather_object(rng_state())  # every rank's: each draws its own augmentations
                if is_main_process():
                    self._save_resume(resume_path, history, selection, epoch, resume_config, rngs, resume_data)
            if selection.exhausted(patience):
                stopped = True
                break
        return FitResult(selection.best, selection.best_epoch, len(history), history, selection.best_state, stopped,
                         resumed_from)

    def _load_resume(self, path: Path | None, selection: Selection, config: dict[str, Any] | None
                     ) -> tuple[list[dict[str, Any]], int]:
        """Restore everything that decides what happens next from ``path``; returns (history, first epoch).

        Without a file there is nothing to resume: ([], 0).
        """
        if path is None or not Path(path).is_file():
            return [], 0
        ck = read_resume_state(path)
        if config is not None:
            check_resume_config(ck, path, config)
        try:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            if self.scheduler is not None and ck.get("scheduler"):
                self.scheduler.load_state_dict(ck["scheduler"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise ResumeStateError(f"{path}: the resume state does not fit this model or optimiser "
                                   f"({type(e).__name__}: {str(e).splitlines()[0]}); {_WAYS_OUT}") from None
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        selection.best, selection.best_epoch = ck["best"], ck["best_epoch"]
        selection.best_state, selection.bad_epochs = ck["best_state"], ck["bad_epochs"]
        per_rank = ck.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == world_size():
            set_rng_state(per_rank[rank()])
        elif ck.get("rng") is not None:
            set_rng_state(ck["rng"])  # rank 0's (an older state, or another world size): offset the other ranks
            if rank() > 0:
                offset = int(torch.randint(0, 2**62, (1,)).item()) + rank()
                random.seed(offset), np.random.seed(offset % 2**32), torch.manual_seed(offset)
        return ck["history"], ck["epoch"] + 1

    def _save_resume(self, path: Path, history: list[dict[str, Any]], selection: Selection, epoch: int,
                     config: dict[str, Any] | None, rngs: list[Any] | None = None,
                     data: dict[str, Any] | None = None) -> None:
        """Everything :meth:`_load_resume` needs to continue after ``epoch``, written atomically."""
        atomic_torch_save({
            "format": RESUME_FORMAT,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "history": history, "best": selection.best, "best_epoch": selection.best_epoch,
            "best_state": selection.best_state, "bad_epochs": selection.bad_epochs, "epoch": epoch,
            "rng": rng_state(), "rng_per_rank": rngs,
            "config": config, "config_fingerprint": config_fingerprint(config) if config is not None else None,
            "data": data,
        }, path)


#: version of the resume-state layout written by :meth:`Engine._save_resume`
RESUME_FORMAT = 2


def rng_state() -> dict[str, Any]:
    """The state of every RNG a training step may draw from: Python, NumPy, torch CPU and CUDA.

    Tensors, numbers and tuples only, so the resume state loads with ``weights_only=True`` (NumPy's key array is
    kept as a tensor).
    """
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s result (CUDA states only when the device count is the same)."""
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def read_resume_state(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """The resume state at ``path``; an unreadable (truncated, corrupt) file is a :class:`ResumeStateError`.

    ``mmap``: map the tensors instead of reading them (a check that looks at the config only reads no weights).
    """
    try:
        ck = load_weights_only(path, mmap=mmap)  # a state that would unpickle code is refused, never run
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # PytorchStreamReader, EOFError, UnpicklingError...: all mean the same to the user
        raise ResumeStateError(f"{path}: the resume state cannot be read, it is truncated or corrupt "
                               f"({type(e).__name__}); {_WAYS_OUT}") from None
    if not isinstance(ck, dict) or "history" not in ck or "epoch" not in ck:
        raise ResumeStateError(f"{path}: not a resume state of medtransfer; {_WAYS_OUT}")
    return ck


def check_resume_config(state: dict[str, Any], path: Path, config: dict[str, Any]) -> None:
    """Refuse a resume state written with another training config, naming the changed keys (dotted, old -> new)."""
    old = state.get("config")
    if old is None:
        raise ResumeStateError(f"{path}: the resume state records no config (written by an older medtransfer), so "
                               f"it cannot be checked against this one; {_WAYS_OUT}")
    if state.get("config_fingerprint") == config_fingerprint(config):
        return
    # a stage-1 state written before runs were keyed by their method's own options: compare those only
    changes = config_changes(method_options_only(old), config)
    if not changes:
        return
    raise ResumeStateError(f"{path}: the resume state was written with another config "
                           f"({'; '.join(changes) or 'fingerprint differs'}); {_WAYS_OUT}")


@dataclass
class Selection:
    """Model selection and early stopping on one monitored value per epoch.

    ``best`` is None until a finite value arrives (or always, without a monitor); ``best_state``
    is a CPU copy of the state at ``best_epoch``.
    """

    mode: str = "max"
    best: float | None = None
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    #: an improvement must exceed this (a probe's noise is not progress); the first finite value always counts
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {self.mode!r}")

    def update(self, epoch: int, value: float | None, state_of: Callable[[], dict[str, torch.Tensor]]) -> bool:
        """Record ``epoch``'s monitored ``value``; True (and a copy of ``state_of()`` kept) when it is the new best.

        ``value=None`` means no monitor: every epoch improves, so the last one is kept. A NaN never
        improves, so a run whose values are all NaN ends with ``best`` and ``best_state`` None.
        """
        if value is None:
            improved = True
        elif math.isnan(value):
            improved = False
        else:
            improved = self.best is None or (value > self.best + self.min_delta if self.mode == "max"
                                             else value < self.best - self.min_delta)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            # one copy on the host: the kept state must not follow the weights as training goes on
            self.best_state = {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                               for k, v in state_of().items()}  # (a module's extra state is not a tensor)
        else:
            self.bad_epochs += 1
        return improved

    def exhausted(self, patience: int | None) -> bool:
        """True when ``patience`` epochs in a row did not improve (never without a patience)."""
        return patience is not None and self.bad_epochs >= patience


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The rates to log: ``lr_<role>`` for each ``role`` of the parameter groups (the group's rate over its
    ``role_lr_mult``: layer decay and the bias multiplier taken out), else ``lr``, the first group's.

    Fine-tuning logs ``lr_head`` and ``lr_backbone`` (absent at depth ``head``): the lowest trained stage's rate
    would differ between depths with layer decay, so curves of different depths could not be compared.
    """
    out: dict[str, float] = {}
    for g in optimizer.param_groups:
        if "role" in g:
            out.setdefault(f"lr_{g['role']}", g["lr"] / g.get("role_lr_mult", 1.0))
    return out or {"lr": optimizer.param_groups[0]["lr"]}


def _steps_per_epoch(loader: Iterable[Batch], max_steps: int | None) -> int | None:
    """Batches per epoch: the loader's length capped by ``max_steps``; None when neither is known."""
    try:
        n_batches = len(loader)  # type: ignore[arg-type]
    except TypeError:
        n_batches = None
    return min(n_batches, max_steps) if (n_batches and max_steps) else (n_batches or max_steps)


def _epoch_row(stats: EpochStats) -> dict[str, Any]:
    """The per-epoch metrics row (``metrics.jsonl``) from an epoch's training statistics."""
    return {
        "epoch": stats.epoch, "train_loss": stats.loss, **(stats.lrs or {"lr": stats.lr}), "steps": stats.steps,
        "images_per_s": stats.images_per_s, "data_wait_share": stats.data_wait_share,
        **{f"train_{k}": v for k, v in stats.logs.items()},
        **({} if stats.skipped_steps is None else {"skipped_steps": stats.skipped_steps}),
    }


def _monitored(row: dict[str, Any], monitor: str | None) -> float | None:
    """The monitored value in ``row`` (``val_<monitor>`` first, then ``<monitor>``); None without a monitor."""
    if monitor is None:
        return None
    key = f"val_{monitor}" if f"val_{monitor}" in row else monitor
    if key not in row:
        raise KeyError(f"monitored metric {monitor!r} not among {sorted(row)}")
    return float(row[key])


def _batch_size(batch: Batch) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    return 1

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
from transfer.config import RuntimeConfig
from transfer.distributed import all_reduce_sum, is_main_process
from transfer.errors import MedTransferError
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


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """Autocast dtype, or None for full precision. AMP is only used on CUDA."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


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
    """

    def __init__(self, n: int, seed: int = 0, num_samples: int | None = None) -> None:
        self.n, self.seed = n, seed
        self.num_samples = n if num_samples is None else num_samples
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
        for _ in range(self.num_samples // self.n):
            yield from torch.randperm(self.n, generator=g).tolist()
        yield from torch.randperm(self.n, generator=g)[: self.num_samples % self.n].tolist()


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int = 0, seed: int = 0,
                drop_last: bool = False, device: torch.device | None = None,
                num_samples: int | None = None) -> DataLoader:
    """A DataLoader that shards across processes under DDP and is reproducible per seed and epoch.

    The shuffle of epoch k depends on (seed, k) only (:class:`EpochRandomSampler`, or ``DistributedSampler``'s
    ``set_epoch``), so a run resumed before epoch k sees the same batches as an uninterrupted one.
    ``num_samples``: samples per epoch drawn from consecutive shuffled passes (torch's RandomSampler without
    replacement), for a fixed number of steps per epoch whatever the dataset size.
    """
    sampler: Sampler[int] | None = None
    g = torch.Generator()
    g.manual_seed(seed)
    if dist.is_available() and dist.is_initialized():
        if num_samples is not None:
            raise ValueError("train.steps_per_epoch is not supported under DistributedDataParallel")
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle or num_samples is not None:
        sampler = EpochRandomSampler(len(dataset), seed, num_samples)  # type: ignore[arg-type]
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=num_workers,
        drop_last=drop_last, generator=g, pin_memory=device is not None and device.type == "cuda",
        persistent_workers=num_workers > 0,
    )


def to_device(batch: Batch, device: torch.device, channels_last: bool = False) -> Batch:
    out: Batch = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
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
    ) -> None:
        self.device = torch.device(device) if isinstance(device, str) else device
        self.model = model.to(self.device)
        self.channels_last = channels_last and self.device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.dtype = amp_dtype(self.device, amp)
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

    @classmethod
    def from_config(cls, model: nn.Module, optimizer: torch.optim.Optimizer, runtime: RuntimeConfig, *,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, grad_clip: float | None = None,
                    progress: bool = True, train_mode: Callable[[], None] | None = None) -> "Engine":
        """An engine on the device, precision and memory format of the ``runtime`` section."""
        return cls(model, optimizer, scheduler=scheduler, device=resolve_device(runtime.device), amp=runtime.amp,
                   channels_last=runtime.channels_last, compile=runtime.compile, grad_clip=grad_clip,
                   progress=progress, train_mode=train_mode)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

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
        steps = images = 0
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
            self._backward_and_step(out["loss"])
            steps += 1
            self.model.after_optimizer_step(min(1.0, (global_step + steps) / total_steps) if total_steps else 0.0)
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
                          {k: float(v) / images for k, v in zip(keys, sums[2:])}, self.optimizer.param_groups[0]["lr"])

    def _progress_bar(self, total: int | None, epoch: int) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        """Backward pass and optimiser step, through the fp16 gradient scaler when there is one."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        else:
            loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

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
        """
        selection = Selection(mode)
        state_of = state_of or self.model.state_dict
        history, start = self._load_resume(resume_path, selection, resume_config)
        resumed_from = start if history else None
        stopped = bool(history) and selection.exhausted(patience)  # it had stopped early before the interruption
        if on_start is not None and not stopped and start < epochs:
            on_start(history)
        per_epoch = _steps_per_epoch(loader, max_steps)
        total_steps = per_epoch * epochs if per_epoch else None
        for epoch in range(start, start if stopped else epochs):
            stats = self.train_epoch(loader, epoch, max_steps=max_steps, progress_total=per_epoch,
                                     total_steps=total_steps, global_step=(per_epoch or 0) * epoch)
            if self.scheduler is not None:
                self.scheduler.step()  # per epoch, after it: the row's lr is the one the epoch trained with
            row = _epoch_row(stats)
            if evaluate is not None:
                row.update({f"val_{k}": v for k, v in evaluate(epoch).items()})
            selection.update(epoch, _monitored(row, monitor), state_of)
            row["best_epoch"] = selection.best_epoch
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if resume_path is not None and is_main_process():
                self._save_resume(resume_path, history, selection, epoch, resume_config, resume_data)
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
        if ck.get("rng") is not None:
            set_rng_state(ck["rng"])
        return ck["history"], ck["epoch"] + 1

    def _save_resume(self, path: Path, history: list[dict[str, Any]], selection: Selection, epoch: int,
                     config: dict[str, Any] | None, data: dict[str, Any] | None = None) -> None:
        """Everything :meth:`_load_resume` needs to continue after ``epoch``, written atomically."""
        atomic_torch_save({
            "format": RESUME_FORMAT,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "history": history, "best": selection.best, "best_epoch": selection.best_epoch,
            "best_state": selection.best_state, "bad_epochs": selection.bad_epochs, "epoch": epoch,
            "rng": rng_state(),
            "config": config, "config_fingerprint": config_fingerprint(config) if config is not None else None,
            "data": data,
        }, path)


#: version of the resume-state layout written by :meth:`Engine._save_resume`
RESUME_FORMAT = 2


def rng_state() -> dict[str, Any]:
    """The state of every RNG a training step may draw from: Python, NumPy, torch CPU and CUDA."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s result (CUDA states only when the device count is the same)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def read_resume_state(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """The resume state at ``path``; an unreadable (truncated, corrupt) file is a :class:`ResumeStateError`.

    ``mmap``: map the tensors instead of reading them (a check that looks at the config only reads no weights).
    """
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
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
    changes = config_changes(old, config)
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
            improved = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
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
        "epoch": stats.epoch, "train_loss": stats.loss, "lr": stats.lr, "steps": stats.steps,
        "images_per_s": stats.images_per_s, "data_wait_share": stats.data_wait_share,
        **{f"train_{k}": v for k, v in stats.logs.items()},
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

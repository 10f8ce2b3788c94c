"""The contracts between the core and its plug-ins, and the registries plug-ins fill.

- :class:`Task` + :class:`TaskModel`: what a downstream task supplies to the shared fine-tuning pipeline.
- :class:`PretrainMethod`: what a stage-1 method supplies to the shared pretraining run.
- :data:`TASKS`, :data:`PRETRAIN_METHODS`: filled from the entry-point groups ``medtransfer.tasks`` and
  ``medtransfer.pretrain_methods`` (``pyproject.toml``), so the core never imports a plug-in by name and another
  installed package can add a task or a method.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import nn

from transfer.backbones import StagedBackbone
from transfer.backbones.feature_memo import FrozenFeatureMemo
from transfer.config import Config, DataConfig
from transfer.data.datasets import ImageDataset, Skipped
from transfer.errors import DatasetError
from transfer.precision import Precision, inference_forward
from transfer.registry import Registry

Batch = dict[str, Any]


@runtime_checkable
class StepModel(Protocol):
    """What the training engine drives (an ``nn.Module``).

    ``training_step`` returns a dict with a scalar ``loss`` plus anything worth
    logging (scalars) under other keys.
    """

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]: ...

    def after_optimizer_step(self, progress: float) -> None:
        """Hook after each optimiser step (momentum encoders); ``progress`` in [0, 1]."""
        ...


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  #: raw arrays for plots


class TaskModel(nn.Module, ABC):
    """Backbone + new head; ``training_step`` for the engine, ``forward`` for inference."""

    backbone: StagedBackbone
    head: nn.Module
    #: backbone stages the head never uses (e.g. above a heatmap head's feature map); kept frozen
    unused_stages: list[str] = []
    #: a frozen backbone's features remembered by image, for models whose head reads the backbone's pooled output
    #: (classification); a run may hand one memo to several models with the same weights (a study's head-only cells)
    feature_memo: FrozenFeatureMemo | None = None
    #: True when the head reads the backbone's stage outputs only (``forward_stages`` / ``forward_features``: dense
    #: heads), not its pooled features: the backbone's parameters that no stage output uses
    #: (:meth:`~transfer.backbones.StagedBackbone.unused_by_stage_outputs`) then stay frozen
    reads_stage_outputs: bool = False

    @abstractmethod
    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]: ...

    def after_optimizer_step(self, progress: float) -> None:  # noqa: B027 - optional hook
        pass

    def extra_stages(self) -> dict[str, "ExtraStage"]:
        """Further (backbone, head) pairs the fine-tuning depth applies to, by name (default: none).

        A model with a second stage (the landmark task's refinement) returns it here, so
        ``depth`` freezes the same stages of each backbone (unless the stage names its own depth), and each head
        trains at the head's rate.
        """
        return {}


@dataclass(frozen=True)
class ExtraStage:
    """A second (backbone, head) pair of a task model (see :meth:`TaskModel.extra_stages`).

    ``unused_stages``: the backbone stages its head never reads (above a decoder's top stage). They get no gradient,
    so they stay frozen whatever the depth: a trainable parameter without a gradient stops DistributedDataParallel
    (``find_unused_parameters=False``) with "Expected to have finished reduction".
    """

    backbone: StagedBackbone
    head: nn.Module
    unused_stages: tuple[str, ...] = ()
    reads_stage_outputs: bool = True  #: as :attr:`TaskModel.reads_stage_outputs`
    #: this stage's own fixed fine-tuning depth (e.g. ``"all"`` for a refinement backbone on small crops, cheap to
    #: train, beside a frozen global one); None: the run's depth. An ``auto`` search varies only the run's depth
    depth: str | None = None


@dataclass(frozen=True)
class TaskSetup:
    """What a task reads of a run's config, and nothing more: the data section, its own option section, and the few
    run facts that shape loading and the model. A task never sees the training, runtime or tracking sections, so
    what it does cannot depend on how the run is driven (device, precision and rank reach it as arguments)."""

    name: str
    data: DataConfig
    options: Any  #: the task's option section ``task.<name>`` (an instance of ``Task.options_class``, or None)
    gray: bool  #: the backbone takes one channel (``backbone.in_chans == 1``): images are decoded as grayscale
    seed: int  #: the run's seed: bootstrap resampling and other draws that must be the same on every rank
    progress: bool = False  #: progress bars while decoding
    init: str = "imagenet"  #: the backbone's starting point and ...
    depth: str = "all"  #: ... the fine-tuning depth, for tasks whose model depends on them (a refinement backbone)

    @classmethod
    def from_config(cls, cfg: Config) -> "TaskSetup":
        name = cfg.task.name
        return cls(name=name, data=cfg.data, options=cfg.task.section(name), gray=cfg.backbone.in_chans == 1,
                   seed=cfg.seed, progress=cfg.tracking.progress, init=cfg.init, depth=cfg.train.depth)


class Task(ABC):
    """A downstream task: dataset formats, head, loss, metrics, plots.

    Register a subclass under the entry-point group ``medtransfer.tasks`` (or with ``@TASKS.register``).
    """

    name: ClassVar[str]
    #: the dataclass of the task's option section ``task.<name>`` (None: no options)
    options_class: ClassVar[type | None] = None
    formats: ClassVar[tuple[str, ...]]
    monitor: ClassVar[str]  #: validation metric used for early stopping and model selection
    mode: ClassVar[str]  #: "max" or "min"
    stratify_key: ClassVar[str | None] = None
    report_metrics: ClassVar[tuple[str, ...]] = ()  #: test metrics tabulated in study reports
    report_digits: ClassVar[int] = 3  #: decimals of the metrics in study reports
    #: the range each metric can take, by name or by a name prefix ending in ``*`` (``"ap50_*"``): intervals over
    #: seeds and their error bars stay inside it (logit scale for a bounded range, log scale for (0, inf)).
    #: Metrics not listed are unbounded.
    metric_ranges: ClassVar[dict[str, tuple[float, float]]] = {}
    #: True when :meth:`load_split` reads a list of listings as one split (``data.train: [a.csv, b.csv]``); a list
    #: given to any other task is refused before anything is read
    reads_listing_lists: ClassVar[bool] = False

    def __init__(self, setup: TaskSetup | Config) -> None:
        """``setup``: what the task reads (a whole :class:`Config` is reduced to it here, and not kept)."""
        if isinstance(setup, Config):
            setup = TaskSetup.from_config(setup)
        if setup.data.format not in self.formats:
            raise DatasetError(f"data.format {setup.data.format!r} is not valid for task {self.name}; "
                               f"valid: {', '.join(self.formats)}")
        self.setup = setup
        self.data = setup.data
        self.skipped: list[Skipped] = []
        self.info: dict[str, Any] = {}
        #: counts loading found that a run reports in ``summary.json`` beside its split sizes (e.g. masked labels)
        self.data_report: dict[str, Any] = {}
        #: where ``predict`` may write files beside its table (e.g. mask images); set by the predict run
        self.output_dir: Path | None = None
        #: autocast and memory format of every scoring pass: the run's (set by the finetune, evaluate and predict
        #: runs from ``runtime``), so a model is scored as it was trained; full precision until a run sets it
        self.precision: Precision = Precision()

    @classmethod
    def metric_range(cls, metric: str) -> tuple[float, float]:
        """(lo, hi) that ``metric`` can take, from :attr:`metric_ranges`; (-inf, inf) when not declared."""
        if metric in cls.metric_ranges:
            return cls.metric_ranges[metric]
        for key, bounds in cls.metric_ranges.items():
            if key.endswith("*") and metric.startswith(key[:-1]):
                return bounds
        return (-math.inf, math.inf)

    @property
    def options(self) -> Any:
        """This task's option section, ``task.<name>`` (an instance of ``options_class``)."""
        return self.setup.options

    @property
    def seed(self) -> int:
        return self.setup.seed

    def resolve(self, rel: str) -> Path:
        """A path from the config, relative to ``data.root`` unless absolute (``#key`` suffix kept)."""
        return self.data.resolve(rel)

    @abstractmethod
    def load_split(self, spec: str | list[str], which: str) -> ImageDataset:
        """Load one labelled split described by ``spec`` (path, folder or ``file#key``; a list of them only when
        :attr:`reads_listing_lists`)."""

    @abstractmethod
    def build_model(self, backbone: StagedBackbone, train: ImageDataset | None = None) -> TaskModel:
        """The task model around ``backbone``, using ``self.info`` (classes, landmarks...).

        ``train`` (the labelled training split) is given when training, for
        statistics such as class weights; ``None`` when rebuilding for inference.
        """

    @abstractmethod
    def evaluate(self, model: TaskModel, dataset: ImageDataset, device: torch.device,
                 batch_size: int = 64, *, with_ci: bool = False) -> EvalResult:
        """Metrics and a per-sample predictions table on a labelled dataset."""

    @abstractmethod
    def predict(self, model: TaskModel, dataset: ImageDataset, device: torch.device,
                batch_size: int = 64) -> pd.DataFrame:
        """Predictions for unlabelled images (one row per image)."""

    def plots(self, result: EvalResult, dataset: ImageDataset, out_dir: Path, prefix: str) -> list[Path]:
        return []

    @abstractmethod
    def paired_comparison(self, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
        """Compare two models' test predictions (same images, same order): difference a - b, CI, p-value."""

    def check_split(self, dataset: ImageDataset, which: str, source: str) -> None:
        """Raise a DatasetError naming ``source`` when split ``which`` cannot serve its purpose (default: any).

        Called on train (at its label fraction), val and test before training, so no run fails after it.
        """

    def for_training(self, train: ImageDataset) -> ImageDataset:
        """The final training split (after the validation carve and the label fraction) with whatever training reads
        beyond what scoring reads (default: nothing more). Called once per training run, before the model is built;
        scoring never needs it, so validation, test and ``evaluate`` stay without it (the landmark refinement's
        full-resolution copies: in memory for the training rows only, read a batch at a time for the others)."""
        return train

    def epoch_warnings(self, history: list[dict[str, Any]]) -> list[str]:
        """Warnings about a fit so far, from its epoch rows (``metrics.jsonl``: ``train_<key>`` for each scalar a
        ``training_step`` returns, ``val_<metric>``), checked after every epoch; the run gives each distinct warning
        once (``run.warn``: stderr and ``summary.json``'s ``warnings``). Default: none."""
        return []

    def fit_report(self, history: list[dict[str, Any]], depth: str) -> str | None:
        """After the fit at ``depth`` (each depth of ``auto``), from all its epoch rows: record what the task reports
        about its training in :attr:`info` (``summary.json``'s ``task_info``) and return one console line (None:
        nothing to say). Default: nothing."""
        return None

    def label_array(self, dataset: ImageDataset) -> np.ndarray | None:
        return dataset.target_array(self.stratify_key) if self.stratify_key else None

    def summary_metrics(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Scalar metrics for tables and dashboards."""
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating, np.integer))}

    def pooled_test_metrics(self, predictions: list[pd.DataFrame]) -> dict[str, Any] | None:
        """The test metrics of several runs' test predictions (``predictions_test.csv``) on disjoint images taken
        together, the folds of a cross-validation, in the form :meth:`evaluate` gives them for one split. None (the
        default) for a task that cannot pool them: a cross-validation report then gives per-fold metrics alone."""
        return None

    def report_sections(self, runs: dict[str, dict[str, Any]], table: Callable[[pd.DataFrame], str]) -> list[str]:
        """Task-specific sections of a study report, as markdown lines (default: none).

        ``runs`` maps each run's name to its ``summary.json``, in grid order; ``table`` renders a DataFrame as
        a markdown table in the report's style.
        """
        return []


@torch.no_grad()
def batched_forward(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 64,
                    precision: Precision | None = None) -> Any:
    """Run ``model`` on (N, C, H, W) images in eval mode, batch by batch; concatenates tensors / dict of tensors
    (as float32). ``precision``: the autocast and memory format to run under (a task's ``self.precision``)."""
    was = model.training
    model.eval()
    forward = inference_forward(model, precision)
    outs: list[Any] = []
    for i in range(0, len(images), batch_size):
        outs.append(forward(images[i : i + batch_size].to(device)))
    model.train(was)
    if isinstance(outs[0], dict):
        return {k: torch.cat([o[k].float().cpu() for o in outs]) for k in outs[0]}
    return torch.cat([o.float().cpu() for o in outs])


class PretrainMethod(nn.Module, ABC):
    """A stage-1 method: trains ``encoder`` (the staged backbone) on unlabelled images.

    Only ``encoder`` is kept (written as a backbone checkpoint); heads, decoders
    and momentum copies are the method's own. Register a subclass under the
    entry-point group ``medtransfer.pretrain_methods`` (or with
    ``@PRETRAIN_METHODS.register``). A method reads one option section,
    ``pretrain.<config_section>`` of type ``config_class``, and is built from
    that section alone (:meth:`from_config`).
    """

    #: name of the option section the method reads (several methods may share one), or None
    config_section: ClassVar[str | None] = None
    config_class: ClassVar[type | None] = None
    #: the fields of that section the method reads (None: all). A run is keyed by these alone (resume, finished-run
    #: checks), so an option of another method in a shared section (MoCo's queue for SimCLR) is not a change to it
    options_read: ClassVar[tuple[str, ...] | None] = None

    encoder: StagedBackbone

    def __init__(self, encoder: StagedBackbone, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.image_size = (int(image_size[0]), int(image_size[1]))

    @classmethod
    def from_config(cls, encoder: StagedBackbone, options: Any, image_size: tuple[int, int]) -> "PretrainMethod":
        """Build from the method's option section (``None`` when it declares none)."""
        return cls(encoder, options, image_size) if cls.config_section else cls(encoder, image_size)  # type: ignore[call-arg]

    @abstractmethod
    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``{"loss": scalar, ...}`` plus scalar logs (e.g. ``pretext_acc``) for one batch of ``batch["image"]``."""

    def after_optimizer_step(self, progress: float) -> None:  # noqa: B027 - optional hook
        """After each optimiser step (momentum updates); ``progress`` in [0, 1] over the whole run."""

    def pool_warnings(self, pool_size: int) -> list[str]:
        """Warnings about these options on a pool of ``pool_size`` images (given once, in the run's summary);
        default: none."""
        return []

    def media(self, batch: Batch) -> dict[str, np.ndarray]:
        """Images (uint8 arrays) that show what the method does on ``batch``: views, reconstructions..."""
        return {}


#: downstream tasks: name -> Task subclass
TASKS: Registry[type[Task]] = Registry("task", "medtransfer.tasks")


def make_task(cfg: Config) -> Task:
    """The registered task ``cfg.task.name``, given what it reads of ``cfg`` (:class:`TaskSetup`)."""
    return TASKS.get(cfg.task.name)(TaskSetup.from_config(cfg))
#: stage-1 methods: name -> PretrainMethod subclass
PRETRAIN_METHODS: Registry[type[PretrainMethod]] = Registry("pretrain method", "medtransfer.pretrain_methods")

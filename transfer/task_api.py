"""The task contract: what a downstream task supplies to the shared fine-tuning pipeline."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from transfer.backbones import StagedBackbone
from transfer.config import Config
from transfer.data.datasets import ImageDataset, Skipped
from transfer.errors import DatasetError


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

    @abstractmethod
    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]: ...

    def after_optimizer_step(self, progress: float) -> None:  # noqa: B027 - optional hook
        pass


class Task(ABC):
    """A downstream task: dataset formats, head, loss, metrics, plots."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    monitor: ClassVar[str]  #: validation metric used for early stopping and model selection
    mode: ClassVar[str]  #: "max" or "min"
    stratify_key: ClassVar[str | None] = None
    report_metrics: ClassVar[tuple[str, ...]] = ()  #: test metrics tabulated in study reports

    def __init__(self, cfg: Config) -> None:
        if cfg.data.format not in self.formats:
            raise DatasetError(f"data.format {cfg.data.format!r} is not valid for task {self.name}; "
                               f"valid: {', '.join(self.formats)}")
        self.cfg = cfg
        self.skipped: list[Skipped] = []
        self.info: dict[str, Any] = {}

    def resolve(self, rel: str) -> Path:
        """A path from the config, relative to ``data.root`` unless absolute (``#key`` suffix kept)."""
        path, _, key = rel.partition("#")
        p = Path(path)
        if not p.is_absolute():
            p = Path(self.cfg.data.root) / p
        return Path(f"{p}#{key}") if key else p

    @abstractmethod
    def load_split(self, spec: str, which: str) -> ImageDataset:
        """Load one labelled split described by ``spec`` (path, folder or ``file#key``)."""

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

    def label_array(self, dataset: ImageDataset) -> np.ndarray | None:
        return dataset.target_array(self.stratify_key) if self.stratify_key else None

    def summary_metrics(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Scalar metrics for tables and dashboards."""
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating, np.integer))}


@torch.no_grad()
def batched_forward(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 64) -> Any:
    """Run ``model`` on (N, C, H, W) images in eval mode, batch by batch; concatenates tensors / dict of tensors."""
    was = model.training
    model.eval()
    outs: list[Any] = []
    for i in range(0, len(images), batch_size):
        outs.append(model(images[i : i + batch_size].to(device)))
    model.train(was)
    if isinstance(outs[0], dict):
        return {k: torch.cat([o[k].float().cpu() for o in outs]) for k in outs[0]}
    return torch.cat([o.float().cpu() for o in outs])

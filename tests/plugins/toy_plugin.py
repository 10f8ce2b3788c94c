"""A third-party plug-in, as another package would write it: one task and one stage-1 method, core API only.

``test_third_party_plugins.py`` copies this file into a temporary folder with a
``*.dist-info`` holding its entry points, so ``importlib.metadata`` finds it the
way it finds an installed package; nothing in medtransfer names it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from transfer.api import EvalResult, PretrainMethod, Task, TaskModel, batched_forward
from transfer.backbones import StagedBackbone
from transfer.data.datasets import ImageDataset
from transfer.data.readers import read_npz_split
from transfer.stats import paired_errors


@dataclass
class BrightnessOptions:
    """``task.brightness``."""

    target_scale: float = 1.0


class BrightnessModel(TaskModel):
    def __init__(self, backbone: StagedBackbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))[:, 0]

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self(batch["image"]), batch["brightness"].float())}


class BrightnessTask(Task):
    """Regress each image's mean intensity (times ``task.brightness.target_scale``) from MedMNIST npz files."""

    name = "brightness"
    options_class = BrightnessOptions
    formats = ("npz",)
    monitor = "mae"
    mode = "min"
    report_metrics = ("mae",)

    def load_split(self, spec: str, which: str) -> ImageDataset:
        file, _, key = str(self.resolve(spec)).partition("#")
        images, _ = read_npz_split(file, key or which)
        x = torch.from_numpy(images).float().unsqueeze(1) / 255.0
        x = F.interpolate(x, size=tuple(self.data.image_size), mode="bilinear", align_corners=False)
        target = x.mean((1, 2, 3)) * self.options.target_scale
        return ImageDataset(x, {"brightness": target}, [f"{which}:{i}" for i in range(len(x))])

    def build_model(self, backbone: StagedBackbone, train: ImageDataset | None = None) -> TaskModel:
        return BrightnessModel(backbone)

    def evaluate(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 64,
                 *, with_ci: bool = False) -> EvalResult:
        df = self.predict(model, dataset, device, batch_size)
        df["error"] = (df["brightness"] - dataset.target_array("brightness")).abs()
        return EvalResult({"mae": float(df["error"].mean())}, df)

    def predict(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 64
                ) -> pd.DataFrame:
        pred = batched_forward(model, dataset.images, device, batch_size).numpy()
        return pd.DataFrame({"image": dataset.ids, "brightness": pred})

    def paired_comparison(self, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
        return paired_errors(a["error"].to_numpy(), b["error"].to_numpy(), metric="mae")


@dataclass
class ToyOptions:
    """``pretrain.toy``."""

    noise: float = 0.1


class DenoiseMean(PretrainMethod):
    """Predict the clean image's mean intensity from a noisy copy (a stand-in for a real pretext task)."""

    config_section = "toy"
    config_class = ToyOptions

    def __init__(self, encoder: StagedBackbone, options: ToyOptions, image_size: tuple[int, int]) -> None:
        super().__init__(encoder, image_size)
        self.noise = options.noise
        self.head = nn.Linear(encoder.num_features, 1)

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        noisy = (x + self.noise * torch.randn_like(x)).clamp(0, 1)
        pred = self.head(self.encoder(noisy))[:, 0]
        return {"loss": F.mse_loss(pred, x.mean((1, 2, 3)))}

    def media(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"inputs": (batch["image"][0, 0].cpu().numpy() * 255).astype(np.uint8)}

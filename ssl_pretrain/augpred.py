"""Augmentation prediction: classify which of K transforms was applied to each image.

The K classes are ``augpred.transforms`` (default: the four rotations, as in
RotNet). Every batch is balanced: the labels are ``0..K-1`` repeated (from a
random offset) and shuffled, so each class appears floor(B/K) or ceil(B/K)
times. Each transform runs once on its group of images. A linear head on the
pooled features predicts the class; the loss is cross-entropy and
``pretext_acc`` the batch accuracy.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_pretrain.augment import get_transforms, image_grid
from transfer.backbones.staged import StagedBackbone
from transfer.config.io import ConfigError
from ssl_pretrain.config import AugPredConfig
from transfer.api import Batch, PretrainMethod

_NEEDS_SQUARE = ("rot90", "rot270")


def balanced_labels(batch_size: int, num_classes: int, device: torch.device | str | None = None) -> Tensor:
    """(B,) long labels, each class floor(B/K) or ceil(B/K) times, in random order."""
    offset = int(torch.randint(num_classes, ()).item())
    labels = (torch.arange(batch_size, device=device) + offset) % num_classes
    return labels[torch.randperm(batch_size, device=device)]


class AugPred(PretrainMethod):
    """Augmentation-prediction pre-training (RotNet-style, any registered transforms)."""

    config_section = "augpred"
    config_class = AugPredConfig

    def __init__(self, backbone: StagedBackbone, options: AugPredConfig, image_size: tuple[int, int]) -> None:
        super().__init__(backbone, image_size)
        self.names = list(options.transforms)
        square = [n for n in self.names if n in _NEEDS_SQUARE]
        if square and image_size[0] != image_size[1]:
            raise ConfigError(
                f"augpred.transforms: {square} need square images but the image size is "
                f"{image_size[0]}x{image_size[1]}; use a square size or drop them (see ssl_pretrain.augment)")
        self.transforms = get_transforms(self.names)
        self.head = nn.Linear(backbone.num_features, len(self.names))

    @torch.no_grad()
    def make_pretext_batch(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Images (B, C, H, W) -> (transformed images, labels (B,)); image i got ``transforms[labels[i]]``."""
        if labels is None:
            labels = balanced_labels(x.shape[0], len(self.transforms), device=x.device)
        out = torch.empty_like(x)
        for k, fn in enumerate(self.transforms):
            idx = (labels == k).nonzero(as_tuple=True)[0]
            if idx.numel():
                out[idx] = fn(x[idx])
        return out, labels

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [0, 1] -> class logits (B, K)."""
        return self.head(self.encoder(x))

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        x_aug, labels = self.make_pretext_batch(batch["image"])
        logits = self(x_aug)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": loss, "pretext_acc": acc}

    @torch.no_grad()
    def media(self, batch: Batch) -> dict[str, np.ndarray]:
        """One row per image (up to 4), one column per transform, in class order."""
        x = batch["image"][:4]
        rows = [torch.cat([fn(x[i:i + 1]) for fn in self.transforms]) for i in range(x.shape[0])]
        return {"transforms": image_grid(rows, max_cols=len(self.transforms))}

"""Batched training augmentation on the device (kornia), moving landmarks with the image."""
from __future__ import annotations

import math
from typing import Sequence

import kornia.augmentation as K
import torch
from torch import nn

from transfer.config import AugmentConfig


class BatchAugment(nn.Module):
    """Random affine (rotation, scale, translation), intensity (brightness, contrast, gamma, blur, noise) and optional
    flip on a batch.

    ``forward(images, keypoints=None)``: images (B, C, H, W) in [0, 1];
    keypoints (B, L, 2) in working-size pixel coordinates (x, y), moved with
    the image. A horizontal flip also swaps the declared left-right pairs
    (1-based landmark indices), so "left gonion" stays left.
    """

    def __init__(self, cfg: AugmentConfig, flip_pairs: Sequence[tuple[int, int]] = (), landmarks: bool = False) -> None:
        super().__init__()
        if landmarks and cfg.hflip and not flip_pairs:
            raise ValueError("data.augment.hflip for landmarks needs task.landmarks.flip_pairs (left-right swap list)")
        self.cfg = cfg
        ops: list[nn.Module] = []
        if cfg.rotation or cfg.scale or cfg.translate:
            ops.append(K.RandomAffine(
                degrees=cfg.rotation, translate=(cfg.translate, cfg.translate) if cfg.translate else None,
                scale=(1 - cfg.scale, 1 + cfg.scale) if cfg.scale else None, padding_mode="zeros", p=1.0,
            ))
        self.geometric = K.AugmentationSequential(*ops, data_keys=["input", "keypoints"] if landmarks else ["input"]) if ops else None
        self.intensity = (
            K.ColorJiggle(brightness=cfg.brightness, contrast=cfg.contrast, p=1.0)
            if (cfg.brightness or cfg.contrast) else None
        )
        self.acquisition = _acquisition_ops(cfg)
        perm = None
        if flip_pairs:
            n = max(max(p) for p in flip_pairs)
            perm = list(range(n))
            for a, b in flip_pairs:
                perm[a - 1], perm[b - 1] = b - 1, a - 1
        self.flip_perm = perm

    @property
    def active(self) -> bool:
        return (self.geometric is not None or self.intensity is not None or self.acquisition is not None
                or self.cfg.hflip)

    def forward(self, images: torch.Tensor, keypoints: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cfg.hflip:
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            if flip.any():
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
                if keypoints is not None:
                    w = images.shape[-1]
                    flipped = keypoints.clone()
                    flipped[..., 0] = (w - 1) - flipped[..., 0]
                    if self.flip_perm is not None:
                        perm = torch.arange(keypoints.shape[1], device=keypoints.device)
                        perm[: len(self.flip_perm)] = torch.tensor(self.flip_perm, device=keypoints.device)
                        flipped = flipped[:, perm]
                    keypoints = torch.where(flip[:, None, None], flipped, keypoints)
        if self.geometric is not None:
            if keypoints is not None:
                images, keypoints = self.geometric(images, keypoints)
            else:
                images = self.geometric(images)
        if self.intensity is not None:
            if images.shape[1] == 1:
                images = self.intensity(images.expand(-1, 3, -1, -1))[:, :1]
            else:
                images = self.intensity(images)
            images = images.clamp(0, 1)
        if self.acquisition is not None:  # intensity only: keypoints stay where they are
            images = self.acquisition(images).clamp(0, 1)  # blur and noise do not clamp themselves
        return images, keypoints


def _acquisition_ops(cfg: AugmentConfig) -> nn.Sequential | None:
    """Gamma, blur and noise (what another scanner or exposure changes), in that order; None when all are off.

    Built only for the ops that are on, after the affine and colour ops, so a config without them draws the same
    random numbers as before they existed.
    """
    ops: list[nn.Module] = []
    if cfg.gamma:
        ops.append(K.RandomGamma(gamma=(1 - cfg.gamma, 1 + cfg.gamma), p=1.0))
    if cfg.blur:
        radius = math.ceil(3 * cfg.blur)  # the kernel covers +-3 SD of the widest blur drawn
        ops.append(K.RandomGaussianBlur(kernel_size=2 * radius + 1, sigma=(0.1, cfg.blur), p=cfg.blur_p))
    if cfg.noise:
        ops.append(K.RandomGaussianNoise(mean=0.0, std=cfg.noise, p=cfg.noise_p))
    return nn.Sequential(*ops) if ops else None

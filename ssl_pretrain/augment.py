"""Medical-safe batched augmentations (kornia, on the batch's device).

- ``TwoViewAugment``: the two random views of contrastive methods, tuned for
  grayscale radiographs (crop, small rotation, brightness/contrast/gamma, blur,
  noise; no hue/saturation, no horizontal flip unless asked).
- ``AUGPRED_TRANSFORMS``: the augmentation-prediction classes, each a function
  ``(B, C, H, W) -> (B, C, H, W)`` keeping the size and the [0, 1] range.

Rotations by 90/270 degrees need square images and raise otherwise: rotating a
non-square image and resizing it back would stretch the anatomy, and the
stretch alone would tell the classifier "rot90 or rot270" -- a shortcut that
makes the pretext task trivial. rot180 and the flips work for any shape.
"""
from __future__ import annotations

import math
from typing import Callable

import kornia.augmentation as K
import numpy as np
import torch
from kornia.enhance import adjust_contrast_with_mean_subtraction, adjust_gamma
from kornia.filters import gaussian_blur2d, unsharp_mask
from kornia.geometry.transform import elastic_transform2d
from torch import Tensor, nn
from torchvision.utils import make_grid

from ssl_pretrain.config import ViewAugConfig
from transfer.registry import Registry

ImageTransform = Callable[[Tensor], Tensor]


def _odd_kernel(sigma: float, h: int, w: int) -> int:
    """Odd Gaussian kernel covering +-3 sigma, small enough for reflect padding on an h x w image."""
    k = 2 * math.ceil(3 * sigma) + 1
    limit = min(h, w) - 1 if min(h, w) % 2 == 0 else min(h, w) - 2  # largest odd < min side
    return max(3, min(k, limit))


class TwoViewAugment(nn.Module):
    """Two independent random views of a batch, for contrastive pre-training.

    ``forward(x)`` takes images in [0, 1], (B, C, H, W) of any size, and returns
    two views, each (B, C, *size) in [0, 1]. Runs on ``x``'s device.
    """

    def __init__(self, cfg: ViewAugConfig, size: tuple[int, int]) -> None:
        super().__init__()
        h, w = int(size[0]), int(size[1])
        if h < 8 or w < 8:
            raise ValueError(f"TwoViewAugment: size must be >= 8 px, got {size}")
        self.size = (h, w)
        self.cfg = cfg
        ops: list[nn.Module] = [
            K.RandomResizedCrop((h, w), scale=tuple(cfg.crop_scale), ratio=(3 / 4, 4 / 3), p=1.0),
        ]
        if cfg.hflip:
            ops.append(K.RandomHorizontalFlip(p=0.5))
        if cfg.rotation > 0:
            ops.append(K.RandomRotation(degrees=cfg.rotation, p=1.0))
        if cfg.brightness > 0 or cfg.contrast > 0:
            # torchvision formulas: brightness multiplies, contrast blends with the image mean
            ops.append(K.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast, saturation=0.0, hue=0.0,
                                     order=(0, 1), p=1.0))
        if cfg.gamma != (1.0, 1.0):
            ops.append(K.RandomGamma(gamma=tuple(cfg.gamma), p=1.0))
        if cfg.blur_p > 0:
            k = _odd_kernel(cfg.blur_sigma[1], h, w)
            ops.append(K.RandomGaussianBlur((k, k), sigma=tuple(cfg.blur_sigma), p=cfg.blur_p))
        if cfg.noise_std > 0:
            ops.append(K.RandomGaussianNoise(mean=0.0, std=cfg.noise_std, p=0.5))
        self.pipeline = K.ImageSequential(*ops)

    def view(self, x: Tensor) -> Tensor:
        """One random view: (B, C, H, W) -> (B, C, *size), clamped to [0, 1] (noise is unclamped in kornia)."""
        if x.dim() != 4:
            raise ValueError(f"TwoViewAugment expects (B, C, H, W), got shape {tuple(x.shape)}")
        return self.pipeline(x).clamp_(0.0, 1.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.view(x), self.view(x)

    @torch.no_grad()
    def media(self, x: Tensor, n: int = 8) -> np.ndarray:
        """A grid for eyeballing the views: rows = view 1, view 2, original (resized); H x W x 3 uint8."""
        x = x[:n]
        v0, v1 = self(x)
        return image_grid([v0, v1, x])


# -- augmentation prediction: the transform registry ---------------------------------------------
#: name -> function (B, C, H, W) -> (B, C, H, W), same size, values in [0, 1]
AUGPRED_TRANSFORMS: Registry[ImageTransform] = Registry("augpred transform")
#: transforms whose output depends on random draws (the others are pure functions of the input)
RANDOM_TRANSFORMS = frozenset({"noise", "elastic"})

_BLUR_SIGMA = 1.5  # px; strong enough that a CNN sees it at 32 px and at 512 px
_SHARPEN_SIGMA = 1.0
_CONTRAST_FACTOR = 1.6  # > 1: stretch around the image mean
_GAMMA = 0.6  # < 1: brightens mid-tones (like a different window)
_NOISE_STD = 0.05
_ELASTIC_ALPHA_PER_32PX = 2.0  # field scale; ~1 px mean displacement at 32 px, ~3.5% of the side at any size


def _need_square(x: Tensor, name: str) -> None:
    h, w = x.shape[-2:]
    if h != w:
        raise ValueError(
            f"augpred transform {name!r} needs square images, got {h}x{w}: rotating a non-square image by 90 "
            "degrees and resizing it back would stretch it, and the stretch gives the pretext task away. "
            "Use a square data.image_size or drop rot90/rot270 from augpred.transforms."
        )


@AUGPRED_TRANSFORMS.register("rot0")
def rot0(x: Tensor) -> Tensor:
    """Identity (the 'no transform' class)."""
    return x


@AUGPRED_TRANSFORMS.register("rot90")
def rot90(x: Tensor) -> Tensor:
    """Rotate 90 degrees counter-clockwise (square images only)."""
    _need_square(x, "rot90")
    return torch.rot90(x, 1, dims=(-2, -1))


@AUGPRED_TRANSFORMS.register("rot180")
def rot180(x: Tensor) -> Tensor:
    return torch.rot90(x, 2, dims=(-2, -1))


@AUGPRED_TRANSFORMS.register("rot270")
def rot270(x: Tensor) -> Tensor:
    """Rotate 270 degrees counter-clockwise (square images only)."""
    _need_square(x, "rot270")
    return torch.rot90(x, 3, dims=(-2, -1))


@AUGPRED_TRANSFORMS.register("hflip")
def hflip(x: Tensor) -> Tensor:
    return torch.flip(x, dims=(-1,))


@AUGPRED_TRANSFORMS.register("vflip")
def vflip(x: Tensor) -> Tensor:
    return torch.flip(x, dims=(-2,))


@AUGPRED_TRANSFORMS.register("blur")
def blur(x: Tensor) -> Tensor:
    k = _odd_kernel(_BLUR_SIGMA, *x.shape[-2:])
    return gaussian_blur2d(x, (k, k), (_BLUR_SIGMA, _BLUR_SIGMA)).clamp(0.0, 1.0)


@AUGPRED_TRANSFORMS.register("sharpen")
def sharpen(x: Tensor) -> Tensor:
    """Unsharp mask, 2x - blur(x), clamped."""
    k = _odd_kernel(_SHARPEN_SIGMA, *x.shape[-2:])
    return unsharp_mask(x, (k, k), (_SHARPEN_SIGMA, _SHARPEN_SIGMA)).clamp(0.0, 1.0)


@AUGPRED_TRANSFORMS.register("contrast")
def contrast(x: Tensor) -> Tensor:
    return adjust_contrast_with_mean_subtraction(x, _CONTRAST_FACTOR)  # clamps to [0, 1]


@AUGPRED_TRANSFORMS.register("gamma")
def gamma(x: Tensor) -> Tensor:
    return adjust_gamma(x.clamp(0.0, 1.0), _GAMMA)


@AUGPRED_TRANSFORMS.register("noise")
def noise(x: Tensor) -> Tensor:
    """Additive Gaussian noise (random), clamped."""
    return (x + _NOISE_STD * torch.randn_like(x)).clamp(0.0, 1.0)


@AUGPRED_TRANSFORMS.register("elastic")
def elastic(x: Tensor) -> Tensor:
    """Random smooth elastic deformation (kornia ``elastic_transform2d``), reflection padding."""
    b, _, h, w = x.shape
    sigma = max(2.0, min(h, w) / 8)  # smooth field: a few bumps across the image at any size
    k = _odd_kernel(sigma, h, w)
    # smoothing shrinks the field as 1/sigma ~ 1/size, so alpha grows with the size
    alpha = _ELASTIC_ALPHA_PER_32PX * min(h, w) / 32
    field = torch.rand(b, 2, h, w, device=x.device, dtype=x.dtype) * 2 - 1
    out = elastic_transform2d(x, field, (k, k), (sigma, sigma), (alpha, alpha),
                              padding_mode="reflection")
    return out.clamp(0.0, 1.0)


def get_transforms(names: list[str] | tuple[str, ...]) -> list[ImageTransform]:
    """The functions for ``names``, in order (the order defines the class indices)."""
    return [AUGPRED_TRANSFORMS.get(n) for n in names]



# -- visualisation ------------------------------------------------------------------------------
def image_grid(rows: list[Tensor], max_cols: int = 8) -> np.ndarray:
    """Rows of image batches, each (N, C, H, W) in [0, 1] -> one H x W x 3 uint8 grid (for W&B).

    Each row shows its first ``max_cols`` images; 1-channel images are shown gray.
    """
    rows = [r.detach().float().cpu()[:max_cols] for r in rows]
    n = min(r.shape[0] for r in rows)
    h, w = rows[0].shape[-2:]
    tiles = []
    for r in rows:
        r = r[:n]
        if r.shape[-2:] != (h, w):
            r = nn.functional.interpolate(r, size=(h, w), mode="bilinear", align_corners=False)
        tiles.append(r.expand(-1, 3, -1, -1) if r.shape[1] == 1 else r)
    grid = make_grid(torch.cat(tiles).clamp(0, 1), nrow=n, padding=2, pad_value=1.0)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

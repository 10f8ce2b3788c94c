"""Convolutional autoencoder (CAE): reconstruct the image from the backbone's features.

The dental seed adapted ImageNet AlexNet to X-rays this way before landmark
regression. The encoder is the backbone up to ``cae.encoder_upto`` (default:
the last spatial stage; AlexNet ``fc6`` includes the first fully connected
stage). The decoder mirrors the encoder's resolutions: for a non-spatial top
(fc6) a Linear first maps the vector back to the last spatial stage's map, then
resize-conv blocks (nearest upsampling + 3x3 conv, no checkerboard artefacts)
climb through the encoder's feature-map sizes, at most x2 per block, to exactly
the input size; a sigmoid puts the reconstruction in [0, 1].

Stages above ``encoder_upto`` are frozen (they are not part of the autoencoder,
and DDP needs every trainable parameter to get a gradient); only ``encoder``
goes in the checkpoint.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_pretrain.augment import image_grid
from transfer.backbones.staged import StagedBackbone
from transfer.config.io import ConfigError
from ssl_pretrain.config import CAEConfig
from transfer.api import Batch, PretrainMethod

_MAX_WIDTH = 512


class _UpBlock(nn.Module):
    """Resize to ``size`` (nearest), then conv3x3 -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="nearest")
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _size_chain(start: tuple[int, int], sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Target sizes from ``start`` up through ``sizes`` (ascending), splitting big jumps geometrically.

    A jump of ratio r becomes ceil(log2(r) - 0.25) steps, so each step is about x2 (at most ~x2.4).
    """
    chain: list[tuple[int, int]] = []
    cur = start
    for target in sizes:
        r = max(target[0] / cur[0], target[1] / cur[1])
        n = max(1, math.ceil(math.log2(r) - 0.25)) if r > 1 else 1
        for i in range(1, n):
            chain.append((round(cur[0] * (target[0] / cur[0]) ** (i / n)),
                          round(cur[1] * (target[1] / cur[1]) ** (i / n))))
        chain.append(target)
        cur = target
    return chain


class CAEDecoder(nn.Module):
    """Features of the top encoder stage -> image logits (B, out_chans, H, W).

    Args:
        top_shape: shape of one sample's top-stage output, (C, h, w) or (D,) for a fc stage.
        spatial_shape: (C, h, w) of the last spatial stage (the map a fc top is mapped back to).
        sizes: every distinct encoder feature-map size, largest first, ending above the top's size.
        image_size: (H, W) of the input.
        out_chans: image channels.
        width: channels of the full-resolution block; x2 per halving of resolution, capped at 512.
    """

    def __init__(self, top_shape: tuple[int, ...], spatial_shape: tuple[int, int, int],
                 sizes: list[tuple[int, int]], image_size: tuple[int, int], out_chans: int, width: int) -> None:
        super().__init__()
        c, h, w = spatial_shape
        self.map_shape = (c, h, w)
        # a fc top: mirror the fc stage with a Linear back to the last spatial map
        self.fc: nn.Module | None = None
        if len(top_shape) == 1:
            self.fc = nn.Sequential(nn.Linear(top_shape[0], c * h * w), nn.ReLU(inplace=True))
        H, W = image_size
        blocks = []
        c_in = c
        targets = sorted(set(sizes) | {(H, W)}, key=lambda s: (s[0] * s[1], s))
        for size in _size_chain((h, w), targets):
            if size == (h, w):
                continue
            stride = 2 ** max(0, round(math.log2(min(H / size[0], W / size[1]))))
            c_out = min(width * stride, _MAX_WIDTH)
            blocks.append(_UpBlock(c_in, c_out, size))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(c_in, out_chans, 3, padding=1)

    def forward(self, z: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        if self.fc is not None:
            z = self.fc(z).view(z.shape[0], *self.map_shape)
        y = self.out(self.blocks(z))
        if size is not None and tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


class CAE(PretrainMethod):
    """Convolutional autoencoder pre-training; logs ``psnr`` (dB, images in [0, 1])."""

    config_section = "cae"
    config_class = CAEConfig

    def __init__(self, backbone: StagedBackbone, options: CAEConfig, image_size: tuple[int, int]) -> None:
        super().__init__(backbone, image_size)
        c = options
        spatial = [fi.stage for fi in backbone.feature_info]
        self.upto = c.encoder_upto or spatial[-1]
        if self.upto not in backbone.stage_names:
            raise ConfigError(f"cae.encoder_upto: {self.upto!r} is not a stage of {backbone.name}; "
                              f"stages: {list(backbone.stage_names)}")
        shapes = self._probe_shapes()
        maps = [s for s in shapes.values() if len(s) == 3]
        if not maps:
            raise ConfigError(f"cae.encoder_upto: {self.upto!r} is below every spatial stage of {backbone.name}")
        top = shapes[self.upto]
        self.decoder = CAEDecoder(top, maps[-1], [s[1:] for s in maps], self.image_size, backbone.in_chans,
                                  c.decoder_width)
        self.loss_name = c.loss
        # stages above the encoder are not part of the autoencoder: freeze them so every trainable
        # parameter gets a gradient (DDP without find_unused_parameters) and they keep their weights
        names = list(backbone.stage_names)
        for stage in names[names.index(self.upto) + 1 :]:
            for _, p in backbone.stage_parameters()[stage]:
                p.requires_grad_(False)

    @torch.no_grad()
    def _probe_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample output shape of every encoder stage at ``image_size``."""
        p = next(self.encoder.parameters())
        was_training = self.encoder.training
        self.encoder.eval()  # do not touch BatchNorm statistics
        try:
            x = torch.zeros(1, self.encoder.in_chans, *self.image_size, device=p.device, dtype=p.dtype)
            outs = self.encoder.forward_stages(x, upto=self.upto)
        finally:
            self.encoder.train(was_training)
        return {k: tuple(v.shape[1:]) for k, v in outs.items()}

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [0, 1] -> top encoder stage output."""
        return self.encoder.forward_stages(x, upto=self.upto)[self.upto]

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [0, 1] -> reconstructions, same shape, in [0, 1]."""
        return torch.sigmoid(self.decoder(self.encode(x), size=tuple(x.shape[-2:])))

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        x = batch["image"]
        recon = self(x)
        loss = F.mse_loss(recon, x) if self.loss_name == "mse" else F.l1_loss(recon, x)
        with torch.no_grad():
            mse = (recon.float() - x.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
            psnr = (10 * torch.log10(1.0 / mse)).mean()
        return {"loss": loss, "psnr": psnr}

    @torch.no_grad()
    def media(self, batch: Batch) -> dict[str, np.ndarray]:
        """Inputs (top row) and reconstructions (bottom row), up to 8 images."""
        x = batch["image"][:8]
        was_training = self.training
        self.eval()
        try:
            recon = self(x)
        finally:
            self.train(was_training)
        return {"reconstructions": image_grid([x, recon])}

"""The global landmark stage: heatmaps on the shared dense decoder at stride 4 or finer, decoded sub-pixel.

The coarse heatmap head (:class:`~tasks.landmarks.heads.HeatmapHead`) reads one
stride-16 map, where one cell of a 256-px cephalogram is ~15 mm wide. Here the
U-Net decoder of the core (:class:`~transfer.heads.DenseDecoder`, the one
segmentation uses) brings the backbone's stage maps back to stride 4 (or 2, 1)
and a 1x1 convolution gives one logit map per landmark. Training fits each
map's softmax to a Gaussian whose width is given in millimetres (so it means
the same anatomy at every input size), and the coordinates come from a local
soft-argmax (:mod:`tasks.landmarks.decoding`), so the Euclidean loss and the
error are not quantised to the grid.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from tasks.landmarks.decoding import decode_heatmaps
from transfer.backbones.staged import FeatureInfo
from transfer.heads import DenseDecoder

__all__ = ["DecoderHeatmapHead", "sigma_in_heatmap_pixels"]


def sigma_in_heatmap_pixels(sigma_mm: float, orig_size_hw: torch.Tensor, spacing_xy: torch.Tensor,
                            map_size_hw: tuple[int, int]) -> torch.Tensor:
    """A Gaussian width in mm -> heatmap pixels per image and axis, (B, 1, 2) as (x, y).

    One heatmap pixel covers ``orig_W / map_w`` original pixels of ``spacing_x`` mm each.
    """
    map_wh = torch.tensor(map_size_hw[::-1], dtype=spacing_xy.dtype, device=spacing_xy.device)
    mm_per_cell = spacing_xy * orig_size_hw.flip(-1).to(spacing_xy.dtype) / map_wh  # (B, 2)
    return (sigma_mm / mm_per_cell)[:, None, :]


class DecoderHeatmapHead(nn.Module):
    """Stage maps -> {"heatmaps": (B, L, H/s, W/s) logits, "coords": (B, L, 2), "confidence": (B, L)}.

    Args:
        feature_info: the backbone's spatial stages.
        num_landmarks: L, one output map each.
        out_stride: 1, 2 or 4 (input pixels per heatmap pixel).
        radius: half-width, in heatmap pixels, of the soft-argmax window and of the
            window whose softmax mass is the confidence.
        width: channels of the decoder's finest level.
        top_stage: deepest backbone stage read (default: the deepest spatial stage).
    """

    def __init__(self, feature_info: Sequence[FeatureInfo], num_landmarks: int, *, out_stride: int = 4,
                 radius: int = 3, width: int = 32, top_stage: str | None = None) -> None:
        super().__init__()
        if radius < 1:
            raise ValueError(f"task.landmarks.decode_radius must be >= 1 heatmap pixel, got {radius}")
        self.decoder = DenseDecoder(feature_info, num_landmarks, out_stride=out_stride, width=width,
                                    top_stage=top_stage)
        self.radius = radius
        self.heatmap_stride = out_stride

    @property
    def top_stage(self) -> str:
        return self.decoder.top_stage

    def forward(self, features: dict[str, torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        logits = self.decoder(features, image_size)
        coords, confidence = decode_heatmaps(logits, self.radius)
        return {"heatmaps": logits, "coords": coords, "confidence": confidence}

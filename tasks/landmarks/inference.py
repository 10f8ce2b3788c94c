"""Landmark inference outputs beyond coordinates: a confidence per landmark and per-image warnings.

The confidence of a landmark is its heatmap's peak mass (the share of the
softmax inside the decoding window, :func:`~tasks.landmarks.decoding.peak_mass`):
near 1 for one sharp mode. An image unlike the training images gives flat or
multi-modal maps, so a low mean confidence flags it. A cephalogram stored
left-right mirrored (a real case in public data) is found by decoding the image
flipped back as well: when the flipped copy is decoded with clearly more
confidence, the stored image is probably mirrored, and its coordinates are not
to be trusted as they are (they are still the model's, on the image as stored).
The regression head has no heatmap, hence no confidence (NaN, no flags).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tasks.landmarks.decoding import peak_mass
from transfer.api import batched_forward

__all__ = ["LandmarkOutputs", "landmark_outputs", "image_flags"]


@dataclass
class LandmarkOutputs:
    coords: np.ndarray  #: (N, L, 2) normalised (x, y)
    confidence: np.ndarray  #: (N, L) peak mass in (0, 1]; NaN for the regression head


class _AllOutputs(nn.Module):
    """``forward_all`` as ``forward``, so :func:`batched_forward` returns every output, with a confidence."""

    def __init__(self, model: nn.Module, flip: bool) -> None:
        super().__init__()
        self.model, self.flip = model, flip

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model.forward_all(images.flip(-1) if self.flip else images)
        coords = out["coords"]
        if "confidence" in out:
            conf = out["confidence"]
        elif "heatmaps" in out:  # the coarse head: one cell around the peak
            conf = peak_mass(out["heatmaps"], 1)
        else:
            conf = torch.full(coords.shape[:2], float("nan"), device=coords.device)
        return {"coords": coords, "confidence": conf}


def landmark_outputs(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int,
                     *, flip: bool = False) -> LandmarkOutputs:
    """Coordinates and confidences of ``images`` (flipped left-right first when ``flip``)."""
    out = batched_forward(_AllOutputs(model, flip), images, device, batch_size)
    return LandmarkOutputs(out["coords"].numpy().astype(np.float64), out["confidence"].numpy().astype(np.float64))


def image_flags(confidence: np.ndarray, flipped_confidence: np.ndarray, *, low: float,
                mirror_ratio: float) -> list[str]:
    """Per image: "" (fine), "low_confidence" or "mirrored?" from (N, L) confidences of the image and its flip."""
    if np.isnan(confidence).all():  # the regression head: nothing to judge by
        return [""] * len(confidence)
    mean, mean_flipped = np.nanmean(confidence, 1), np.nanmean(flipped_confidence, 1)
    flags = []
    for c, cf in zip(mean, mean_flipped):
        if cf > mirror_ratio * c:
            flags.append("mirrored?")
        elif c < low:
            flags.append("low_confidence")
        else:
            flags.append("")
    return flags

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
from tasks.landmarks.on_demand import ImagesOnDemand
from transfer.precision import Precision, inference_forward

__all__ = ["LandmarkOutputs", "landmark_outputs", "image_flags", "refined_from"]


@dataclass
class LandmarkOutputs:
    coords: np.ndarray  #: (N, L, 2) normalised (x, y)
    confidence: np.ndarray  #: (N, L) peak mass in (0, 1]; NaN for the regression head
    global_confidence: np.ndarray  #: (N, L) the global stage's (= ``confidence`` without refinement)
    global_coords: np.ndarray  #: (N, L, 2) the global stage's (= ``coords`` without refinement)
    #: (N, L) bool: the landmarks the shape step moved (None without it, see tasks/landmarks/shape_prior.py)
    shape_moved: np.ndarray | None = None
    #: (N, L, 2) the coarse refinement stage's, where the fine stage crops (None without one)
    coarse_coords: np.ndarray | None = None


def _confidence(out: dict[str, torch.Tensor]) -> torch.Tensor:
    if "confidence" in out:
        return out["confidence"]
    if "heatmaps" in out:  # the coarse head: one cell around the peak
        return peak_mass(out["heatmaps"], 1)
    return torch.full(out["coords"].shape[:2], float("nan"), device=out["coords"].device)


@torch.no_grad()
def landmark_outputs(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int,
                     *, flip: bool = False, refine_images: torch.Tensor | ImagesOnDemand | None = None,
                     precision: Precision | None = None) -> LandmarkOutputs:
    """Coordinates and confidences of ``images`` (flipped left-right first when ``flip``), refined on
    ``refine_images`` (the same images at the refinement stage's size, in memory or read per batch) when given;
    under ``precision`` (the task's: the autocast and memory format the model was trained with).

    A loop of our own rather than :func:`~transfer.api.batched_forward`: each batch has two inputs.
    """
    was = model.training
    model.eval()
    forward_all = inference_forward(model.forward_all, precision)
    coords, conf, global_conf, global_coords, moved, coarse = [], [], [], [], [], []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device)
        r = None if refine_images is None else refine_images[i : i + batch_size].to(device)
        if flip:
            x, r = x.flip(-1), (None if r is None else r.flip(-1))
        out = forward_all(x, r) if r is not None else forward_all(x)
        coords.append(out["coords"].float().cpu())
        conf.append(_confidence(out).float().cpu())
        global_conf.append(out.get("global_confidence", conf[-1]).float().cpu())
        global_coords.append(out.get("global_coords", out["coords"]).float().cpu())
        if "shape_moved" in out:
            moved.append(out["shape_moved"].cpu())
        if "coarse_coords" in out:
            coarse.append(out["coarse_coords"].float().cpu())
    model.train(was)
    return LandmarkOutputs(*(torch.cat(x).numpy().astype(np.float64)
                             for x in (coords, conf, global_conf, global_coords)),
                           shape_moved=torch.cat(moved).numpy() if moved else None,
                           coarse_coords=torch.cat(coarse).numpy().astype(np.float64) if coarse else None)


@torch.no_grad()
def refined_from(model: nn.Module, refine_images: torch.Tensor | ImagesOnDemand, start: np.ndarray,
                 device: torch.device, batch_size: int, precision: Precision | None = None) -> np.ndarray:
    """The refinement stage alone, from given first estimates: normalised (N, L, 2) ``start`` -> refined (N, L, 2).

    From the true positions this is the refinement's own error, with no global-stage error to correct: the floor
    that a better global stage could bring the refined error down to (``refine_from_truth_mre_mm``).
    """
    stage = model.refine_stage
    was = model.training
    model.eval()
    refine = inference_forward(lambda r, c: stage.refine(r, c)[0], precision)
    out = []
    for i in range(0, len(start), batch_size):
        r = refine_images[i : i + batch_size].to(device)
        out.append(refine(r, torch.as_tensor(start[i : i + batch_size], dtype=torch.float32, device=device))
                   .float().cpu())
    model.train(was)
    return torch.cat(out).numpy().astype(np.float64)


def image_flags(confidence: np.ndarray, flipped_confidence: np.ndarray, *, low: float,
                mirror_ratio: float) -> list[str]:
    """Per image: "" (fine), "low_confidence" or "mirrored?" from (N, L) confidences of the image and its flip
    (the same stage's: the global one)."""
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

"""Sub-pixel decoding of landmark heatmaps: a soft-argmax in a window around each map's peak.

A global soft-argmax (the expectation over the whole map) is pulled towards
every secondary mode and towards the map's centre by the softmax's tail mass:
on a 128x104 map a tail of 1e-4 per cell shifts the estimate by millimetres.
Restricting the expectation to a (2r+1)^2 window around the arg-max keeps the
estimate sub-pixel (it interpolates between neighbouring cells) and immune to
far-away modes, while staying differentiable in the logits inside the window
(the arg-max itself only picks the window).

Coordinates follow the task's convention: (x, y) normalised by the map's width
and height with pixel j's centre at (j + 0.5) / w, so a map of any stride
decodes to the same image coordinates.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from tasks.landmarks.heads import spatial_expectation

__all__ = ["decode_heatmaps", "heatmap_modes", "local_window", "local_soft_argmax", "peak_mass"]


def local_window(logits: torch.Tensor, radius: int, peak: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L, h, w) -> bool mask of the (2r+1)^2 cells around each map's arg-max, or around ``peak`` (B, L) (flat
    cell indices) when given; cut by the border."""
    if logits.dim() != 4:
        raise ValueError(f"expected heatmap logits (B, L, h, w), got shape {tuple(logits.shape)}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0 heatmap pixels, got {radius}")
    b, n, h, w = logits.shape
    flat = logits.detach().flatten(2).argmax(-1) if peak is None else peak  # (B, L)
    py, px = flat // w, flat % w
    ys = torch.arange(h, device=logits.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=logits.device).view(1, 1, 1, w)
    return ((ys - py[..., None, None]).abs() <= radius) & ((xs - px[..., None, None]).abs() <= radius)


def decode_heatmaps(logits: torch.Tensor, radius: int, peak: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmap logits (B, L, h, w) -> normalised (x, y) (B, L, 2) and confidence (B, L), one window per map, around
    its arg-max (or around ``peak``, (B, L) flat cell indices: another mode of the map).

    The coordinates are the softmax expectation inside the peak's window; the confidence is the share of the
    whole map's softmax inside that window (the peak mass: near 1 for one sharp mode, low for a flat or
    multi-modal map, i.e. an image unlike the training images or a landmark the model cannot find), computed from
    the same masked logits as exp(logsumexp(window) - logsumexp(map)) rather than a second softmax.
    """
    masked = logits.float().masked_fill(~local_window(logits, radius, peak), float("-inf")).flatten(2)
    coords = spatial_expectation(F.softmax(masked, dim=-1).view(logits.shape))
    confidence = (masked.logsumexp(-1) - logits.float().flatten(2).logsumexp(-1)).exp()
    return coords, confidence


def heatmap_modes(logits: torch.Tensor, count: int, radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``count`` strongest other modes of each map (B, L, h, w), beside the arg-max that
    :func:`decode_heatmaps` decodes: (B, L, count, 2) normalised coordinates, (B, L, count) mass and (B, L, count)
    ``found`` (False where a map has fewer modes; its coordinates and mass are then meaningless).

    A mode is a local maximum over the (4r+1)^2 cells around it (max-pool non-maximum suppression), more than 2r
    cells (Chebyshev) from the arg-max, so that its (2r+1)^2 decoding window, like those of the other modes, does
    not overlap the arg-max's. Each is decoded exactly as the arg-max is (local soft-argmax and mass in its window).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1 mode, got {count}")
    x = logits.detach().float()
    suppress = 2 * radius
    is_peak = x == F.max_pool2d(x, kernel_size=2 * suppress + 1, stride=1, padding=suppress)
    candidates = x.masked_fill(~is_peak | local_window(x, suppress), float("-inf")).flatten(2)
    count = min(count, candidates.shape[-1])
    values, peaks = candidates.topk(count, dim=-1)  # (B, L, count), strongest first
    decoded = [decode_heatmaps(x, radius, peaks[..., j]) for j in range(count)]
    coords = torch.stack([c for c, _ in decoded], dim=2)
    mass = torch.stack([m for _, m in decoded], dim=2)
    return coords, mass, torch.isfinite(values)


def local_soft_argmax(logits: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, L, h, w) -> (B, L, 2): the coordinates of :func:`decode_heatmaps`.

    With ``radius`` covering the map this is the global soft-argmax.
    """
    return decode_heatmaps(logits, radius)[0]


def peak_mass(logits: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, L, h, w) -> (B, L) in (0, 1]: the confidence of :func:`decode_heatmaps`."""
    return decode_heatmaps(logits, radius)[1]

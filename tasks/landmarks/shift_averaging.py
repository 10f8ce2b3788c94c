"""Test-time averaging of the global stage over copies of the input shifted by whole heatmap cells.

The global stage reads a backbone whose deep stages see the image on a stride-32
grid: move the image by a few pixels and its heatmaps change by more than the
move (the grid's aliasing, and a frozen ImageNet backbone was never trained to
be shift-equivariant on cephalograms). Averaging the heatmaps of copies shifted
by k cells (k x the heatmap stride in input pixels), each moved back by the same
k cells, averages that part of the error out, for the price of four more global
forwards (the cheap stage: 256x208 against the refinement's full-resolution crops).

The maps are averaged as probabilities (each map's softmax) and the log of the
average is decoded as one pass's logits are, so coordinates, confidence and the
shape step's modes mean what they mean without it. Moving back is exact: a shift
of k x stride input pixels is a shift of k cells of the map. A shifted copy's
uncovered border repeats the edge pixels (a cephalogram's border is background);
a moved-back map's uncovered cells hold no probability.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

__all__ = ["shift_offsets", "translate", "shift_averaged_logits"]


def shift_offsets(cells: int) -> list[tuple[int, int]]:
    """(dx, dy) in cells of the copies: the image as it is, then ``cells`` right, left, down and up."""
    if cells < 0:
        raise ValueError(f"task.landmarks.global_tta_shift must be >= 0 heatmap cells, got {cells}")
    if cells == 0:
        return [(0, 0)]
    return [(0, 0), (cells, 0), (-cells, 0), (0, cells), (0, -cells)]


def translate(x: torch.Tensor, dx: int, dy: int, *, fill: str) -> torch.Tensor:
    """(..., H, W) -> the same size with its content moved ``dx`` pixels right and ``dy`` down; the uncovered
    border is ``fill``: "edge" (the nearest edge pixel) or "zero"."""
    h, w = x.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    padded = F.pad(x, pad, mode="replicate") if fill == "edge" else F.pad(x, pad)
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w]


def shift_averaged_logits(heatmap_logits: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, cells: int,
                          stride: int) -> torch.Tensor:
    """The global stage's heatmap logits (B, L, h, w) averaged over :func:`shift_offsets` copies of ``images``
    (B, C, H, W): log of the mean of the moved-back softmax maps. ``heatmap_logits`` maps images to one pass's
    logits; ``stride`` is input pixels per heatmap cell."""
    mean = None
    offsets = shift_offsets(cells)
    for dx, dy in offsets:
        logits = heatmap_logits(translate(images, dx * stride, dy * stride, fill="edge")).float()
        b, n, h, w = logits.shape
        probs = F.softmax(logits.flatten(2), dim=-1).view(b, n, h, w)
        back = translate(probs, -dx, -dy, fill="zero")
        mean = back if mean is None else mean + back
    # the smallest normal float32 keeps cells no copy covers finite (decode_heatmaps masks with -inf itself)
    return (mean / len(offsets)).clamp_min(torch.finfo(torch.float32).tiny).log()

"""Sliding-window inference with overlap and blending, so any image size works."""
from __future__ import annotations

import math
from typing import Callable

import torch


def window_starts(length: int, window: int, step: int) -> list[int]:
    """Start offsets covering [0, length) with windows of ``window`` (the last one flush with the end)."""
    if window >= length:
        return [0]
    n = math.ceil((length - window) / step) + 1
    starts = [min(i * step, length - window) for i in range(n)]
    return sorted(set(starts))


def blend_weights(h: int, w: int, kind: str) -> torch.Tensor:
    """(h, w) positive weights peaking at the window centre: gaussian (sigma = size / 8, as nnU-Net) or linear."""
    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64) + 0.5
        c = n / 2
        if kind == "gaussian":
            return torch.exp(-0.5 * ((x - c) / (n / 8)) ** 2)
        if kind == "linear":
            return 1 - (x - c).abs() / c
        raise ValueError(f"blend must be 'gaussian' or 'linear', got {kind!r}")

    wt = axis(h)[:, None] * axis(w)[None, :]
    wt = wt / wt.max()
    return wt.clamp_min(1e-3).float()  # never 0: a pixel seen only at a window's edge still gets a value


@torch.no_grad()
def sliding_window_probs(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, window: int,
                         overlap: float, blend: str = "gaussian", batch_size: int = 8,
                         device: torch.device | None = None) -> torch.Tensor:
    """Class probabilities of (N, C, H, W) images by blended windows.

    ``predict`` maps (B, C, h, w) windows to (B, K, h, w) logits; softmax
    probabilities of overlapping windows are averaged with :func:`blend_weights`.
    When one window covers the image, this is exactly whole-image inference.

    Returns:
        (N, K, H, W) float32 probabilities on the CPU.
    """
    n, _, h, w = images.shape
    wh, ww = min(window, h), min(window, w)
    step_h = max(1, int(round(wh * (1 - overlap))))
    step_w = max(1, int(round(ww * (1 - overlap))))
    boxes = [(y, x) for y in window_starts(h, wh, step_h) for x in window_starts(w, ww, step_w)]
    weight = blend_weights(wh, ww, blend) if len(boxes) > 1 else torch.ones(wh, ww)
    out: torch.Tensor | None = None
    norm = torch.zeros(h, w)
    for y, x in boxes:
        norm[y : y + wh, x : x + ww] += weight
    jobs = [(i, y, x) for i in range(n) for y, x in boxes]
    for k in range(0, len(jobs), batch_size):
        chunk = jobs[k : k + batch_size]
        crops = torch.stack([images[i, :, y : y + wh, x : x + ww] for i, y, x in chunk])
        if device is not None:
            crops = crops.to(device)
        probs = predict(crops).float().softmax(1).cpu()
        if out is None:
            out = torch.zeros(n, probs.shape[1], h, w)
        for (i, y, x), p in zip(chunk, probs):
            out[i, :, y : y + wh, x : x + ww] += p * weight
    assert out is not None
    return out / norm

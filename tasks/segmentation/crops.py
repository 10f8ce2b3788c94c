"""Where the training crops are drawn: uniform, or centred on a foreground pixel (nnU-Net's foreground oversampling).

A lesion covering 0.1-0.4% of an image is in few uniform crops, and a batch of crops without it teaches Dice + CE
"never foreground" (the batch soft Dice of an absent class is best at zero predicted probability). nnU-Net (Isensee
et al., Nat. Methods 2021) centres a third of its patches on a foreground voxel of a random class present in the
case; :func:`crop_origins` does the same per crop, with probability ``foreground_ratio``.
"""
from __future__ import annotations

import torch


def crop_origins(masks: torch.Tensor, fov: torch.Tensor, size: tuple[int, int], foreground_ratio: float
                 ) -> tuple[list[int], list[int], list[bool]]:
    """Top-left corners of one ``size`` (h, w) crop per sample, and whether each is centred on foreground.

    Args:
        masks: (B, H, W) class indices (0 = background), H >= h and W >= w.
        fov: (B, H, W) bool, the pixels that count; foreground outside it is never a centre.
        size: the crop (h, w).
        foreground_ratio: probability, per crop, of centring it on a foreground pixel: a class drawn uniformly among
            the foreground classes in the sample's FOV, then a pixel of that class drawn uniformly. A crop near the
            border is shifted inside the image (the pixel stays in it). A sample without foreground gets a uniform
            crop. Uniform crops draw from torch's global generator exactly as before when this is 0.

    Returns:
        (ys, xs, centred): lists of length B.
    """
    b, h, w = masks.shape
    ch, cw = size
    ys = torch.randint(0, h - ch + 1, (b,)).tolist()
    xs = torch.randint(0, w - cw + 1, (b,)).tolist()
    centred = [False] * b
    if foreground_ratio <= 0:
        return ys, xs, centred
    want = (torch.rand(b) < foreground_ratio).tolist()
    for i in range(b):
        if not want[i]:
            continue
        fg = (masks[i] > 0) & fov[i]
        classes = masks[i][fg].unique()
        if len(classes) == 0:
            continue  # an empty mask (a healthy image): a uniform crop, as nnU-Net does
        c = classes[int(torch.randint(len(classes), (1,)))]
        pts = torch.nonzero(fg & (masks[i] == c))
        y, x = pts[int(torch.randint(len(pts), (1,)))].tolist()
        ys[i] = min(max(y - ch // 2, 0), h - ch)
        xs[i] = min(max(x - cw // 2, 0), w - cw)
        centred[i] = True
    return ys, xs, centred

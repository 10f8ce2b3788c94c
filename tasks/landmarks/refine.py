"""The refinement stage: one model over all landmarks, on high-resolution crops around each first estimate.

The global stage sees the whole cephalogram at ~0.5 mm per pixel; its errors are
a millimetre or two. The refinement stage crops the image at (up to) full
resolution around each estimate, and a second backbone + decoder (the same
``init`` and ``depth`` as the first) predicts the landmark's position in the
crop. It is one model for all landmarks: its decoder has one output map per
landmark and a crop of landmark k is read from map k (the identity as an output
channel), so every landmark's crops train the shared features. In training the
crops are centred on the truth plus Gaussian jitter of ``refine_jitter_mm``
(chosen to match the global stage's validation error), and decoded, like the
first stage, by a local soft-argmax with the Euclidean loss in mm plus the
heatmap term.

Crop geometry (exact, borders included): in continuous pixel coordinates of the
refinement image (pixel j spans [j, j + 1], so a normalised u is u * W), a crop
of size c centred at X spans [X - c/2, X + c/2]; its pixel i samples the image at
continuous x0 + i + 0.5 (torchvision's ``roi_align`` with ``aligned=True`` and one
sample per bin, bilinear between pixels), and a point at crop-normalised v is at
image-normalised u = (x0 + v c) / W. Outside the image the crop reads zeros.

A coarse stage (``task.landmarks.refine_coarse_zoom``) is the same model on a
window ``zoom`` times wider, shrunk to the same ``crop`` pixels: it sees more
context at lower resolution and can pull back an estimate that the fine crop's
+-crop/2 cannot reach. Its window of side w = zoom x crop is sampled at
``crop`` bins, each the mean of ceil(zoom)^2 bilinear samples (roi_align's
``sampling_ratio``): a box filter before the shrink, so that it does not alias.
All the geometry above holds with w in place of c.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import roi_align

from tasks.landmarks.decoding import decode_heatmaps
from tasks.landmarks.dense_head import DecoderHeatmapHead
from transfer.backbones import StagedBackbone

__all__ = ["crop_origins", "extract_crops", "from_crop", "to_crop", "RefinementStage"]

_CROPS_PER_PASS = 64  #: crops through the refinement network at once in inference


def crop_origins(coords: torch.Tensor, image_hw: tuple[int, int], crop: int) -> torch.Tensor:
    """Normalised centres (N, 2) -> top-left corners (N, 2) of ``crop``-pixel windows, continuous image pixels."""
    wh = torch.tensor(image_hw[::-1], dtype=coords.dtype, device=coords.device)
    return coords * wh - crop / 2


def extract_crops(images: torch.Tensor, image_index: torch.Tensor, origins: torch.Tensor, crop: float,
                  size: int | None = None) -> torch.Tensor:
    """(B, C, H, W) images (uint8 or float in [0, 1]), (N,) image of each crop, (N, 2) corners -> (N, C, size, size)
    float crops of ``crop``-pixel windows (``size``: ``crop`` when None; a wider window is box-filtered down to it).
    One image is made float at a time: a batch of full-resolution cephalograms as float is GBs."""
    size = int(crop) if size is None else size
    samples = max(1, math.ceil(crop / size - 1e-6))  # per bin and axis: 1 for an unscaled crop
    out = torch.empty(len(origins), images.shape[1], size, size, device=images.device)
    for b in image_index.unique().tolist():
        sel = (image_index == b).nonzero().flatten()
        boxes = torch.cat([torch.zeros(len(sel), 1, dtype=origins.dtype, device=origins.device), origins[sel],
                           origins[sel] + crop], dim=1)
        out[sel] = roi_align(_as_float(images[b : b + 1]), boxes.float(), output_size=size, spatial_scale=1.0,
                             sampling_ratio=samples, aligned=True)
    return out


def to_crop(coords: torch.Tensor, origins: torch.Tensor, image_hw: tuple[int, int], crop: int) -> torch.Tensor:
    """Image-normalised (N, 2) -> crop-normalised (N, 2)."""
    wh = torch.tensor(image_hw[::-1], dtype=coords.dtype, device=coords.device)
    return (coords * wh - origins) / crop


def from_crop(coords: torch.Tensor, origins: torch.Tensor, image_hw: tuple[int, int], crop: int) -> torch.Tensor:
    """Crop-normalised (N, 2) -> image-normalised (N, 2); the inverse of :func:`to_crop`."""
    wh = torch.tensor(image_hw[::-1], dtype=coords.dtype, device=coords.device)
    return (origins + coords * crop) / wh


class RefinementStage(nn.Module):
    """Crops (N, C, c, c) and their landmark ids (N,) -> heatmap logits (N, h, w), crop coords (N, 2), confidence (N,).

    Args:
        backbone: the stage's own backbone (same architecture and init as the global stage's).
        num_landmarks: L output maps, one per landmark.
        crop: crop size in pixels of the network's input.
        zoom: the window's side in refinement-image pixels is ``zoom * crop`` (1: full resolution; > 1: a coarse
            stage, see the module docstring).
        out_stride, radius, width: the decoder's heatmap stride, soft-argmax window and width.
    """

    def __init__(self, backbone: StagedBackbone, num_landmarks: int, *, crop: int, out_stride: int = 2,
                 radius: int = 3, width: int = 32, sigma_mm: float = 0.5, jitter_mm: float = 2.0,
                 per_image: int = 4, tta_shift: float = 0.0, passes: int = 1, zoom: float = 1.0) -> None:
        super().__init__()
        if zoom < 1:
            raise ValueError(f"zoom must be >= 1 (a window at least as wide as the crop), got {zoom}")
        if crop < 16:
            raise ValueError(f"task.landmarks.refine_crop must be >= 16 pixels, got {crop}")
        if per_image < 1:
            raise ValueError(f"task.landmarks.refine_per_image must be >= 1, got {per_image}")
        if not 0 <= tta_shift < 0.5:
            raise ValueError(f"task.landmarks.refine_tta_shift must be in [0, 0.5), got {tta_shift}")
        if passes < 1:
            raise ValueError(f"task.landmarks.refine_passes must be >= 1, got {passes}")
        self.backbone = backbone
        self.head = DecoderHeatmapHead(backbone.feature_info, num_landmarks, out_stride=out_stride, radius=radius,
                                       width=width)
        self.crop, self.sigma_mm, self.jitter_mm, self.per_image = crop, sigma_mm, jitter_mm, per_image
        self.window = crop * zoom  #: the crop's side in refinement-image pixels
        #: test-time crops: 0 = one centred crop per landmark; s > 0 = also four crops shifted by s x crop
        #: (task.landmarks.refine_tta_shift, a prediction-time option)
        self.tta_shift = tta_shift
        #: test-time passes: each after the first crops again around the previous pass's estimate, which is nearer
        #: the landmark than the global stage's (task.landmarks.refine_passes, a prediction-time option)
        self.passes = passes

    def forward(self, crops: torch.Tensor, landmark: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone.forward_stages(crops, upto=self.head.top_stage)
        logits = self.head.decoder(feats, (self.crop, self.crop))
        chosen = logits[torch.arange(len(landmark), device=logits.device), landmark][:, None]  # (N, 1, h, w)
        coords, confidence = decode_heatmaps(chosen, self.head.radius)
        return {"heatmaps": chosen[:, 0], "coords": coords[:, 0], "confidence": confidence[:, 0]}

    def training_loss(self, refine_images: torch.Tensor, true: torch.Tensor, mm_per_pixel: torch.Tensor,
                      visible: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Euclidean (mm) and heatmap losses on crops centred on the truth plus jitter.

        Args:
            refine_images: (B, C, H, W) the refinement images (uint8 or float in [0, 1]).
            true: (B, L, 2) image-normalised truth.
            mm_per_pixel: (B, 2) mm per refinement-image pixel as (x, y).
            visible: optional (B, L) bool; landmarks not visible are never cropped.
        """
        from tasks.landmarks.heads import euclidean_loss, heatmap_loss

        b, n = true.shape[:2]
        hw = (int(refine_images.shape[-2]), int(refine_images.shape[-1]))
        k = min(self.per_image, n)
        # k random landmarks per image (visible ones first: random keys, invisible ones pushed last)
        keys = torch.rand(b, n, device=true.device) + (0.0 if visible is None else (~visible).float() * 2)
        ids = keys.argsort(dim=1)[:, :k].reshape(-1)
        image = torch.arange(b, device=true.device).repeat_interleave(k)
        target = true[image, ids]
        scale = mm_per_pixel[image]  # (N, 2)
        jitter = torch.randn_like(target) * (self.jitter_mm / scale)  # continuous pixels
        wh = torch.tensor(hw[::-1], dtype=target.dtype, device=target.device)
        origins = target * wh + jitter - self.window / 2
        crops = extract_crops(refine_images, image, origins, self.window, self.crop)
        out = self(crops, ids)
        target_crop = to_crop(target, origins, hw, self.window)
        units = (scale * self.window)[:, None, :]
        keep = None if visible is None else visible[image, ids][:, None]
        euclid = euclidean_loss(out["coords"][:, None].float() * units, target_crop[:, None] * units, keep)
        cell_mm = scale * self.window / torch.tensor(out["heatmaps"].shape[-1:-3:-1], dtype=scale.dtype,
                                                   device=scale.device)
        sigma = (self.sigma_mm / cell_mm)[:, None, :]
        hm = heatmap_loss(out["heatmaps"][:, None].float(), target_crop[:, None], sigma, keep)
        return {"euclidean": euclid, "heatmap": hm}

    @torch.no_grad()
    def refine(self, refine_images: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-normalised estimates (B, L, 2) -> refined (B, L, 2) and confidence (B, L): :meth:`refine_once`
        ``passes`` times, each pass from the one before; the confidence is the last pass's."""
        for _ in range(self.passes):
            coords, confidence = self.refine_once(refine_images, coords)
        return coords, confidence

    @torch.no_grad()
    def refine_once(self, refine_images: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-normalised estimates (B, L, 2) -> refined (B, L, 2) and confidence (B, L): one crop centred on each
        estimate, or with ``tta_shift`` > 0 also four crops shifted by that share of the crop left, right, up and
        down, each decoded and mapped back to the image, their positions and confidences averaged."""
        b, n = coords.shape[:2]
        hw = (int(refine_images.shape[-2]), int(refine_images.shape[-1]))
        flat = coords.reshape(-1, 2).float()
        image = torch.arange(b, device=coords.device).repeat_interleave(n)
        ids = torch.arange(n, device=coords.device).repeat(b)
        centred = crop_origins(flat, hw, self.window)
        refined, confidence = [], []
        for shift in self._shifts(flat.device):  # in chunks of crops: bounded memory whatever the batch
            origins = centred + shift
            parts = [slice(i, i + _CROPS_PER_PASS) for i in range(0, len(flat), _CROPS_PER_PASS)]
            outs = [self(extract_crops(refine_images, image[p], origins[p], self.window, self.crop), ids[p])
                    for p in parts]
            refined.append(torch.cat([from_crop(o["coords"].float(), origins[p], hw, self.window)
                                      for o, p in zip(outs, parts)]).view(b, n, 2))
            confidence.append(torch.cat([o["confidence"].float() for o in outs]).view(b, n))
        return torch.stack(refined).mean(0), torch.stack(confidence).mean(0)

    def _shifts(self, device: torch.device) -> torch.Tensor:
        """(K, 2) offsets in refinement-image pixels of the test-time crops: (0, 0), then +-x and +-y."""
        s = self.tta_shift * self.window
        offsets = [(0.0, 0.0)] + ([(s, 0.0), (-s, 0.0), (0.0, s), (0.0, -s)] if s > 0 else [])
        return torch.tensor(offsets, device=device)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (stored so to fit full-resolution copies in memory) -> float in [0, 1]."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()

"""Landmark heads and losses: direct coordinate regression (the dental seed) and soft-argmax heatmaps.

Coordinate convention (everywhere in this module): a landmark is (x, y)
normalised by the image width and height, x = x_px / W, y = y_px / H, where
x_px is measured in pixel units from the image's left edge, so pixel i's centre
is at (i + 0.5) / W. (0, 0) is the top-left corner of the image, (1, 1) the
bottom-right one. Because the convention is resolution-free, a prediction made
on a resized image maps back to original pixels as x_px = x * W_orig.
"""
from __future__ import annotations

import math

import torch
from kornia.geometry.subpix import render_gaussian2d, spatial_expectation2d, spatial_softmax2d
from torch import nn
from torch.nn import functional as F

from transfer.backbones.staged import FeatureInfo

# -- Euclidean loss --------------------------------------------------------------


def _check_coords(name: str, x: torch.Tensor) -> None:
    if x.dim() != 3 or x.shape[-1] != 2:
        raise ValueError(f"{name} must be (B, L, 2), got shape {tuple(x.shape)}")


def euclidean_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    visible: torch.Tensor | None = None,
    scale: tuple[float, float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean (over images and visible landmarks) of the L2 distance, not squared: the dental seed's loss.

    Args:
        pred, target: (B, L, 2) coordinates (x, y).
        visible: optional (B, L) bool; invisible landmarks do not count. With no
            visible landmark the loss is 0 (still attached to ``pred``'s graph).
        scale: optional (sx, sy) multiplying x and y before the distance, e.g.
            (W * mm_per_px_x, H * mm_per_px_y) to get a loss in mm from normalised
            coordinates of a non-square image.

    Returns:
        a scalar tensor; exactly 0 iff pred == target on every counted landmark.
    """
    _check_coords("pred", pred)
    if target.shape != pred.shape:
        raise ValueError(f"target shape {tuple(target.shape)} differs from pred shape {tuple(pred.shape)}")
    diff = pred - target
    if scale is not None:
        diff = diff * torch.as_tensor(scale, dtype=diff.dtype, device=diff.device)
    sq = diff.pow(2).sum(-1)  # (B, L)
    # sqrt has an infinite derivative at 0: take it only where sq > 0 and feed a
    # harmless 1 elsewhere (the "double where"), so the loss stays exactly 0 at
    # equality with a zero, finite gradient there, and no eps biases the value.
    pos = sq > 0
    dist = torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))
    if visible is None:
        return dist.mean()
    if visible.shape != dist.shape:
        raise ValueError(f"visible must be (B, L) = {tuple(dist.shape)}, got {tuple(visible.shape)}")
    w = visible.to(dist.dtype)
    return (dist * w).sum() / w.sum().clamp_min(1.0)


class EuclideanLoss(nn.Module):
    """:func:`euclidean_loss` as a module; ``scale`` (sx, sy) is fixed at construction."""

    def __init__(self, scale: tuple[float, float] | None = None) -> None:
        super().__init__()
        if scale is not None:
            if len(scale) != 2 or any(not math.isfinite(s) or s <= 0 for s in scale):
                raise ValueError(f"scale must be two positive finite numbers (sx, sy), got {scale}")
            self.register_buffer("scale", torch.tensor([float(s) for s in scale]), persistent=False)
        else:
            self.scale = None

    def forward(self, pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, 2), (B, L, 2), optional (B, L) bool -> scalar loss."""
        return euclidean_loss(pred, target, visible, self.scale)


# -- direct regression -------------------------------------------------------------


class RegressionHead(nn.Module):
    """Pooled features (B, in_features) -> normalised coordinates (B, L, 2): FC -> ReLU -> dropout -> FC(2L)."""

    def __init__(self, in_features: int, num_landmarks: int, hidden: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        if in_features < 1 or num_landmarks < 1 or hidden < 1:
            raise ValueError(f"in_features, num_landmarks and hidden must be >= 1, got "
                             f"{in_features}, {num_landmarks}, {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_features, self.num_landmarks = in_features, num_landmarks
        self.fc1 = nn.Linear(in_features, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, 2 * num_landmarks)
        # Start every landmark at the image centre (0.5, 0.5) with small weights.
        # The output is linear, no sigmoid: a sigmoid saturates and flattens the
        # gradient for landmarks near the border (menton sits near the bottom of a
        # cephalogram), and augmented targets can fall slightly outside [0, 1];
        # the bias-0.5 start gives the same centred start a sigmoid would.
        nn.init.normal_(self.fc2.weight, std=1e-3)
        nn.init.constant_(self.fc2.bias, 0.5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, in_features) -> (B, L, 2), (x / W, y / H)."""
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(f"expected features (B, {self.in_features}), got shape {tuple(features.shape)}")
        x = self.drop(F.relu(self.fc1(features)))
        return self.fc2(x).view(-1, self.num_landmarks, 2)


# -- heatmaps ---------------------------------------------------------------------


def spatial_expectation(probs: torch.Tensor) -> torch.Tensor:
    """Expected position of spatial distributions (B, L, h, w) (each summing to 1) -> (B, L, 2) normalised (x, y).

    kornia's normalised coordinates are corner-aligned (-1 at pixel 0's centre,
    +1 at pixel w-1's centre), not ours, so we take its pixel-index expectation
    (pixel j's centre at j) and shift by half a pixel: x = (j + 0.5) / w.
    """
    h, w = probs.shape[-2:]
    px = spatial_expectation2d(probs, normalized_coordinates=False)  # (B, L, 2) in pixel indices
    size = torch.tensor([w, h], dtype=px.dtype, device=px.device)
    return (px + 0.5) / size


def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Differentiable argmax: spatial softmax of logits (B, L, h, w) then expectation -> (B, L, 2) normalised."""
    return spatial_expectation(spatial_softmax2d(logits))


def gaussian_heatmaps(coords: torch.Tensor, size: tuple[int, int], sigma: float | torch.Tensor) -> torch.Tensor:
    """Target heatmaps (B, L, H', W') for normalised coords (B, L, 2): Gaussians of ``sigma`` heatmap pixels.

    ``sigma`` is one number, or a tensor broadcastable to (B, L, 2) (per image and
    axis: a sigma in mm is a different number of heatmap pixels per image and axis).

    Rendered by kornia's ``render_gaussian2d``; each map sums to 1 over the grid
    (a Gaussian cut by the border is renormalised), i.e. it is a distribution
    directly comparable to a spatial softmax.
    """
    _check_coords("coords", coords)
    h, w = size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive (H', W'), got {size}")
    sigma = torch.as_tensor(sigma, dtype=coords.dtype, device=coords.device)
    if not bool((sigma > 0).all()):
        raise ValueError(f"sigma must be > 0 (heatmap pixels), got {sigma}")
    size_xy = torch.tensor([w, h], dtype=coords.dtype, device=coords.device)
    mean_px = coords * size_xy - 0.5  # our [0, 1] convention -> kornia's pixel-index coordinates
    std = sigma.expand_as(mean_px).contiguous()
    return render_gaussian2d(mean_px, std, (h, w), normalized_coordinates=False)


def heatmap_loss(
    logits: torch.Tensor, coords: torch.Tensor, sigma: float | torch.Tensor, visible: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(target || softmax(logits)) between each Gaussian target and the predicted spatial distribution.

    We compare distributions rather than raw maps with MSE: the KL's gradient
    w.r.t. the logits is (softmax - target), independent of the map size, while
    an MSE on maps whose values are ~1/(h w) gives vanishing gradients; KL is 0
    iff the two distributions match. Mean over images and visible landmarks.

    Args:
        logits: (B, L, h, w) heatmap logits.
        coords: (B, L, 2) normalised target coordinates.
        sigma: target Gaussian SD in heatmap pixels (a number or per image and axis, see
            :func:`gaussian_heatmaps`).
        visible: optional (B, L) bool.
    """
    if logits.dim() != 4 or logits.shape[:2] != coords.shape[:2]:
        raise ValueError(f"logits (B, L, h, w) and coords (B, L, 2) disagree: {tuple(logits.shape)}, "
                         f"{tuple(coords.shape)}")
    target = gaussian_heatmaps(coords.detach(), tuple(logits.shape[-2:]), sigma).flatten(2)
    log_p = F.log_softmax(logits.flatten(2), dim=-1)
    # xlogy: 0 * log 0 = 0 where the target underflows to 0 far from the peak
    kl = (torch.special.xlogy(target, target) - target * log_p).sum(-1)  # (B, L)
    if visible is None:
        return kl.mean()
    w = visible.to(kl.dtype)
    return (kl * w).sum() / w.sum().clamp_min(1.0)


class HeatmapHead(nn.Module):
    """A feature map (B, C, h, w) of stride ``stride`` -> heatmap logits and soft-argmax coordinates.

    conv3x3-BN-ReLU, then log2(``upsample``) x (bilinear x2, conv3x3-BN-ReLU),
    then a 1x1 conv to L maps: heatmaps at stride ``stride // upsample`` of the
    input image. Bilinear upsampling + conv avoids transposed-convolution
    checkerboards.
    """

    def __init__(
        self,
        in_channels: int,
        num_landmarks: int,
        stride: int,
        mid_channels: int = 64,
        upsample: int = 2,
        learn_temperature: bool = True,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_landmarks < 1 or mid_channels < 1:
            raise ValueError(f"in_channels, num_landmarks and mid_channels must be >= 1, got "
                             f"{in_channels}, {num_landmarks}, {mid_channels}")
        if upsample < 1 or upsample & (upsample - 1):
            raise ValueError(f"upsample must be a power of two >= 1, got {upsample}")
        if stride < 1 or stride % upsample:
            raise ValueError(f"stride must be a positive multiple of upsample={upsample}, got {stride}")
        self.in_channels, self.num_landmarks = in_channels, num_landmarks
        self.heatmap_stride = stride // upsample  #: input-image pixels per heatmap pixel

        def block(cin: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, mid_channels, 3, padding=1, bias=False), nn.BatchNorm2d(mid_channels),
                    nn.ReLU(inplace=True)]

        layers = block(in_channels)
        for _ in range(int(math.log2(upsample))):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *block(mid_channels)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(mid_channels, num_landmarks, 1)
        # log of the inverse temperature beta (init beta = 1): the softmax sees
        # beta * logits; the log keeps beta positive. We scale ourselves rather
        # than pass kornia's ``temperature``, whose meaning (multiply or divide)
        # changed across kornia versions.
        self.log_beta = nn.Parameter(torch.zeros(()), requires_grad=learn_temperature)

    @classmethod
    def from_feature_info(cls, info: FeatureInfo, num_landmarks: int, **kwargs: int | bool) -> "HeatmapHead":
        """A head for one backbone stage, e.g. ``backbone.feature_info[-2]``."""
        return cls(info.channels, num_landmarks, info.stride, **kwargs)  # type: ignore[arg-type]

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, h, w) -> {"heatmaps": (B, L, h*u, w*u) logits (already times beta), "coords": (B, L, 2) in [0, 1]}.

        ``softmax(heatmaps)`` over each map is exactly the distribution whose
        expectation is ``coords``, so :func:`heatmap_loss` on ``heatmaps`` and
        :func:`euclidean_loss` on ``coords`` train the same thing.
        """
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(f"expected a feature map (B, {self.in_channels}, h, w), got shape "
                             f"{tuple(features.shape)}")
        logits = self.out(self.body(features)) * self.beta
        return {"heatmaps": logits, "coords": soft_argmax(logits)}

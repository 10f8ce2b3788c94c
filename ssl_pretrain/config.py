"""Option sections of the stage-1 methods: ``pretrain.cae``, ``pretrain.augpred``, ``pretrain.contrastive``.

Each method declares its section (``PretrainMethod.config_section`` / ``config_class``); the core config
reads them from the method registry, so it lists no method by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transfer.config.io import ConfigError


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _check_range(pair: tuple[float, float], key: str, lo: float, hi: float) -> None:
    a, b = pair
    _check(lo <= a <= b <= hi, key, f"must be (min, max) with {lo} <= min <= max <= {hi}, got {tuple(pair)}")


@dataclass
class ViewAugConfig:
    """Two-view augmentation preset for grayscale radiographs (no hue/saturation: there is no colour)."""

    crop_scale: tuple[float, float] = (0.4, 1.0)  #: area fraction of the random resized crop
    rotation: float = 10.0  #: max rotation in degrees (anatomy has a canonical orientation)
    brightness: float = 0.2  #: multiplicative brightness jitter, factor in [1 - b, 1 + b]
    contrast: float = 0.2  #: contrast jitter around the image mean, factor in [1 - c, 1 + c]
    gamma: tuple[float, float] = (0.8, 1.25)  #: gamma range (exposure / window differences)
    blur_p: float = 0.3  #: probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 1.5)  #: blur sigma range in pixels
    noise_std: float = 0.02  #: std of additive Gaussian noise (applied with p=0.5); 0 disables
    hflip: bool = False  #: off by default: left/right matters in chest and dental radiographs

    def __post_init__(self) -> None:
        _check_range(self.crop_scale, "pretrain.contrastive.views.crop_scale", 0.0, 1.0)
        _check(self.crop_scale[0] > 0, "pretrain.contrastive.views.crop_scale", "min must be > 0")
        _check(0 <= self.rotation <= 180, "pretrain.contrastive.views.rotation",
               f"must be in [0, 180] degrees, got {self.rotation}")
        _check(0 <= self.brightness < 1, "pretrain.contrastive.views.brightness", f"must be in [0, 1), got {self.brightness}")
        _check(0 <= self.contrast < 1, "pretrain.contrastive.views.contrast", f"must be in [0, 1), got {self.contrast}")
        _check_range(self.gamma, "pretrain.contrastive.views.gamma", 1e-3, 10.0)
        _check(0 <= self.blur_p <= 1, "pretrain.contrastive.views.blur_p",
               f"must be a probability in [0, 1], got {self.blur_p}")
        _check_range(self.blur_sigma, "pretrain.contrastive.views.blur_sigma", 1e-3, 100.0)
        _check(0 <= self.noise_std < 1, "pretrain.contrastive.views.noise_std", f"must be in [0, 1), got {self.noise_std}")


@dataclass
class CAEConfig:
    """Convolutional autoencoder (the dental seed adapted AlexNet this way)."""

    loss: Literal["mse", "l1"] = "mse"  #: reconstruction loss against the input image
    #: last encoder stage; None = the last spatial stage; AlexNet ``fc6`` includes the fc stage (dental seed)
    encoder_upto: str | None = None
    decoder_width: int = 32  #: channels of the full-resolution decoder block; x2 per level up, capped at 512

    def __post_init__(self) -> None:
        _check(self.decoder_width >= 1, "pretrain.cae.decoder_width", f"must be >= 1, got {self.decoder_width}")
        _check(self.encoder_upto is None or self.encoder_upto != "", "pretrain.cae.encoder_upto",
               "must be a stage name or null (last spatial stage)")


@dataclass
class AugPredConfig:
    """Augmentation prediction: classify which of K transforms was applied to each image."""

    #: the K classes; rot90/rot270 need square images (see ssl_pretrain.augment)
    transforms: list[str] = field(default_factory=lambda: ["rot0", "rot90", "rot180", "rot270"])

    def __post_init__(self) -> None:
        from ssl_pretrain.augment import AUGPRED_TRANSFORMS  # the registry of transforms is the list of names

        bad = [t for t in self.transforms if t not in AUGPRED_TRANSFORMS]
        _check(not bad, "pretrain.augpred.transforms", f"unknown {bad}; valid: {AUGPRED_TRANSFORMS.names()}")
        _check(len(self.transforms) >= 2, "pretrain.augpred.transforms", f"need at least 2 classes, got {self.transforms}")
        dup = sorted({t for t in self.transforms if self.transforms.count(t) > 1})
        _check(not dup, "pretrain.augpred.transforms", f"listed twice: {dup}")


@dataclass
class ContrastiveConfig:
    """SimCLR, MoCo v2 and BYOL (heads and losses from lightly)."""

    proj_hidden: int = 512  #: hidden width of the projection head
    proj_dim: int = 128  #: output width of the projection head
    pred_hidden: int = 512  #: hidden width of BYOL's prediction head
    temperature: float = 0.1  #: NT-Xent temperature (SimCLR, MoCo)
    queue_size: int = 4096  #: MoCo negatives memory bank; 0 = in-batch negatives only
    momentum_start: float = 0.99  #: MoCo/BYOL target momentum at the start ...
    momentum_end: float = 1.0  #: ... rising to this on a cosine schedule over training
    views: ViewAugConfig = field(default_factory=ViewAugConfig)

    def __post_init__(self) -> None:
        for k in ("proj_hidden", "proj_dim", "pred_hidden"):
            _check(getattr(self, k) >= 1, f"pretrain.contrastive.{k}", f"must be >= 1, got {getattr(self, k)}")
        _check(self.temperature > 0, "pretrain.contrastive.temperature", f"must be > 0, got {self.temperature}")
        _check(self.queue_size >= 0, "pretrain.contrastive.queue_size", f"must be >= 0, got {self.queue_size}")
        _check(0 <= self.momentum_start <= self.momentum_end <= 1, "pretrain.contrastive.momentum_start",
               f"need 0 <= momentum_start <= momentum_end <= 1, got {self.momentum_start} -> {self.momentum_end}")

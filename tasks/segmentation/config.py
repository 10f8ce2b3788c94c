"""``task.segmentation``: classes, the image/mask pairing rule, crops, loss weights, sliding window, decoder."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from transfer.config.io import ConfigError


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"task.segmentation.{key}: {msg}")


@dataclass
class SegmentationConfig:
    """``task.segmentation``.

    A split (``data.train`` / ``data.val`` / ``data.test``) is a folder holding
    ``image_dir``, ``mask_dir`` and optionally ``fov_dir``. Each image's stem is
    matched by ``image_pattern`` (a regex; its named groups, plus ``stem``, fill
    the templates) and its mask is ``mask_dir/mask_template.format(**groups)``.
    DRIVE: ``21_training.tif`` -> ``{id}_manual1.gif`` = ``21_manual1.gif`` and
    ``{stem}_mask.gif`` = ``21_training_mask.gif``.
    """

    #: pixel values of the classes in the mask files, class 0 first (background)
    class_values: list[int] = field(default_factory=lambda: [0, 255])
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])
    image_dir: str = "images"  #: images, relative to the split folder
    mask_dir: str = "masks"  #: masks, relative to the split folder
    #: regex matched (fully) against each image's file stem; named groups fill the templates
    image_pattern: str = r"(?P<id>.+)"
    mask_template: str = "{stem}.png"
    fov_dir: str | None = None  #: field-of-view masks (nonzero = inside), relative to the split folder
    fov_template: str = "{stem}_mask.png"
    crop_size: int = 256  #: training crops (square, px at the working size); also the sliding window
    overlap: float = 0.5  #: sliding-window overlap (fraction of the window)
    blend: Literal["gaussian", "linear"] = "gaussian"  #: weights of overlapping windows
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    decoder_stride: int = 1  #: output stride of the decoder (1, 2 or 4); logits are upsampled to the image
    decoder_width: int = 32  #: channels of the finest decoder level
    decoder_top_stage: str | None = None  #: deepest backbone stage the decoder reads (default: deepest spatial)
    image_skip: bool = True  #: feed the input image to the decoder's last level (thin structures)
    vflip: bool = False  #: random vertical flips in training (horizontal: data.augment.hflip)
    spacing_mm: float | None = None  #: mm per pixel of the mask files (scoring is at their resolution), for distances in mm
    plots: int = 3  #: overlay plots per split (best, median, worst Dice)
    #: share of training crops centred on a random foreground pixel (class > 0, inside the FOV) of their image; the
    #: rest are uniform. nnU-Net draws a third of its patches this way: a lesion covering 0.1-0.4% of the pixels is
    #: otherwise in few random crops, and Dice + CE on crops without it teach "never foreground"
    foreground_ratio: float = 0.33
    #: a training split whose every mask is empty inside its FOV is refused (wrong class_values or mask folder);
    #: true trains on it
    allow_no_foreground: bool = False

    def __post_init__(self) -> None:
        _check(len(self.class_values) >= 2, "class_values", "needs at least two classes (background first)")
        _check(len(set(self.class_values)) == len(self.class_values), "class_values", "values must be distinct")
        _check(all(0 <= v <= 65535 for v in self.class_values), "class_values", "values must be in [0, 65535]")
        _check(len(self.class_names) == len(self.class_values), "class_names",
               f"{len(self.class_names)} names for {len(self.class_values)} class_values")
        try:
            rx = re.compile(self.image_pattern)
        except re.error as e:
            raise ConfigError(f"task.segmentation.image_pattern: invalid regex ({e})") from e
        groups = set(rx.groupindex) | {"stem"}
        for key in ("mask_template", "fov_template"):
            names = set(re.findall(r"{(\w+)}", getattr(self, key)))
            _check(names <= groups, key, f"uses {sorted(names - groups)}, not a named group of image_pattern "
                                         f"(groups: {sorted(groups)})")
        _check(self.crop_size >= 16, "crop_size", f"must be >= 16, got {self.crop_size}")
        _check(0 <= self.overlap < 1, "overlap", f"must be in [0, 1), got {self.overlap}")
        _check(self.dice_weight >= 0 and self.ce_weight >= 0 and self.dice_weight + self.ce_weight > 0,
               "dice_weight", "dice_weight and ce_weight must be >= 0, not both 0")
        _check(self.decoder_stride in (1, 2, 4), "decoder_stride", f"must be 1, 2 or 4, got {self.decoder_stride}")
        _check(self.decoder_width >= 1, "decoder_width", "must be >= 1")
        _check(self.spacing_mm is None or self.spacing_mm > 0, "spacing_mm", "must be > 0")
        _check(self.plots >= 0, "plots", "must be >= 0")
        _check(0 <= self.foreground_ratio <= 1, "foreground_ratio", f"must be in [0, 1], got {self.foreground_ratio}")

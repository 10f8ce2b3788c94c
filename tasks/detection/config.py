"""``task.detection``: the detection task's options (classes, detector, pyramid stages, thresholds)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transfer.config.io import ConfigError


@dataclass
class DetectionConfig:
    """``task.detection``."""

    #: the object classes, in order; an annotation naming any other class is an error
    classes: list[str] = field(default_factory=list)
    #: the torchvision detector on the feature pyramid (see tasks/detection/model.py for the CPU timings)
    detector: Literal["faster_rcnn", "fcos", "retinanet"] = "faster_rcnn"
    #: backbone stages feeding the pyramid (default: the deepest stage at each stride 8, 16, 32)
    fpn_stages: list[str] = field(default_factory=list)
    fpn_channels: int = 128  #: channels of every pyramid level (torchvision's default, 256, is slow on CPU)
    #: anchor sizes per level as multiples of the level's stride (Faster R-CNN, RetinaNet)
    anchor_strides: list[float] = field(default_factory=lambda: [2.0, 4.0])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    #: detections below this score are not kept at all (low, so that mAP and FROC see the whole curve)
    min_score: float = 0.01
    #: the operating point: boxes written by ``predict``, per-image F1, overlays
    score_threshold: float = 0.5
    nms_iou: float = 0.5
    max_detections: int = 100  #: per image
    #: Faster R-CNN: region proposals sampled per image for the box head's loss (torchvision: 512)
    roi_samples: int = 256
    vflip: bool = False  #: random vertical flips in training (``data.augment.hflip`` gives horizontal ones)
    #: FROC operating points: false positives per image (LUNA16's seven)
    froc_fps: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
    #: a box with zero width or height: ``skip`` it and report it (BCCD has two), or stop with an ``error``
    degenerate_boxes: Literal["skip", "error"] = "skip"
    #: a training split without a single box is refused (a wrong file, a filter gone wrong); true trains on it
    allow_no_boxes: bool = False

    def __post_init__(self) -> None:
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"task.detection.classes: duplicate names in {self.classes}")
        if self.fpn_channels < 8:
            raise ConfigError("task.detection.fpn_channels: must be >= 8")
        for k in ("min_score", "score_threshold", "nms_iou"):
            v = getattr(self, k)
            if not 0 <= v <= 1:
                raise ConfigError(f"task.detection.{k}: must be in [0, 1], got {v}")
        if self.score_threshold < self.min_score:
            raise ConfigError(f"task.detection.score_threshold ({self.score_threshold}) is below min_score "
                              f"({self.min_score}): boxes under min_score are never produced")
        if not self.anchor_strides or any(a <= 0 for a in self.anchor_strides):
            raise ConfigError("task.detection.anchor_strides: must be positive numbers")
        if not self.aspect_ratios or any(a <= 0 for a in self.aspect_ratios):
            raise ConfigError("task.detection.aspect_ratios: must be positive numbers")
        if self.max_detections < 1 or self.roi_samples < 1:
            raise ConfigError("task.detection.max_detections and roi_samples must be >= 1")
        if not self.froc_fps or any(f <= 0 for f in self.froc_fps):
            raise ConfigError("task.detection.froc_fps: must be positive numbers")

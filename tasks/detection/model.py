"""A torchvision detector over the staged backbone's named feature maps.

Ownership follows the other tasks, so ``init`` and ``depth`` mean the same:
``model.backbone`` is the :class:`~transfer.backbones.StagedBackbone` (frozen
stage by stage by ``setup_depth``), ``model.head`` is the torchvision detector
*without* the backbone's parameters: its ``backbone`` attribute is a
:class:`StagePyramid` that holds our backbone by an unregistered reference and
owns only the feature pyramid. So ``model.head.parameters()`` are exactly the
FPN and the detector heads (always trained), and each backbone parameter is in
exactly one stage.

Choice of detector (measured once, on this 2-core CPU shared with other jobs, so
noisy: efficientnet_lite0, 240x320 input, batch 4, fpn_channels 128, conv_head then
still the stride-32 map (now blocks6, cheaper for all three), seconds per
training step incl. backward / per inference batch): Faster R-CNN 1.15 / 0.27,
FCOS 0.7 / 1.2, RetinaNet 16-18 / 4.1-4.6. FCOS trains a step fastest, but
its dense head keeps thousands of low-score candidates (``min_score`` 0.01, needed
for mAP and FROC) and evaluates 4x slower, and the validation pass runs every
epoch; Faster R-CNN's RPN is one convolution and its box head sees a few hundred
proposals. Faster R-CNN is the default, and it converges fast on few images
(BCCD: validation mAP@0.5 0.65 after one epoch of 51 steps, from ImageNet); the
convergence of FCOS was not measured. The others stay selectable
(``task.detection.detector``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import (ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool,
                                                     LastLevelP6P7)

from tasks.detection.config import DetectionConfig
from transfer.api import TaskModel
from transfer.backbones import StagedBackbone
from transfer.config import ConfigError
from transfer.registry import Registry


def default_fpn_stages(backbone: StagedBackbone, strides: tuple[int, ...] = (8, 16, 32)) -> list[str]:
    """The deepest stage at each of ``strides`` that the backbone has (its most refined map at that scale).

    The last spatial stage is passed over when another stage shares its stride: it is then the
    classifier-facing projection (EfficientNet's ``conv_head``, 1x1 to 1280 channels), not a new scale.
    """
    info = list(backbone.feature_info)
    if len(info) > 1 and info[-1].stride == info[-2].stride:
        info = info[:-1]
    out = []
    for s in strides:
        at = [f.stage for f in info if f.stride == s]
        if at:
            out.append(at[-1])
    if not out:
        raise ConfigError(f"{backbone.name} has no feature map at stride 8, 16 or 32; set task.detection.fpn_stages")
    return out


class StagePyramid(nn.Module):
    """Images -> FPN levels over the named stage outputs; the ``backbone`` a torchvision detector expects.

    The staged backbone is *not* registered here (it belongs to the task model),
    so this module's parameters are the pyramid's alone.
    """

    def __init__(self, backbone: StagedBackbone, stages: list[str], out_channels: int,
                 extra: ExtraFPNBlock | None) -> None:
        super().__init__()
        info = {f.stage: f for f in backbone.feature_info}
        order = list(backbone.stage_names)
        bad = [s for s in stages if s not in info]
        if bad or not stages:
            raise ConfigError(f"task.detection.fpn_stages: {bad or stages} not spatial stages of {backbone.name}; "
                              f"valid: {list(info)}")
        if [order.index(s) for s in stages] != sorted(order.index(s) for s in stages) or len(set(stages)) < len(stages):
            raise ConfigError(f"task.detection.fpn_stages must be distinct and ordered input to output: {stages}")
        self._backbone = [backbone]  # a list: not registered, see the module docstring
        self.stages = list(stages)
        self.strides = [info[s].stride for s in stages]
        self.out_channels = out_channels  # read by torchvision's detectors
        self.fpn = FeaturePyramidNetwork([info[s].channels for s in stages], out_channels, extra_blocks=extra)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """(B, C, H, W) in [0, 1] (the backbone normalises) -> level name -> (B, out_channels, h, w)."""
        feats = self._backbone[0].forward_stages(x, upto=self.stages[-1])
        return self.fpn(OrderedDict((s, feats[s]) for s in self.stages))


#: detector kind -> builder(backbone, stages, num_classes incl. background, options, image size) -> nn.Module
DETECTORS: Registry[Callable[..., nn.Module]] = Registry("detector")


def _transform_kwargs(image_size: tuple[int, int], in_chans: int) -> dict[str, Any]:
    # The images already have the working size (the decode cache resized them): min/max size equal to it keep
    # the detector's internal resize at scale 1. Our backbone normalises inside, so the detector's transform
    # gets the identity (mean 0, std 1), one value per input channel, or images would be normalised twice.
    h, w = image_size
    return {"min_size": min(h, w), "max_size": max(h, w), "image_mean": [0.0] * in_chans,
            "image_std": [1.0] * in_chans}


def _anchors(strides: list[int], o: DetectionConfig) -> AnchorGenerator:
    sizes = tuple(tuple(int(round(s * a)) for a in o.anchor_strides) for s in strides)
    return AnchorGenerator(sizes, (tuple(o.aspect_ratios),) * len(strides))


@DETECTORS.register("faster_rcnn")
def faster_rcnn(backbone: StagedBackbone, stages: list[str], num_classes: int, o: DetectionConfig,
                image_size: tuple[int, int]) -> nn.Module:
    body = StagePyramid(backbone, stages, o.fpn_channels, LastLevelMaxPool())
    strides = body.strides + [body.strides[-1] * 2]  # + the max-pooled level
    anchors = _anchors(strides, o)
    return FasterRCNN(
        body, num_classes=num_classes, **_transform_kwargs(image_size, backbone.in_chans),
        rpn_anchor_generator=anchors, rpn_head=RPNHead(o.fpn_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=list(stages), output_size=7, sampling_ratio=2),
        # fewer proposals than torchvision's COCO defaults (2000 / 1000): BCCD has <= 30 objects per image and
        # the box head's cost on a CPU is proportional to the number of proposals
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300,
        box_score_thresh=o.min_score, box_nms_thresh=o.nms_iou, box_detections_per_img=o.max_detections,
        box_batch_size_per_image=o.roi_samples,
    )


@DETECTORS.register("retinanet")
def retinanet(backbone: StagedBackbone, stages: list[str], num_classes: int, o: DetectionConfig,
              image_size: tuple[int, int]) -> nn.Module:
    body = StagePyramid(backbone, stages, o.fpn_channels, LastLevelP6P7(o.fpn_channels, o.fpn_channels))
    strides = body.strides + [body.strides[-1] * 2, body.strides[-1] * 4]
    return RetinaNet(body, num_classes=num_classes, **_transform_kwargs(image_size, backbone.in_chans),
                     anchor_generator=_anchors(strides, o), score_thresh=o.min_score, nms_thresh=o.nms_iou,
                     detections_per_img=o.max_detections)


@DETECTORS.register("fcos")
def fcos(backbone: StagedBackbone, stages: list[str], num_classes: int, o: DetectionConfig,
         image_size: tuple[int, int]) -> nn.Module:
    body = StagePyramid(backbone, stages, o.fpn_channels, LastLevelP6P7(o.fpn_channels, o.fpn_channels))
    strides = body.strides + [body.strides[-1] * 2, body.strides[-1] * 4]
    # FCOS is anchor-free: one "anchor" per location of the level's stride marks the location (torchvision's way)
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    return FCOS(body, num_classes=num_classes, **_transform_kwargs(image_size, backbone.in_chans),
                anchor_generator=anchors, score_thresh=o.min_score, nms_thresh=o.nms_iou,
                detections_per_img=o.max_detections)


def flip_boxes(boxes: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Mirror (..., 4) xyxy boxes in an image of extent ``size`` along x (dim 0) or y (dim 1)."""
    out = boxes.clone()
    out[..., dim] = size - boxes[..., dim + 2]
    out[..., dim + 2] = size - boxes[..., dim]
    return out


class DetectionModel(TaskModel):
    """Staged backbone + (FPN + detector heads). Labels inside the detector are 1..C (0: background)."""

    reads_stage_outputs = True

    def __init__(self, backbone: StagedBackbone, num_classes: int, options: DetectionConfig,
                 image_size: tuple[int, int], *, hflip: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError("task.detection.classes: declare at least one class")
        self.backbone = backbone
        stages = list(options.fpn_stages) or default_fpn_stages(backbone)
        self.fpn_stages = stages
        self.head = DETECTORS.get(options.detector)(backbone, stages, num_classes + 1, options, image_size)
        names = list(backbone.stage_names)
        self.unused_stages: list[str] = names[names.index(stages[-1]) + 1:]
        self.hflip, self.vflip = hflip, options.vflip

    def targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Images and per-image targets in working-size pixels (boxes are stored normalised, labels padded -1)."""
        images = batch["image"]
        h, w = images.shape[-2:]
        boxes = batch["boxes"].float() * torch.tensor([w, h, w, h], dtype=torch.float32, device=images.device)
        labels = batch["labels"]
        if self.training and (self.hflip or self.vflip):
            # random flips per image: cells and lesions have no preferred orientation
            for dim, on, axis, size in ((0, self.hflip, -1, w), (1, self.vflip, -2, h)):
                if not on:
                    continue
                sel = torch.rand(len(images), device=images.device) < 0.5
                if sel.any():
                    images = torch.where(sel[:, None, None, None], images.flip(axis), images)
                    boxes = torch.where(sel[:, None, None], flip_boxes(boxes, size, dim), boxes)
        targets = []
        for b, l in zip(boxes, labels):
            keep = l >= 0
            targets.append({"boxes": b[keep], "labels": l[keep].long() + 1})
        return images, targets

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images, targets = self.targets(batch)
        losses = self.head(list(images), targets)
        loss = torch.stack(list(losses.values())).sum()
        return {"loss": loss, **{k: v.detach() for k, v in losses.items()}}

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """(B, C, H, W) in [0, 1] -> per image {"boxes": (K, 4) xyxy working pixels, "labels": (K,) 0..C-1, "scores"}.

        In eval mode (the head in training mode wants targets: use ``training_step``).
        """
        outs = self.head(list(images))
        return [{"boxes": o["boxes"], "labels": o["labels"] - 1, "scores": o["scores"]} for o in outs]

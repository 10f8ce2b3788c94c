"""The dense decoder: a U-Net-style top-down path over a staged backbone's named feature maps.

The decoder reads ``backbone.forward_stages`` / ``forward_features`` outputs by
stage name (channels and strides from ``backbone.feature_info``), so one module
serves every registered backbone (tiny, torchvision, timm, EfficientNet-Lite).
Starting from the deepest stage used, each level upsamples the running map *to
the spatial size of the next skip* (never by a fixed x2, so odd input sizes and
sizes that are not multiples of 32 work), concatenates the skip and applies two
3x3 conv-BN-ReLU blocks. Of several stages at one stride the last one is the
skip (EfficientNet's stem and blocks0 are both stride 2: blocks0 is used). An
optional image skip (the input itself, stride 1) gives the last level
full-resolution detail for thin structures such as retinal vessels. The output
is resized to exactly ``ceil(H / out_stride) x ceil(W / out_stride)`` and mapped
to ``num_outputs`` channels by a 1x1 convolution (class logits, heatmaps).

The decoder is the new head of a dense task: it always trains, whatever the
fine-tuning depth (``depth`` only chooses backbone stages).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from transfer.backbones.staged import FeatureInfo

__all__ = ["DenseDecoder", "decoder_stages"]

_STRIDES = (1, 2, 4)


def decoder_stages(feature_info: Sequence[FeatureInfo], top_stage: str | None = None) -> list[FeatureInfo]:
    """The stages a decoder reads, shallow to deep: the last stage at each stride, up to ``top_stage``.

    ``top_stage`` (default: the deepest spatial stage) must be one of ``feature_info``'s stages.
    """
    names = [f.stage for f in feature_info]
    if not names:
        raise ValueError("the backbone has no spatial stage to decode")
    if top_stage is None:
        top_stage = names[-1]
    if top_stage not in names:
        raise ValueError(f"decoder top stage {top_stage!r} is not a spatial stage; valid: {', '.join(names)}")
    used = list(feature_info[: names.index(top_stage) + 1])
    by_stride: dict[int, FeatureInfo] = {}
    for f in used:  # later stages at the same stride replace earlier ones
        by_stride[f.stride] = f
    return sorted(by_stride.values(), key=lambda f: f.stride)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class DenseDecoder(nn.Module):
    """U-Net top-down path with skips from named stages; logits at ``out_stride`` (1, 2 or 4).

    Args:
        feature_info: the backbone's ``feature_info`` (channels and stride per spatial stage).
        num_outputs: channels of the output map (classes for segmentation, landmarks for heatmaps).
        out_stride: output stride w.r.t. the input image: 1, 2 or 4.
        width: channels of the finest decoder level; a level at stride s has
            ``min(width * s / s_min, max_width)`` channels (wider where maps are small).
        max_width: cap on a level's channels.
        top_stage: deepest backbone stage the decoder reads (default: the deepest spatial stage);
            stages above it are unused by the head.
        image_channels: > 0 adds the input image (that many channels) as a stride-1 skip
            (only used when ``out_stride`` is 1).
    """

    def __init__(self, feature_info: Sequence[FeatureInfo], num_outputs: int, *, out_stride: int = 1,
                 width: int = 32, max_width: int = 256, top_stage: str | None = None,
                 image_channels: int = 0) -> None:
        super().__init__()
        if out_stride not in _STRIDES:
            raise ValueError(f"out_stride must be one of {_STRIDES}, got {out_stride}")
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        if width < 1 or max_width < width:
            raise ValueError(f"need 1 <= width <= max_width, got width={width}, max_width={max_width}")
        if image_channels < 0:
            raise ValueError(f"image_channels must be >= 0, got {image_channels}")
        self.levels = decoder_stages(feature_info, top_stage)
        self.top_stage = self.levels[-1].stage
        self.stage_names = [f.stage for f in self.levels]
        self.out_stride = out_stride
        self.num_outputs = num_outputs
        self.image_channels = image_channels if out_stride == 1 else 0
        # skips finer than the output stride are not needed; the coarsest one seeds the path
        skips = [f for f in self.levels if f.stride >= out_stride] or [self.levels[0]]
        self.skip_names = [f.stage for f in skips]
        s_min = skips[0].stride

        def w(stride: int) -> int:
            return int(min(width * max(stride // max(s_min, 1), 1), max_width))

        top = skips[-1]
        self.top_conv = nn.Sequential(nn.Conv2d(top.channels, w(top.stride), 1, bias=False),
                                      nn.BatchNorm2d(w(top.stride)), nn.ReLU(inplace=True))
        blocks = []
        prev = w(top.stride)
        for f in reversed(skips[:-1]):  # deep to shallow
            blocks.append(_conv_block(prev + f.channels, w(f.stride)))
            prev = w(f.stride)
        self.blocks = nn.ModuleList(blocks)
        # a final level at the output stride when the finest skip is coarser than it
        self.final_stride = out_stride
        self.needs_final = s_min > out_stride or self.image_channels > 0
        if self.needs_final:
            self.final = _conv_block(prev + self.image_channels, width)
            prev = width
        self.classifier = nn.Conv2d(prev, num_outputs, 1)
        self.out_channels = prev

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the output for an (H, W) input: ``ceil(H / out_stride), ceil(W / out_stride)``."""
        return math.ceil(size[0] / self.out_stride), math.ceil(size[1] / self.out_stride)

    def forward(self, features: Mapping[str, torch.Tensor], image_size: tuple[int, int],
                image: torch.Tensor | None = None) -> torch.Tensor:
        """Stage maps -> logits.

        Args:
            features: stage name -> (B, C_s, H_s, W_s) for at least :attr:`skip_names`.
            image_size: (H, W) of the input image.
            image: (B, image_channels, H, W), required when ``image_channels > 0``.

        Returns:
            (B, num_outputs, ceil(H / out_stride), ceil(W / out_stride)).
        """
        missing = [n for n in self.skip_names if n not in features]
        if missing:
            raise KeyError(f"decoder needs stage maps {missing}; got {list(features)}")
        x = self.top_conv(features[self.skip_names[-1]])
        for name, block in zip(reversed(self.skip_names[:-1]), self.blocks):
            skip = features[name]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip.to(x.dtype)], dim=1))
        out_hw = self.output_size(image_size)
        if self.needs_final:
            x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
            if self.image_channels:
                if image is None or image.shape[1] != self.image_channels:
                    raise ValueError(f"decoder built with image_channels={self.image_channels} needs the "
                                     f"input image, got {None if image is None else tuple(image.shape)}")
                x = torch.cat([x, image.to(x.dtype)], dim=1)
            x = self.final(x)
        x = self.classifier(x)
        if tuple(x.shape[-2:]) != out_hw:
            x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
        return x

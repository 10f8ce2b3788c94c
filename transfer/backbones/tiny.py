"""Tiny backbones with the real stage names, so every test runs in milliseconds on CPU."""
from __future__ import annotations

import timm
from timm.models.efficientnet import _gen_efficientnet_lite
from torch import nn

from transfer.backbones.registry import register
from transfer.backbones.staged import StagedBackbone, StageSpec
from transfer.backbones.timm_adapters import _efficientnet_specs
from transfer.backbones.torchvision_adapters import _flatten_after


class _TinyAlexNetModel(nn.Module):
    """AlexNet's layer layout (same module indices as torchvision) with a few channels."""

    def __init__(self) -> None:
        super().__init__()
        c = [8, 16, 24, 24, 16]
        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c[0], c[1], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(),
            nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(),
            nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Dropout(0.0), nn.Linear(c[4] * 4, 32), nn.ReLU(),
            nn.Dropout(0.0), nn.Linear(32, 32), nn.ReLU(),
        )


@register("tiny_alexnet", description="test-size AlexNet layout (conv1..conv5, fc6, fc7)")
def tiny_alexnet() -> StagedBackbone:
    m = _TinyAlexNetModel()
    f = [f"features.{i}" for i in range(13)]
    specs = [
        StageSpec("conv1", f[0:3]), StageSpec("conv2", f[3:6]), StageSpec("conv3", f[6:8]),
        StageSpec("conv4", f[8:10]), StageSpec("conv5", f[10:13]),
        StageSpec("fc6", ["classifier.0", "classifier.1", "classifier.2"], pre=_flatten_after(m.avgpool), spatial=False),
        StageSpec("fc7", ["classifier.3", "classifier.4", "classifier.5"], spatial=False),
    ]
    return StagedBackbone("tiny_alexnet", m, specs, first_conv="features.0")


@register("tiny_resnet", description="timm test_resnet: stem, layer1..layer4 with a few channels")
def tiny_resnet() -> StagedBackbone:
    m = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    specs = [StageSpec("stem", ["conv1", "bn1", "act1", "maxpool"])] + [
        StageSpec(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)
    ]
    return StagedBackbone("tiny_resnet", m, specs, first_conv="conv1.0")


@register("tiny_efficientnet", description="EfficientNet-Lite layout (stem, blocks0..6, conv_head), 1/8 width")
def tiny_efficientnet() -> StagedBackbone:
    # timm exposes width/depth multipliers only through this builder
    m = _gen_efficientnet_lite("tf_efficientnet_lite0", channel_multiplier=0.125, depth_multiplier=0.25,
                               pretrained=False, num_classes=0)
    return StagedBackbone("tiny_efficientnet", m, _efficientnet_specs(len(m.blocks)), first_conv="conv_stem")

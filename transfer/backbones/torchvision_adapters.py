"""torchvision models as staged backbones, with weights from torchvision's hub cache."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from transfer.backbones.registry import register
from transfer.backbones.staged import StagedBackbone, StageSpec
from transfer.errors import WeightsUnavailableError


class TorchvisionWeights:
    """ImageNet weights of a torchvision model, read from ``$TORCH_HOME/hub/checkpoints``."""

    def __init__(self, arch: str) -> None:
        self.arch = arch
        self.weights = tvm.get_model_weights(arch).DEFAULT

    def cache_file(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(self.weights.url)

    def needs_download(self) -> bool:
        return not self.cache_file().is_file()

    def load(self) -> dict[str, torch.Tensor]:
        path = self.cache_file()
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
        try:
            return self.weights.get_state_dict(progress=True)
        except Exception as e:  # no network: urllib raises URLError/OSError of many kinds
            raise WeightsUnavailableError(
                f"ImageNet weights for {self.arch} are not in the torchvision cache and could not be "
                f"downloaded ({type(e).__name__}: {e}). Download {self.weights.url} on a machine with "
                f"network access and place it at {path}"
            ) from None


def _tv(arch: str) -> nn.Module:
    return tvm.get_model(arch, weights=None)


def _flatten_after(pool: nn.Module):
    def pre(x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(pool(x), 1)

    return pre


@register("alexnet", imagenet=lambda: TorchvisionWeights("alexnet"),
          description="torchvision AlexNet; stages as Table I of Tajbakhsh et al. 2016, fc8 is the task head")
def alexnet() -> StagedBackbone:
    m = _tv("alexnet")
    m.classifier = m.classifier[:6]  # drop fc8: the task head replaces it
    f = [f"features.{i}" for i in range(13)]
    specs = [
        StageSpec("conv1", f[0:3]),
        StageSpec("conv2", f[3:6]),
        StageSpec("conv3", f[6:8]),
        StageSpec("conv4", f[8:10]),
        StageSpec("conv5", f[10:13]),
        StageSpec("fc6", ["classifier.0", "classifier.1", "classifier.2"], pre=_flatten_after(m.avgpool), spatial=False),
        StageSpec("fc7", ["classifier.3", "classifier.4", "classifier.5"], spatial=False),
    ]
    return StagedBackbone("alexnet", m, specs, first_conv="features.0")


def _resnet(arch: str) -> StagedBackbone:
    m = _tv(arch)
    m.fc = nn.Identity()
    specs = [StageSpec("stem", ["conv1", "bn1", "relu", "maxpool"])] + [
        StageSpec(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)
    ]
    return StagedBackbone(arch, m, specs, first_conv="conv1")


@register("resnet18", imagenet=lambda: TorchvisionWeights("resnet18"), description="torchvision ResNet-18")
def resnet18() -> StagedBackbone:
    return _resnet("resnet18")


@register("resnet50", imagenet=lambda: TorchvisionWeights("resnet50"), description="torchvision ResNet-50")
def resnet50() -> StagedBackbone:
    return _resnet("resnet50")


@register("densenet121", imagenet=lambda: TorchvisionWeights("densenet121"), description="torchvision DenseNet-121")
def densenet121() -> StagedBackbone:
    m = _tv("densenet121")
    m.classifier = nn.Identity()
    m.features.add_module("relu5", nn.ReLU(inplace=False))  # torchvision applies F.relu after norm5
    specs = [StageSpec("stem", [f"features.{n}" for n in ("conv0", "norm0", "relu0", "pool0")])]
    for i in range(1, 4):
        specs.append(StageSpec(f"denseblock{i}", [f"features.denseblock{i}", f"features.transition{i}"]))
    specs.append(StageSpec("denseblock4", ["features.denseblock4", "features.norm5", "features.relu5"]))
    return StagedBackbone("densenet121", m, specs, first_conv="features.conv0")


# MobileNetV2 inverted-residual blocks grouped by resolution stage (as timm groups them)
_MBV2_GROUPS = [[1], [2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12, 13], [14, 15, 16], [17]]


@register("mobilenet_v2", imagenet=lambda: TorchvisionWeights("mobilenet_v2"), description="torchvision MobileNetV2")
def mobilenet_v2() -> StagedBackbone:
    m = _tv("mobilenet_v2")
    m.classifier = nn.Identity()
    specs = [StageSpec("stem", ["features.0"])]
    specs += [StageSpec(f"blocks{i}", [f"features.{j}" for j in g]) for i, g in enumerate(_MBV2_GROUPS)]
    specs.append(StageSpec("conv_head", ["features.18"]))
    return StagedBackbone("mobilenet_v2", m, specs, first_conv="features.0.0")


@register("efficientnet_b0", imagenet=lambda: TorchvisionWeights("efficientnet_b0"),
          description="torchvision EfficientNet-B0")
def efficientnet_b0() -> StagedBackbone:
    m = _tv("efficientnet_b0")
    m.classifier = nn.Identity()
    specs = [StageSpec("stem", ["features.0"])]
    specs += [StageSpec(f"blocks{i}", [f"features.{i + 1}"]) for i in range(7)]
    specs.append(StageSpec("conv_head", ["features.8"]))
    return StagedBackbone("efficientnet_b0", m, specs, first_conv="features.0.0")

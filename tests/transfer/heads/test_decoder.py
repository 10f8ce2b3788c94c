"""The dense decoder: output size = ceil(input / stride) for odd sizes on every tiny backbone; skips by stride."""
from __future__ import annotations

import math

import pytest
import torch

from transfer.backbones.registry import get_entry
from transfer.backbones.staged import FeatureInfo
from transfer.heads import DenseDecoder, decoder_stages

TINY = ["tiny_resnet", "tiny_efficientnet", "tiny_alexnet"]


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_output_size_for_odd_sizes_every_tiny_backbone(name, stride):
    torch.manual_seed(0)
    bb = get_entry(name).build().eval()
    dec = DenseDecoder(bb.feature_info, 3, out_stride=stride, width=4, image_channels=3).eval()
    for h, w in [(33, 47), (64, 64), (37, 50), (40, 31)]:
        x = torch.rand(2, 3, h, w)
        with torch.no_grad():
            y = dec(bb.forward_features(x), (h, w), x)
        assert tuple(y.shape) == (2, 3, math.ceil(h / stride), math.ceil(w / stride)), (name, stride, h, w)
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["timm:test_efficientnet", "resnet18"])
def test_output_size_on_generic_timm_and_torchvision_backbones(name):
    bb = get_entry(name).build().eval()
    dec = DenseDecoder(bb.feature_info, 2, out_stride=2, width=4).eval()
    with torch.no_grad():
        y = dec(bb.forward_features(torch.rand(1, 3, 45, 39)), (45, 39))
    assert tuple(y.shape) == (1, 2, 23, 20)


def test_skips_are_the_last_stage_at_each_stride_up_to_top():
    info = [FeatureInfo("stem", 8, 2), FeatureInfo("b0", 4, 2), FeatureInfo("b1", 8, 4), FeatureInfo("b2", 16, 8),
            FeatureInfo("b3", 16, 16), FeatureInfo("b4", 32, 16), FeatureInfo("b5", 64, 32)]
    assert [f.stage for f in decoder_stages(info)] == ["b0", "b1", "b2", "b4", "b5"]
    assert [f.stage for f in decoder_stages(info, "b3")] == ["b0", "b1", "b2", "b3"]
    dec = DenseDecoder(info, 2, out_stride=4, top_stage="b4")
    assert dec.skip_names == ["b1", "b2", "b4"] and dec.top_stage == "b4"  # finer than the output stride: unused
    with pytest.raises(ValueError, match="not a spatial stage"):
        decoder_stages(info, "fc6")


def test_alexnet_decoder_ignores_fully_connected_stages():
    bb = get_entry("tiny_alexnet").build()
    dec = DenseDecoder(bb.feature_info, 2)
    assert dec.top_stage == "conv5" and "fc6" not in dec.stage_names


@pytest.mark.parametrize("kwargs, match", [
    ({"out_stride": 3}, "out_stride"), ({"num_outputs": 0}, "num_outputs"), ({"width": 0}, "width"),
    ({"width": 64, "max_width": 32}, "width"), ({"image_channels": -1}, "image_channels"),
])
def test_constructor_arguments_are_checked(kwargs, match):
    info = [FeatureInfo("a", 4, 2), FeatureInfo("b", 8, 4)]
    args = {"num_outputs": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        DenseDecoder(info, **args)


def test_missing_stage_map_and_missing_image_are_clear():
    info = [FeatureInfo("a", 4, 2), FeatureInfo("b", 8, 4)]
    dec = DenseDecoder(info, 2, image_channels=1)
    with pytest.raises(KeyError, match="needs stage maps"):
        dec({"b": torch.rand(1, 8, 4, 4)}, (16, 16))
    with pytest.raises(ValueError, match="needs the input image"):
        dec({"a": torch.rand(1, 4, 8, 8), "b": torch.rand(1, 8, 4, 4)}, (16, 16))

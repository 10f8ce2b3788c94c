"""backbone.stem_stride: a small-image stem (first convolution at stride 1) keeps the weights and halves every
stage's stride."""
from __future__ import annotations

import pytest
import torch

from transfer.config import Config
from transfer.config.io import ConfigError, load_config
from transfer.weights import backbone_from_config


@pytest.mark.parametrize("name", ["tiny_efficientnet", "tiny_resnet"])
def test_stride_one_stem_doubles_every_stage_map_and_keeps_the_weights(name):
    cfg = load_config(Config, None, [f"backbone.name={name}", "backbone.stem_stride=1"])
    torch.manual_seed(0)
    small, _ = backbone_from_config(cfg.backbone, "scratch")
    torch.manual_seed(0)
    plain, _ = backbone_from_config(load_config(Config, None, [f"backbone.name={name}"]).backbone, "scratch")
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), plain.state_dict().values()))
    assert [f.stride * 2 for f in small.feature_info] == [f.stride for f in plain.feature_info]
    small.eval(), plain.eval()
    x = torch.rand(2, 1, 32, 32)
    a, b = small.forward_features(x), plain.forward_features(x)
    assert all(a[k].shape[-1] == 2 * b[k].shape[-1] for k in b)
    assert small(x).shape == plain(x).shape  # the pooled features a head reads do not change width


def test_stem_stride_is_checked():
    with pytest.raises(ConfigError, match="backbone.stem_stride"):
        load_config(Config, None, ["backbone.stem_stride=3"])

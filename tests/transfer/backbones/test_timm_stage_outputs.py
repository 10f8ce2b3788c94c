"""Generic timm: backbones give stage outputs (timm's forward_intermediates), so every task runs on them."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from tasks.landmarks.refine import RefinementStage
from tasks.landmarks.task import LandmarkModel
from transfer.backbones import get_entry
from transfer.cli import main
from transfer.config import Config
from transfer.runs.depth import setup_depth

NAME = "timm:test_efficientnet"  # its conv_head and bn2 sit in the last stage, after the last feature map


def test_forward_stages_gives_the_feature_maps_and_stops_early():
    bb = get_entry(NAME).build().eval()
    x = torch.rand(2, 3, 64, 64)
    feats = bb.forward_features(x)
    assert list(feats) == [f.stage for f in bb.feature_info]
    assert [tuple(v.shape[1:2]) for v in feats.values()] == [(f.channels,) for f in bb.feature_info]
    upto = bb.feature_info[2].stage
    part = bb.forward_stages(x, upto=upto)
    assert list(part) == list(feats)[:3] and torch.allclose(part[upto], feats[upto])
    with pytest.raises(ValueError, match="no feature map"):
        bb.forward_stages(x, upto="stem")
    assert {"model.conv_head.weight", "model.bn2.weight"} <= bb.unused_by_stage_outputs()


def test_a_dense_head_on_a_timm_backbone_trains_every_parameter_it_unfreezes():
    torch.manual_seed(0)
    bb = get_entry(NAME).build()
    refine = RefinementStage(copy.deepcopy(bb), 2, crop=32, width=8)
    model = LandmarkModel(bb, 2, head="decoder", hidden=8, dropout=0.0, heatmap_stage=None, heatmap_weight=1.0,
                          heatmap_sigma=1.0, augment=None, decoder_width=8, refine=refine)
    _, _, train_mode = setup_depth(model, Config(), "all")
    train_mode()
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(2, 3, 64, 64, generator=g), "landmarks": torch.rand(2, 2, 2, generator=g) * 0.6 + 0.2,
             "orig_size": torch.full((2, 2), 64.0), "spacing": torch.full((2, 2), 0.5),
             "refine_image": (torch.rand(2, 3, 96, 96, generator=g) * 255).to(torch.uint8)}
    model.training_step(batch)["loss"].backward()
    # what DDP (find_unused_parameters=False) needs: no trainable parameter without a gradient
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not model.backbone.model.conv_head.weight.requires_grad


@pytest.mark.parametrize("task", ["landmarks", "detection", "segmentation"])
def test_dense_tasks_finetune_on_a_generic_timm_backbone(task, four_tasks, tmp_path):
    sets = [*four_tasks[task], f"backbone.name={NAME}", "backbone.in_chans=3", "init=scratch", "train.epochs=1",
            "train.max_steps=1", "train.batch_size=4", f"tracking.out_dir={tmp_path / 'runs'}",
            "tracking.progress=false", "tracking.log_media=false"]
    assert main(["finetune", "--name", "t", *[a for kv in sets for a in ("--set", kv)]]) == 0
    assert json.loads((tmp_path / "runs" / "t" / "summary.json").read_text())["test"]

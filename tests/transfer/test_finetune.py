from __future__ import annotations

import pytest
import torch
from torch import nn

from transfer.errors import UnknownNameError
from transfer.finetune import (LRSpec, build_optimizer, depth_names, freeze_stages, param_groups, set_train_mode,
                               trainable_stages)
from transfer.weights import build_backbone

ALEX = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def test_depth_names_follow_the_seed():
    assert trainable_stages("head", ALEX) == []
    assert trainable_stages("conv3-head", ALEX) == ["conv3", "conv4", "conv5", "fc6", "fc7"]
    assert trainable_stages("fc7-head", ALEX) == ["fc7"]
    assert trainable_stages("all", ALEX) == list(ALEX)
    assert depth_names(ALEX)[:3] == ["head", "fc7-head", "fc6-head"]
    with pytest.raises(UnknownNameError, match="conv3-head"):
        trainable_stages("conv9-head", ALEX)


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in module.named_buffers() if "running" in n]


def test_frozen_stage_has_no_grad_and_fixed_batchnorm():
    torch.manual_seed(0)
    bb, _ = build_backbone("tiny_resnet", "scratch")
    head = nn.Linear(bb.num_features, 2)
    stages = trainable_stages("layer3-head", bb.stage_names)
    freeze_stages(bb, stages)
    groups = param_groups(bb, head, stages, LRSpec(0.1, weight_decay=1e-4))
    opt = build_optimizer(groups, "sgd")
    views = bb.stages()
    frozen_before = {s: (_bn_stats(views[s]), [p.clone() for p in views[s].parameters()]) for s in ("stem", "layer1", "layer2")}
    train_before = _bn_stats(views["layer3"])
    set_train_mode(bb, stages)
    x = torch.rand(4, 3, 32, 32)
    loss = nn.functional.cross_entropy(head(bb(x)), torch.tensor([0, 1, 0, 1]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    for s, (stats, params) in frozen_before.items():
        assert all(p.grad is None for p in views[s].parameters()), s
        assert all(torch.equal(a, b) for a, b in zip(stats, _bn_stats(views[s]))), f"{s} BatchNorm stats moved"
        assert all(torch.equal(a, b) for a, b in zip(params, views[s].parameters())), s
    assert not all(torch.equal(a, b) for a, b in zip(train_before, _bn_stats(views["layer3"])))
    assert all(p.grad is not None for p in views["layer4"].parameters())


def test_param_groups_every_trainable_param_once_with_rates():
    bb, _ = build_backbone("tiny_alexnet", "scratch")
    head = nn.Linear(bb.num_features, 3)
    stages = trainable_stages("conv4-head", bb.stage_names)
    freeze_stages(bb, stages)
    spec = LRSpec(lr=0.001, head_lr_mult=10, bias_lr_mult=2, layer_decay=0.5, weight_decay=5e-4)
    groups = param_groups(bb, head, stages, spec)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    expected = {id(p) for p in bb.parameters() if p.requires_grad} | {id(p) for p in head.parameters()}
    assert set(ids) == expected
    by_name = {g["name"]: g for g in groups}
    assert by_name["head/decay"]["lr"] == pytest.approx(0.01)
    assert by_name["head/no_decay/bias"]["lr"] == pytest.approx(0.02)
    assert by_name["fc7/decay"]["lr"] == pytest.approx(0.001)  # top stage: decay^0
    assert by_name["conv4/decay"]["lr"] == pytest.approx(0.001 * 0.5 ** 3)
    for g in groups:
        assert g["weight_decay"] == (5e-4 if "/decay" in g["name"] else 0.0)
        assert all((p.ndim > 1) == ("/decay" in g["name"]) for p in g["params"])
    # pure: requires_grad untouched by building groups
    before = [p.requires_grad for p in bb.parameters()]
    param_groups(bb, head, list(bb.stage_names), spec)
    assert before == [p.requires_grad for p in bb.parameters()]


def test_head_only_trains_only_head():
    bb, _ = build_backbone("tiny_efficientnet", "scratch")
    head = nn.Linear(bb.num_features, 2)
    freeze_stages(bb, [])
    groups = param_groups(bb, head, [], LRSpec(0.01))
    assert {g["name"].split("/")[0] for g in groups} == {"head"}
    assert not any(p.requires_grad for p in bb.parameters())


def test_scratch_batchnorm_recalibration_keeps_frozen_random_features_alive():
    from transfer.finetune import recalibrate_batchnorm

    torch.manual_seed(0)
    bb, _ = build_backbone("tiny_efficientnet", "scratch", in_chans=1)
    x = torch.rand(16, 1, 32, 32)
    bb.eval()
    with torch.no_grad():
        before = bb(x).std(0).mean()
    recalibrate_batchnorm(bb, x, torch.device("cpu"), batch_size=8)
    assert not bb.training  # mode restored
    with torch.no_grad():
        after = bb(x).std(0).mean()
    assert after > 100 * before  # features vary across images again
    bn = bb.model.bn1
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))

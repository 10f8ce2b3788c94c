"""``medtransfer export``: the exported state dict loads into timm / torchvision and gives the same features."""
from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision

from transfer.cli import main
from transfer.weights import backbone_checkpoint, build_backbone


def _checkpoint(tmp_path, name: str, in_chans: int = 3, policy: str = "replicate"):
    torch.manual_seed(0)
    bb, _ = build_backbone(name, "scratch", in_chans=in_chans, channel_policy=policy)
    bb.eval()
    path = tmp_path / f"{name}.pt"
    torch.save(backbone_checkpoint(bb, {"method": "test"}), path)
    return bb, path


@pytest.mark.parametrize("name, model", [("resnet18", "resnet18"), ("efficientnet_lite0", "tf_efficientnet_lite0")])
def test_timm_export_gives_the_same_features(tmp_path, name, model, capsys):
    bb, ckpt = _checkpoint(tmp_path, name)
    out = tmp_path / "timm.pth"
    assert main(["export", str(ckpt), "--format", "timm", str(out)]) == 0
    assert "checkpoint_path" in capsys.readouterr().out
    m = timm.create_model(model, num_classes=0, checkpoint_path=str(out)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m(bb.prepare(x)), bb(x), atol=1e-5)


def test_torchvision_export_loads_and_gives_the_same_features(tmp_path):
    bb, ckpt = _checkpoint(tmp_path, "resnet18", in_chans=1, policy="replicate")
    out = tmp_path / "tv.pth"
    assert main(["export", str(ckpt), "--format", "torchvision", str(out)]) == 0
    info = json.loads((tmp_path / "tv.pth.json").read_text())
    assert info["not_in_file"] == ["fc.bias", "fc.weight"] and info["in_chans"] == 3
    m = torchvision.models.resnet18()
    m.fc = torch.nn.Identity()  # the exported backbone has no ImageNet classifier
    m.load_state_dict(torch.load(out), strict=True)
    m.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m(bb.prepare(x)), bb(x), atol=1e-5)


def test_export_refuses_a_backbone_without_counterpart(tmp_path, capsys):
    _, ckpt = _checkpoint(tmp_path, "efficientnet_lite0")
    assert main(["export", str(ckpt), "--format", "torchvision", str(tmp_path / "x.pth")]) == 2
    assert "no torchvision counterpart" in capsys.readouterr().err

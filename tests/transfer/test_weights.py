from __future__ import annotations

import torch
import pytest

from transfer.backbones import get_entry
from transfer.errors import CheckpointError, WeightsUnavailableError
from transfer.weights import backbone_checkpoint, build_backbone, init_scratch


def _no_network(*a, **k):
    raise OSError("network is unreachable")


def test_torchvision_imagenet_from_cache_file_without_network(tmp_path, monkeypatch):
    import torchvision.models._api as api

    monkeypatch.setattr(api, "load_state_dict_from_url", _no_network)
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(WeightsUnavailableError) as e:
            build_backbone("resnet18", "imagenet")
        msg = str(e.value)
        target = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
        assert str(target) in msg and "download.pytorch.org" in msg
        # place a state dict at the named file: it loads with no network
        import torchvision

        sd = torchvision.models.resnet18().state_dict()
        target.parent.mkdir(parents=True)
        torch.save(sd, target)
        bb, report = build_backbone("resnet18", "imagenet")
        assert torch.equal(bb.state_dict()["model.layer3.0.conv1.weight"], sd["layer3.0.conv1.weight"])
        assert report.unexpected == ["model.fc.weight", "model.fc.bias"] and not report.missing
    finally:
        torch.hub.set_dir(str(tmp_path / "unused"))


@pytest.mark.parametrize("scheme", ["gaussian", "xavier", "kaiming"])
def test_scratch_init_schemes(scheme):
    bb, rep = build_backbone("tiny_resnet", "scratch", scheme)
    w = bb.model.layer2[0].conv1.weight
    if scheme == "gaussian":
        assert abs(float(w.detach().std()) - 0.01) < 0.003
    assert "scratch" in rep.source


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    bb, _ = build_backbone("tiny_resnet", "scratch")
    ck = backbone_checkpoint(bb, {"method": "test"})
    assert set(ck["stages"]) == set(bb.stage_names)
    path = tmp_path / "bb.pt"
    torch.save(ck, path)
    bb2, rep = build_backbone("tiny_resnet", str(path))
    for k, v in bb.state_dict().items():
        assert torch.equal(v, bb2.state_dict()[k]), k
    assert rep.provenance["method"] == "test"
    with pytest.raises(CheckpointError, match="tiny_resnet.*tiny_efficientnet|tiny_efficientnet.*tiny_resnet"):
        build_backbone("tiny_efficientnet", str(path))
    with pytest.raises(CheckpointError, match="channel_policy"):
        build_backbone("tiny_resnet", str(path), in_chans=1, channel_policy="adapt")


def test_raw_state_dict_reports_missing_and_unused(tmp_path):
    bb = get_entry("tiny_resnet").build()
    sd = {k[len("model."):]: v for k, v in bb.state_dict().items()}
    sd.pop("layer4.0.conv1.weight")
    sd["fc.weight"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "raw.pt")
    _, rep = build_backbone("tiny_resnet", str(tmp_path / "raw.pt"))
    assert rep.missing == ["model.layer4.0.conv1.weight"]
    assert rep.unexpected == ["model.fc.weight"]


def test_adapt_policy_sums_first_conv():
    bb3, _ = build_backbone("tiny_resnet", "scratch")
    torch.manual_seed(0)
    init_scratch(bb3, "kaiming")
    sd = bb3.state_dict()
    bb1 = get_entry("tiny_resnet").build()
    bb1.load_state_dict(sd)
    bb1.set_channel_policy(1, "adapt")
    assert bb1.model.conv1[0].weight.shape[1] == 1
    gray = torch.rand(2, 1, 32, 32)
    # with equal per-channel normalisation, adapt on gray == replicate on the RGB copy
    bb3.eval(), bb1.eval()
    for b in (bb3, bb1):
        b._mean.fill_(0.5), b._std.fill_(0.25)
    with torch.no_grad():
        assert torch.allclose(bb1(gray), bb3(gray.expand(-1, 3, -1, -1)), atol=1e-5)
    rep = get_entry("tiny_resnet").build()
    rep.set_channel_policy(1, "replicate")
    assert rep(gray).shape == (2, rep.num_features)
    with pytest.raises(ValueError, match="1-channel"):
        rep(torch.rand(1, 3, 32, 32))

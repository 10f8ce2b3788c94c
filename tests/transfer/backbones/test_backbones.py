from __future__ import annotations

import numpy as np
import pytest
import torch

from transfer.backbones import backbone_names, get_entry
from transfer.errors import UnknownNameError


@pytest.mark.parametrize("name", backbone_names() + ["timm:convnext_atto", "timm:test_vit"])
def test_every_parameter_in_exactly_one_stage(name):
    bb = get_entry(name).build()
    seen: dict[int, str] = {}
    for stage, view in bb.stages().items():
        for p in view.parameters():
            assert id(p) not in seen, f"{name}: a parameter is in {seen[id(p)]} and {stage}"
            seen[id(p)] = stage
    assert len(seen) == len(list(bb.parameters()))
    assert set(bb.stage_parameters()) == set(bb.stage_names)
    assert bb.feature_info and all(f.stage in bb.stage_names for f in bb.feature_info)


@pytest.mark.parametrize("name,stages", [
    ("tiny_alexnet", ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")),
    ("tiny_resnet", ("stem", "layer1", "layer2", "layer3", "layer4")),
    ("tiny_efficientnet", ("stem",) + tuple(f"blocks{i}" for i in range(7)) + ("conv_head",)),
])
def test_tiny_variants_share_stage_names(name, stages):
    bb = get_entry(name).build()
    assert bb.stage_names == stages
    real = {"tiny_alexnet": "alexnet", "tiny_resnet": "resnet18", "tiny_efficientnet": "efficientnet_lite0"}[name]
    assert get_entry(real).build().stage_names == stages


def test_forward_shapes_and_features():
    bb = get_entry("tiny_resnet").build().eval()
    x = torch.rand(2, 3, 64, 48)
    f = bb(x)
    assert f.shape == (2, bb.num_features)
    feats = bb.forward_features(x)
    for info in bb.feature_info:
        assert feats[info.stage].shape == (2, info.channels, -(-64 // info.stride), -(-48 // info.stride))


def test_alexnet_fc_stages_are_not_features():
    bb = get_entry("tiny_alexnet").build().eval()
    feats = bb.forward_features(torch.rand(1, 3, 64, 64))
    assert list(feats) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert bb(torch.rand(1, 3, 64, 64)).shape == (1, 32)


def test_unknown_backbone_lists_valid():
    with pytest.raises(UnknownNameError, match="efficientnet_lite0"):
        get_entry("nope")


def test_lite0_imagenet_weights_are_real():
    """The offline ImageNet weights classify scikit-image's cat and coffee correctly."""
    import timm
    from skimage import data
    from skimage.transform import resize

    from transfer.weights import build_backbone

    bb, report = build_backbone("efficientnet_lite0", "imagenet")
    assert not report.missing
    # the classifier is not part of the backbone: put the package's classifier on timm's model
    from transfer.backbones.timm_adapters import LitePackageWeights

    sd = LitePackageWeights(0).load()
    m = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    own = {k[len("model."):]: v for k, v in bb.state_dict().items()}
    m.load_state_dict({**own, "classifier.weight": sd["classifier.weight"], "classifier.bias": sd["classifier.bias"]})
    m.eval()
    for name, ok in (("chelsea", range(281, 286)), ("coffee", [967])):
        img = resize(getattr(data, name)(), (224, 224), anti_aliasing=True).astype(np.float32)
        x = torch.from_numpy(img).permute(2, 0, 1)[None]
        x = (x - torch.tensor(bb.norm.mean).view(1, 3, 1, 1)) / torch.tensor(bb.norm.std).view(1, 3, 1, 1)
        with torch.no_grad():
            p = m(x).softmax(1)[0]
        assert int(p.argmax()) in ok, name
        assert float(p[list(ok)].sum()) > 0.5, name
    # and the staged backbone's pooled features equal timm's pre-logits
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        ref = m.forward_head(m.forward_features((x - 0.5) / 0.5), pre_logits=True)
        assert torch.allclose(bb.eval()(x), ref, atol=1e-5)

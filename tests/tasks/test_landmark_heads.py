"""Euclidean loss, regression and heatmap heads, soft-argmax coordinate convention, an overfit check."""
from __future__ import annotations

import pytest
import torch

from tasks.landmarks.heads import (
    EuclideanLoss,
    HeatmapHead,
    RegressionHead,
    euclidean_loss,
    gaussian_heatmaps,
    heatmap_loss,
    soft_argmax,
    spatial_expectation,
)
from transfer.backbones import get_entry


def test_euclidean_loss_by_hand() -> None:
    pred = torch.tensor([[[3.0, 4.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 2.0]]])
    target = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # distances 5, 0, 0, 2 -> mean 7 / 4
    assert euclidean_loss(pred, target).item() == pytest.approx(7 / 4)
    visible = torch.tensor([[True, False], [False, True]])
    assert euclidean_loss(pred, target, visible).item() == pytest.approx(7 / 2)
    assert EuclideanLoss()(pred, target, visible).item() == pytest.approx(7 / 2)
    # scale (sx, sy): (3 * 2, 4 * 1) -> sqrt(52); (0, 2 * 1) -> 2
    assert euclidean_loss(pred, target, scale=(2.0, 1.0)).item() == pytest.approx((52**0.5 + 2) / 4)
    assert EuclideanLoss(scale=(2.0, 1.0))(pred, target).item() == pytest.approx((52**0.5 + 2) / 4)
    with pytest.raises(ValueError, match="scale"):
        EuclideanLoss(scale=(0.0, 1.0))


def test_euclidean_loss_zero_iff_equal_with_finite_gradient() -> None:
    target = torch.rand(2, 5, 2)
    pred = target.clone().requires_grad_(True)
    loss = euclidean_loss(pred, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad == 0).all()
    nudged = target.clone()
    nudged[1, 3, 0] += 1e-4
    assert euclidean_loss(nudged, target).item() > 0
    # gradient away from equality: unit direction / (B * L)
    pred = torch.tensor([[[3.0, 4.0]]], requires_grad=True)
    euclidean_loss(pred, torch.zeros(1, 1, 2)).backward()
    torch.testing.assert_close(pred.grad, torch.tensor([[[0.6, 0.8]]]))


def test_no_visible_landmark_gives_zero_loss_with_graph() -> None:
    pred = torch.rand(2, 3, 2, requires_grad=True)
    loss = euclidean_loss(pred, torch.rand(2, 3, 2), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad


def test_regression_head_shape_and_init() -> None:
    torch.manual_seed(0)
    head = RegressionHead(96, 19, hidden=32)
    out = head(torch.randn(4, 96))
    assert out.shape == (4, 19, 2)
    assert (out - 0.5).abs().max() < 0.05
    with pytest.raises(ValueError):
        RegressionHead(0, 19)
    with pytest.raises(ValueError, match="dropout"):
        RegressionHead(8, 2, dropout=1.0)
    with pytest.raises(ValueError, match="features"):
        head(torch.randn(4, 95))


@pytest.mark.parametrize("h,w", [(5, 7), (8, 3)])
def test_one_hot_heatmap_decodes_to_pixel_centre(h: int, w: int) -> None:
    for i in range(h):  # row, y
        for j in range(w):  # column, x
            probs = torch.zeros(1, 1, h, w)
            probs[0, 0, i, j] = 1.0
            expected = torch.tensor([[[(j + 0.5) / w, (i + 0.5) / h]]])
            torch.testing.assert_close(spatial_expectation(probs), expected)
            logits = probs * 50.0  # a peaked softmax is numerically one-hot
            torch.testing.assert_close(soft_argmax(logits), expected, atol=1e-5, rtol=0)


def test_uniform_heatmap_decodes_to_centre() -> None:
    torch.testing.assert_close(soft_argmax(torch.zeros(2, 3, 6, 10)), torch.full((2, 3, 2), 0.5))


def test_gaussian_targets_peak_and_decode_at_coords() -> None:
    h, w = 12, 16
    coords = torch.tensor([[[(5 + 0.5) / w, (2 + 0.5) / h], [(11 + 0.5) / w, (6 + 0.5) / h]]])
    maps = gaussian_heatmaps(coords, (h, w), sigma=1.0)
    assert maps.shape == (1, 2, h, w)
    torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(1, 2))
    flat = maps.flatten(2).argmax(-1)
    assert flat.tolist() == [[2 * w + 5, 6 * w + 11]]
    # a Gaussian away from the border decodes to its own mean
    torch.testing.assert_close(spatial_expectation(maps)[0, 1], coords[0, 1], atol=1e-4, rtol=0)


def test_heatmap_loss_is_minimal_at_target() -> None:
    coords = torch.tensor([[[0.3, 0.6]]])
    target = gaussian_heatmaps(coords, (8, 8), 1.0)
    assert heatmap_loss(target.clamp_min(1e-30).log(), coords, 1.0).item() == pytest.approx(0.0, abs=1e-5)
    assert heatmap_loss(torch.zeros(1, 1, 8, 8), coords, 1.0).item() > 0.5


def test_heatmap_head_shapes_and_checks() -> None:
    head = HeatmapHead(48, 4, stride=8, mid_channels=8, upsample=2)
    out = head(torch.randn(2, 48, 8, 6))
    assert out["heatmaps"].shape == (2, 4, 16, 12) and out["coords"].shape == (2, 4, 2)
    assert head.heatmap_stride == 4 and head.beta.item() == 1.0
    assert ((out["coords"] > 0) & (out["coords"] < 1)).all()
    assert HeatmapHead(48, 4, stride=8, upsample=1)(torch.randn(1, 48, 4, 4))["heatmaps"].shape == (1, 4, 4, 4)
    with pytest.raises(ValueError, match="power of two"):
        HeatmapHead(48, 4, stride=8, upsample=3)
    with pytest.raises(ValueError, match="multiple"):
        HeatmapHead(48, 4, stride=2, upsample=4)
    with pytest.raises(ValueError, match="feature map"):
        head(torch.randn(2, 47, 8, 6))


def test_heatmap_head_overfits_two_images() -> None:
    torch.manual_seed(0)
    backbone = get_entry("tiny_resnet").build()
    info = next(i for i in backbone.feature_info if i.stage == "layer2")
    head = HeatmapHead.from_feature_info(info, 3, mid_channels=16)
    images = torch.rand(2, 3, 64, 64)
    target = torch.rand(2, 3, 2) * 0.8 + 0.1
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=3e-3)
    first = None
    for _ in range(100):
        out = head(backbone.forward_features(images)[info.stage])
        loss = euclidean_loss(out["coords"], target)
        first = loss.item() if first is None else first
        opt.zero_grad()
        (loss + 0.1 * heatmap_loss(out["heatmaps"], target, sigma=1.0)).backward()
        opt.step()
    backbone.eval()
    head.eval()
    with torch.no_grad():
        final = euclidean_loss(head(backbone.forward_features(images)[info.stage])["coords"], target).item()
    assert final < first / 10

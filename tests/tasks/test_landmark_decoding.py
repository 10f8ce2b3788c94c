"""Sub-pixel decoding (local soft-argmax), the mm-sized target Gaussians and the decoder heatmap head."""
from __future__ import annotations

import pytest
import torch

from tasks.landmarks.decoding import local_soft_argmax, local_window, peak_mass
from tasks.landmarks.dense_head import DecoderHeatmapHead, sigma_in_heatmap_pixels
from tasks.landmarks.heads import gaussian_heatmaps, soft_argmax
from transfer.backbones import get_entry


def _to_px(coords: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return coords * torch.tensor([w, h], dtype=coords.dtype) - 0.5


@pytest.mark.parametrize("point_px", [(20.3, 17.71), (31.0, 9.5), (12.49, 30.02), (40.87, 22.13)])
@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.5])
def test_target_heatmap_round_trips_a_point_sub_pixel(point_px: tuple[float, float], sigma: float) -> None:
    h, w = 40, 52
    true = torch.tensor([[point_px]], dtype=torch.float64)
    coords = (true + 0.5) / torch.tensor([w, h], dtype=torch.float64)
    maps = gaussian_heatmaps(coords, (h, w), sigma)
    decoded = _to_px(local_soft_argmax(maps.clamp_min(1e-300).log(), radius=int(3 * sigma) + 1), h, w)
    assert (decoded - true).abs().max().item() < 0.05


def test_local_window_ignores_a_far_mode_that_pulls_the_global_soft_argmax() -> None:
    h, w = 32, 32
    coords = torch.tensor([[[8.5 / w, 8.5 / h]]])
    logits = gaussian_heatmaps(coords, (h, w), 1.0).clamp_min(1e-30).log()
    logits[0, 0, 28, 28] = logits.max() - 1.0  # a secondary mode far away
    local = _to_px(local_soft_argmax(logits, radius=3), h, w)
    glob = _to_px(soft_argmax(logits), h, w)
    assert (local - torch.tensor([8.0, 8.0])).abs().max() < 0.05
    assert (glob - torch.tensor([8.0, 8.0])).abs().max() > 1.0


def test_window_is_cut_by_the_border_and_gradients_stay_inside_it() -> None:
    logits = torch.zeros(1, 1, 10, 12, requires_grad=True)
    with torch.no_grad():
        logits[0, 0, 0, 0] = 5.0
    window = local_window(logits, radius=2)
    assert window.sum().item() == 9  # 3x3 at the corner
    local_soft_argmax(logits, radius=2).sum().backward()
    assert logits.grad[~window.expand_as(logits.grad)].abs().max().item() == 0.0
    assert logits.grad[window].abs().max().item() > 0.0


def test_peak_mass_is_high_for_a_sharp_map_and_low_for_a_flat_one() -> None:
    sharp = gaussian_heatmaps(torch.tensor([[[0.5, 0.5]]]), (32, 32), 1.0).clamp_min(1e-30).log()
    flat = torch.zeros(1, 1, 32, 32)
    flat[0, 0, 16, 16] = 1e-6  # the peak away from the border: a full 7x7 window
    assert peak_mass(sharp, 3).item() > 0.99
    assert peak_mass(flat, 3).item() == pytest.approx(49 / 1024, rel=1e-5)


def test_sigma_in_mm_becomes_heatmap_pixels_per_image_and_axis() -> None:
    # 2400x1935 original at 0.1 mm: a 128x104 map has cells of 1935*0.1/104 mm (x) and 2400*0.1/128 mm (y)
    sigma = sigma_in_heatmap_pixels(2.0, torch.tensor([[2400.0, 1935.0]]), torch.tensor([[0.1, 0.1]]), (128, 104))
    assert sigma.shape == (1, 1, 2)
    assert sigma[0, 0, 0].item() == pytest.approx(2.0 / (193.5 / 104))
    assert sigma[0, 0, 1].item() == pytest.approx(2.0 / (240.0 / 128))


def test_decoder_head_gives_stride_4_heatmaps_coords_and_confidence() -> None:
    bb = get_entry("tiny_efficientnet").build()
    head = DecoderHeatmapHead(bb.feature_info, 5, out_stride=4, radius=2, width=8)
    x = torch.rand(2, 3, 64, 48)
    out = head(bb.forward_features(x), (64, 48))
    assert out["heatmaps"].shape == (2, 5, 16, 12)
    assert out["coords"].shape == (2, 5, 2) and out["confidence"].shape == (2, 5)
    assert bool(((out["confidence"] > 0) & (out["confidence"] <= 1)).all())

"""Training crops: uniform, or centred on a foreground pixel at the requested share (nnU-Net's oversampling)."""
from __future__ import annotations

import pytest
import torch

from tasks.segmentation.crops import crop_origins

S, C = 96, 32  # image side, crop side


def _blob(y: int, x: int, cls: int = 1, r: int = 1) -> torch.Tensor:
    m = torch.zeros(S, S, dtype=torch.uint8)
    m[y - r : y + r + 1, x - r : x + r + 1] = cls
    return m


def _batch(m: torch.Tensor, n: int, fov: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    fov = torch.ones(S, S, dtype=torch.bool) if fov is None else fov
    return m.expand(n, S, S), fov.expand(n, S, S)


@pytest.mark.parametrize("ratio", [0.0, 0.33, 1.0])
def test_crops_are_centred_on_foreground_at_the_requested_ratio(ratio):
    torch.manual_seed(0)
    n = 2000
    m = _blob(60, 40)  # 9 px of 9216 (0.1%), away from the border: a centred crop is never shifted
    ys, xs, centred = crop_origins(*_batch(m, n), (C, C), ratio)
    share = sum(centred) / n
    assert share == pytest.approx(ratio, abs=3 * (ratio * (1 - ratio) / n) ** 0.5 + 1e-9)
    for y, x, c in zip(ys, xs, centred):
        assert 0 <= y <= S - C and 0 <= x <= S - C
        if c:  # the crop's centre pixel is a foreground pixel
            assert m[y + C // 2, x + C // 2] == 1
    held = [bool(m[y : y + C, x : x + C].any()) for y, x in zip(ys, xs)]
    # a uniform crop holds the 3x3 blob when its corner is within the blob's reach: (C + 2)^2 of (S - C + 1)^2 corners
    uniform = ((C + 2) / (S - C + 1)) ** 2
    expected = ratio + (1 - ratio) * uniform
    assert sum(held) / n == pytest.approx(expected, abs=3 * (expected * (1 - expected) / n) ** 0.5)


def test_ratio_zero_draws_the_same_uniform_crops_as_before():
    masks, fov = _batch(_blob(60, 40), 8)
    torch.manual_seed(3)
    ys, xs, _ = crop_origins(masks, fov, (C, C), 0.0)
    torch.manual_seed(3)
    assert ys == torch.randint(0, S - C + 1, (8,)).tolist() and xs == torch.randint(0, S - C + 1, (8,)).tolist()


def test_a_blob_at_the_border_stays_inside_its_shifted_crop():
    torch.manual_seed(0)
    m = _blob(1, S - 2)
    ys, xs, centred = crop_origins(*_batch(m, 50), (C, C), 1.0)
    assert all(centred)
    assert all(m[y : y + C, x : x + C].sum() > 0 and y == 0 and x == S - C for y, x in zip(ys, xs))


def test_foreground_outside_the_fov_and_empty_masks_get_uniform_crops():
    torch.manual_seed(0)
    m = _blob(60, 40)
    fov = torch.ones(S, S, dtype=torch.bool)
    fov[50:70, 30:50] = False  # the blob lies outside the field of view
    _, _, centred = crop_origins(*_batch(m, 50, fov), (C, C), 1.0)
    assert not any(centred)
    _, _, centred = crop_origins(*_batch(torch.zeros(S, S, dtype=torch.uint8), 50), (C, C), 1.0)
    assert not any(centred)


def test_each_foreground_class_is_drawn_equally_often_whatever_its_size():
    torch.manual_seed(0)
    m = torch.zeros(S, S, dtype=torch.uint8)
    m[10:50, 10:50] = 1  # 1600 px
    m[80, 80] = 2  # 1 px
    n = 1000
    ys, xs, centred = crop_origins(*_batch(m, n), (C, C), 1.0)
    rare = sum(bool((m[y : y + C, x : x + C] == 2).any()) for y, x in zip(ys, xs)) / n
    assert all(centred) and rare == pytest.approx(0.5, abs=0.06)

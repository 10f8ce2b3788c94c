"""Batched augmentations: two-view preset and the augmentation-prediction transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_pretrain.augment import AUGPRED_TRANSFORMS, RANDOM_TRANSFORMS, TwoViewAugment, image_grid
from ssl_pretrain.config import ViewAugConfig

AUGPRED_TRANSFORM_NAMES = ["rot0", "rot90", "rot180", "rot270", "hflip", "vflip",
                           "blur", "sharpen", "contrast", "gamma", "noise", "elastic"]
DETERMINISTIC = [n for n in AUGPRED_TRANSFORM_NAMES if n not in RANDOM_TRANSFORMS]


def smooth_images(n: int, h: int, w: int, c: int = 1, seed: int = 0) -> torch.Tensor:
    """Seeded smooth random images in [0, 1] (more X-ray-like than white noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, max(2, h // 4), max(2, w // 4), generator=g)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


# -- two views -----------------------------------------------------------------------------------
@pytest.mark.parametrize("in_size,out_size,c", [((40, 40), (32, 32), 1), ((64, 56), (48, 40), 1), ((32, 32), (32, 32), 3)])
def test_two_views_shape_range_and_differ(in_size, out_size, c):
    torch.manual_seed(0)
    aug = TwoViewAugment(ViewAugConfig(), out_size)
    x = smooth_images(4, *in_size, c=c)
    v0, v1 = aug(x)
    for v in (v0, v1):
        assert v.shape == (4, c, *out_size)
        assert v.dtype == x.dtype
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    assert not torch.allclose(v0, v1), "the two views must be different random draws"
    # each image's views differ (independent parameters per sample and per view)
    assert ((v0 - v1).abs().flatten(1).mean(1) > 1e-3).all()


def test_two_views_range_at_extremes():
    """Noise/brightness on all-black and all-white images stay in [0, 1]."""
    torch.manual_seed(0)
    aug = TwoViewAugment(ViewAugConfig(noise_std=0.2, brightness=0.5, contrast=0.5), (32, 32))
    x = torch.cat([torch.zeros(4, 1, 32, 32), torch.ones(4, 1, 32, 32)])
    for v in aug(x):
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0


def test_two_views_minimal_config_is_near_identity():
    """With every random op off, a full-size crop gives back the image (sanity of the pipeline)."""
    cfg = ViewAugConfig(crop_scale=(1.0, 1.0), rotation=0.0, brightness=0.0, contrast=0.0, gamma=(1.0, 1.0),
                        blur_p=0.0, noise_std=0.0)
    aug = TwoViewAugment(cfg, (32, 32))
    x = smooth_images(2, 32, 32)
    v0, _ = aug(x)
    # ratio is still sampled in [3/4, 4/3], so compare loosely
    assert (v0 - x).abs().mean() < 0.1


def test_two_views_media_is_uint8_grid():
    aug = TwoViewAugment(ViewAugConfig(), (32, 32))
    grid = aug.media(smooth_images(3, 40, 40))
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3


def test_two_views_rejects_tiny_size():
    with pytest.raises(ValueError, match="8 px"):
        TwoViewAugment(ViewAugConfig(), (4, 4))


# -- augmentation-prediction transforms ---------------------------------------------------------
def test_registry_holds_the_documented_transforms():
    assert set(AUGPRED_TRANSFORMS.names()) == set(AUGPRED_TRANSFORM_NAMES)


@pytest.mark.parametrize("name", AUGPRED_TRANSFORM_NAMES)
@pytest.mark.parametrize("size", [(32, 32), (48, 40)])
def test_transform_shape_and_range(name, size):
    torch.manual_seed(0)
    x = smooth_images(3, *size)
    fn = AUGPRED_TRANSFORMS.get(name)
    if name in ("rot90", "rot270") and size[0] != size[1]:
        with pytest.raises(ValueError, match="square"):
            fn(x)
        return
    y = fn(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    if name != "rot0":
        assert not torch.allclose(y, x), f"{name} should change the image"


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_transforms_are_deterministic_and_per_image(name):
    """Same input -> same output, and a batch equals its images transformed one by one."""
    fn = AUGPRED_TRANSFORMS.get(name)
    x = smooth_images(4, 32, 32)
    y = fn(x)
    assert torch.equal(y, fn(x))
    for i in range(4):
        torch.testing.assert_close(y[i:i + 1], fn(x[i:i + 1]), atol=1e-6, rtol=0)


def test_geometric_transforms_on_a_known_image():
    """2x2 image [[a, b], [c, d]]: rotations are counter-clockwise, flips as named."""
    a, b, c, d = 0.1, 0.2, 0.3, 0.4
    x = torch.tensor([[a, b], [c, d]]).view(1, 1, 2, 2)

    def img(rows):
        return torch.tensor(rows).view(1, 1, 2, 2)

    expected = {
        "rot0": img([[a, b], [c, d]]),
        "rot90": img([[b, d], [a, c]]),
        "rot180": img([[d, c], [b, a]]),
        "rot270": img([[c, a], [d, b]]),
        "hflip": img([[b, a], [d, c]]),
        "vflip": img([[c, d], [a, b]]),
    }
    for name, want in expected.items():
        assert torch.equal(AUGPRED_TRANSFORMS.get(name)(x), want), name


def test_photometric_transforms_do_what_they_say():
    torch.manual_seed(0)
    x = smooth_images(4, 32, 32, seed=1) * 0.6 + 0.2  # away from the clamp
    hf = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean()  # noqa: E731  high-frequency energy
    assert hf(AUGPRED_TRANSFORMS.get("blur")(x)) < 0.8 * hf(x)
    assert hf(AUGPRED_TRANSFORMS.get("sharpen")(x)) > 1.2 * hf(x)
    assert AUGPRED_TRANSFORMS.get("contrast")(x).std() > 1.2 * x.std()
    assert AUGPRED_TRANSFORMS.get("gamma")(x).mean() > x.mean() + 0.05  # gamma < 1 brightens
    noisy = AUGPRED_TRANSFORMS.get("noise")(x)
    assert 0.02 < float((noisy - x).std()) < 0.08
    warped = AUGPRED_TRANSFORMS.get("elastic")(x)
    assert (warped - x).abs().mean() > 1e-3
    assert abs(float(warped.mean() - x.mean())) < 0.05  # a deformation, not an intensity change


def test_image_grid():
    rows = [torch.rand(5, 1, 16, 16), torch.rand(5, 1, 8, 8)]
    grid = image_grid(rows, max_cols=4)
    assert grid.dtype == np.uint8 and grid.shape == (2 + 2 * 18, 2 + 4 * 18, 3)

"""The acquisition-robust intensity augmentations (gamma, blur, noise): on they change the image and never the
landmarks; off (0, the default) they change nothing, not even the random numbers the other ops draw."""
from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch

from transfer.config import AugmentConfig, Config
from transfer.config.io import ConfigError, load_config
from transfer.data.augment import BatchAugment


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    # a smooth ramp plus texture, away from 0 and 1 so that the clamp does not hide a change
    ramp = torch.linspace(0.2, 0.8, 32).view(1, 1, 1, 32).expand(4, 1, 24, 32)
    images = (ramp + 0.1 * torch.rand(4, 1, 24, 32)).clamp(0, 1)
    points = torch.tensor([[[3.0, 4.0], [20.0, 11.5], [30.0, 22.0]]]).repeat(4, 1, 1)
    return images, points


@pytest.mark.parametrize("option", [{"gamma": 0.3}, {"blur": 1.5, "blur_p": 1.0}, {"noise": 0.05, "noise_p": 1.0}])
def test_each_acquisition_op_changes_every_image_and_no_landmark(option):
    images, points = _batch()
    aug = BatchAugment(AugmentConfig(**option), landmarks=True)
    assert aug.active
    images, points = images.repeat(4, 1, 1, 1), points.repeat(4, 1, 1)
    out, kp = aug(images.clone(), points.clone())
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1
    # p = 1: every image is transformed; nearly all visibly (a blur SD drawn near 0.1 px hardly changes one)
    changed = [(o - i).abs().max() > 1e-3 for o, i in zip(out, images)]
    assert sum(changed) >= 12, (option, changed)
    assert torch.equal(kp, points)  # intensity ops never move a landmark


def test_gamma_is_a_power_law_within_the_configured_range():
    images, _ = _batch()
    out, _ = BatchAugment(AugmentConfig(gamma=0.2))(images.clone())
    # I ** g with one g per image in [0.8, 1.2]: log(out) / log(in) is that g at every pixel
    g = torch.log(out) / torch.log(images)
    per_image = g.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-3)
    assert ((per_image[:, 0] >= 0.8 - 1e-4) & (per_image[:, 0] <= 1.2 + 1e-4)).all()


def test_blur_and_noise_probability_leave_some_images_untouched():
    images, _ = _batch()
    torch.manual_seed(3)
    out, _ = BatchAugment(AugmentConfig(blur=1.0, blur_p=0.5))(images.repeat(4, 1, 1, 1).clone())
    same = [torch.equal(o, i) for o, i in zip(out, images.repeat(4, 1, 1, 1))]
    assert any(same) and not all(same)


def test_off_by_default_changes_nothing():
    images, points = _batch()
    aug = BatchAugment(AugmentConfig(), landmarks=True)
    assert not aug.active and aug.acquisition is None
    out, kp = aug(images.clone(), points.clone())
    assert torch.equal(out, images) and torch.equal(kp, points)


def test_off_draws_the_same_random_numbers_as_before():
    """With gamma, blur and noise at 0 an existing config augments exactly as it did: the same colour jitter from the
    same seed (no op is built, none draws)."""
    images, _ = _batch()
    torch.manual_seed(7)
    ours, _ = BatchAugment(AugmentConfig(brightness=0.1, contrast=0.1, gamma=0.0, blur=0.0, noise=0.0))(images.clone())
    torch.manual_seed(7)
    reference = K.ColorJiggle(brightness=0.1, contrast=0.1, p=1.0)(images.expand(-1, 3, -1, -1))[:, :1].clamp(0, 1)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("override, key", [
    ("gamma=-0.1", "data.augment.gamma"), ("gamma=1.0", "data.augment.gamma"),
    ("blur=-1", "data.augment.blur"), ("blur=0.05", "data.augment.blur"),
    ("noise=-0.01", "data.augment.noise"), ("noise=1.5", "data.augment.noise"),
    ("blur_p=1.5", "data.augment.blur_p"), ("noise_p=-0.1", "data.augment.noise_p"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(Config, None, [f"data.augment.{override}"])


def test_segmentation_applies_the_acquisition_ops():
    """The segmentation model keeps the intensity ops of data.augment (its masks do not move): gamma is not dropped."""
    from tasks.segmentation.task import SegmentationModel
    from transfer.backbones import get_entry

    backbone = get_entry("tiny_resnet").build()
    model = SegmentationModel(backbone, 2, stride=2, width=8, top_stage=None, image_skip=False, crop_size=16,
                              vflip=False, augment=AugmentConfig(gamma=0.2), dice_weight=1.0, ce_weight=1.0)
    assert model.intensity is not None and model.intensity.acquisition is not None


def test_detection_refuses_the_ops_it_would_not_apply():
    """The detection model applies flips only: an intensity op it would silently skip is an error naming the key."""
    from transfer.api import TASKS
    from transfer.backbones import get_entry

    cfg = load_config(Config, None, ["task.name=detection", "data.format=voc", "data.augment.noise=0.02"])
    with pytest.raises(ConfigError, match=r"data\.augment\.noise: not supported by the detection task"):
        TASKS.get("detection")(cfg).build_model(get_entry("tiny_resnet").build())

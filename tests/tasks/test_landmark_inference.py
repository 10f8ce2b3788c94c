"""Per-landmark confidence and the per-image flags of landmark predict (low confidence, mirrored image)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tasks.landmarks.decoding import local_soft_argmax, peak_mass
from tasks.landmarks.inference import image_flags, landmark_outputs


class LeftDotDetector(nn.Module):
    """A stand-in landmark model that, like one trained on upright cephalograms, only 'knows' one side:
    its heatmap is sharp at a bright dot in the left half of the image and flat elsewhere."""

    def forward_all(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = images[:, :1] * 20.0
        logits[..., images.shape[-1] // 2:] = 0.0
        return {"heatmaps": logits, "coords": local_soft_argmax(logits, 2), "confidence": peak_mass(logits, 2)}


def _dot_image(x: int, y: int, h: int = 32, w: int = 32) -> torch.Tensor:
    img = torch.zeros(1, h, w)
    img[0, y, x] = 1.0
    return img


def test_confidence_and_mirror_flag_follow_what_the_model_recognises() -> None:
    images = torch.stack([_dot_image(5, 10), _dot_image(26, 10), torch.zeros(1, 32, 32)])
    model = LeftDotDetector()
    out = landmark_outputs(model, images, torch.device("cpu"), batch_size=2)
    flipped = landmark_outputs(model, images, torch.device("cpu"), batch_size=2, flip=True)
    assert out.coords.shape == (3, 1, 2) and out.confidence.shape == (3, 1)
    assert out.confidence[0, 0] > 0.99 and out.confidence[1, 0] < 0.1
    assert np.allclose(out.coords[0, 0] * 32 - 0.5, [5, 10], atol=0.01)
    assert flipped.confidence[1, 0] > 0.99  # the right-side dot, mirrored back to the left
    flags = image_flags(out.confidence, flipped.confidence, low=0.5, mirror_ratio=1.5)
    assert flags == ["", "mirrored?", "low_confidence"]


def test_regression_head_gives_nan_confidence_and_no_flags() -> None:
    conf = np.full((2, 3), np.nan)
    assert image_flags(conf, conf, low=0.5, mirror_ratio=1.5) == ["", ""]


class RefineEcho(nn.Module):
    """Coordinates read from the refinement images (their mean), so an image from the wrong row shows."""

    def forward_all(self, images: torch.Tensor, refine_images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        source = images if refine_images is None else refine_images.float()
        value = source.mean(dim=(1, 2, 3))[:, None, None].expand(-1, 1, 2)
        return {"coords": value, "confidence": torch.ones(len(images), 1)}


def test_refinement_images_read_on_demand_give_the_in_memory_result_one_batch_at_a_time() -> None:
    from tasks.landmarks.on_demand import ImagesOnDemand

    images = torch.rand(5, 1, 8, 8)
    full_res = torch.randint(0, 255, (5, 1, 20, 20), dtype=torch.uint8)
    paths = [f"{k}.png" for k in range(5)]
    reads: list[list[str]] = []

    def load(batch: list[str]) -> torch.Tensor:
        reads.append(batch)
        return full_res[[paths.index(p) for p in batch]]

    in_memory = landmark_outputs(RefineEcho(), images, torch.device("cpu"), 2, refine_images=full_res)
    on_demand = landmark_outputs(RefineEcho(), images, torch.device("cpu"), 2,
                                 refine_images=ImagesOnDemand(paths, load))
    assert np.array_equal(in_memory.coords, on_demand.coords)
    assert reads == [["0.png", "1.png"], ["2.png", "3.png"], ["4.png"]]  # never the whole split at once


def _predict(images: torch.Tensor, *extra: str):
    from tasks.landmarks.task import LandmarkTask
    from transfer.config import Config
    from transfer.config.io import load_config
    from transfer.data.datasets import ImageDataset

    cfg = load_config(Config, None, ["task.name=landmarks", "data.format=landmark_csv", "data.image_size=[32, 32]",
                                     "task.landmarks.refine=false", *extra])
    task = LandmarkTask(cfg)
    sizes = torch.tensor([[32.0, 32.0]] * len(images))
    ds = ImageDataset(images, {"orig_size": sizes}, [f"{k}.png" for k in range(len(images))])
    return task.predict(LeftDotDetector(), ds, torch.device("cpu"), batch_size=4)


def test_a_mirrored_image_is_predicted_on_its_flip_and_mapped_back() -> None:
    """The model only finds the dot on the left; the mirrored copy's dot is on the right. Fixed, its prediction is
    the unmirrored prediction mirrored (W - 1 - x) within 0.5 px; unfixed, it is wherever the model guessed."""
    upright, mirrored = _dot_image(5, 10), _dot_image(5, 10).flip(-1)  # the dot at x = 26
    fixed = _predict(torch.stack([upright, mirrored]))
    assert list(fixed["flag"]) == ["", "mirrored?"] and list(fixed["mirror_fixed"]) == [False, True]
    x_up, y_up = fixed.loc[0, "1_x"], fixed.loc[0, "1_y"]
    assert abs(fixed.loc[1, "1_x"] - (32 - 1 - x_up)) < 0.5 and abs(fixed.loc[1, "1_y"] - y_up) < 0.5
    assert fixed.loc[1, "1_confidence"] > 0.99  # the confidence of the pass that was used
    as_stored = _predict(torch.stack([upright, mirrored]), "task.landmarks.fix_mirrored=false")
    assert list(as_stored["flag"]) == ["", "mirrored?"] and not as_stored["mirror_fixed"].any()
    assert abs(as_stored.loc[1, "1_x"] - 26) > 3  # what the fix is for

"""The refinement stage: crop geometry at the border, and that training it moves estimates towards the truth."""
from __future__ import annotations

import pytest
import torch

from tasks.landmarks.refine import RefinementStage, crop_origins, extract_crops, from_crop, to_crop
from transfer.backbones import get_entry


def test_crops_read_the_right_pixels_pad_outside_and_map_back_exactly() -> None:
    h, w, crop = 20, 30, 8
    image = (torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w) + 1) / (h * w)
    # a centre near the top-left corner: the window starts at (-2, -3), outside the image
    centre_px = torch.tensor([[2.0, 1.0]])  # continuous pixels (pixel j spans [j, j + 1])
    centre = centre_px / torch.tensor([w, h])
    origins = crop_origins(centre, (h, w), crop)
    assert torch.equal(origins, torch.tensor([[-2.0, -3.0]]))
    crops = extract_crops(image, torch.tensor([0]), origins, crop)[0, 0]
    for i in range(crop):  # rows
        for j in range(crop):  # columns
            y, x = -3 + i, -2 + j
            inside = 0 <= y < h and 0 <= x < w
            expected = image[0, 0, y, x].item() if inside else 0.0
            if inside or (y < -1 or x < -1):  # roi_align clamps within one pixel of the border
                assert abs(crops[i, j].item() - expected) < 1e-6, (i, j)
    # a point maps into the crop and back exactly, wherever the window is
    point = torch.tensor([[0.31, 0.07]])
    in_crop = to_crop(point, origins, (h, w), crop)
    assert torch.allclose(from_crop(in_crop, origins, (h, w), crop), point, atol=1e-7)
    assert torch.allclose(in_crop * crop, point * torch.tensor([w, h]) - origins)


def _blob_images(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, size, size) noise with one bright Gaussian blob each, and its normalised centre (n, 1, 2)."""
    centres = 12 + torch.rand(n, 2, generator=generator) * (size - 24)  # continuous pixels
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    d2 = (xs[None] - centres[:, 0, None, None]) ** 2 + (ys[None] - centres[:, 1, None, None]) ** 2
    img = 0.8 * torch.exp(-d2 / (2 * 1.5 ** 2)) + 0.1 * torch.rand(n, size, size, generator=generator)
    return img[:, None].expand(-1, 3, -1, -1).contiguous(), (centres / size)[:, None, :]


def test_training_the_refinement_stage_moves_perturbed_estimates_towards_the_truth() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    size, crop = 64, 24
    stage = RefinementStage(get_entry("tiny_efficientnet").build(), 1, crop=crop, out_stride=2, radius=3, width=16,
                            sigma_mm=1.0, jitter_mm=3.0, per_image=1)
    opt = torch.optim.Adam(stage.parameters(), lr=3e-3)
    mm_per_pixel = torch.ones(16, 2)  # 1 mm per pixel: jitter and sigma in pixels
    stage.train()
    for _ in range(80):
        images, true = _blob_images(16, size, g)
        losses = stage.training_loss(images, true, mm_per_pixel)
        opt.zero_grad()
        (losses["euclidean"] + losses["heatmap"]).backward()
        opt.step()
    stage.eval()
    images, true = _blob_images(32, size, g)
    offset = torch.randn(32, 1, 2, generator=g) * 3.0 / size  # first estimates ~3 px off
    refined, confidence = stage.refine(images, true + offset)
    before = ((offset * size).norm(dim=-1)).mean()
    after = (((refined - true) * size).norm(dim=-1)).mean()
    assert after < 0.4 * before, (before.item(), after.item())
    assert confidence.shape == (32, 1) and bool(((confidence > 0) & (confidence <= 1)).all())


class _DotFinder(RefinementStage):
    """A refinement stage that 'decodes' each crop as the centre of its brightest pixel: exact, whatever the crop's
    offset, so test-time crops shifted off the estimate must map back to the same image position."""

    def forward(self, crops: torch.Tensor, landmark: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = crops[:, 0].flatten(1).argmax(1)
        y, x = flat // self.crop, flat % self.crop
        coords = torch.stack([x, y], -1).float().add(0.5) / self.crop
        return {"coords": coords, "confidence": torch.ones(len(crops)), "heatmaps": crops[:, 0]}


def test_test_time_crops_map_each_shifted_crop_back_to_the_same_point() -> None:
    h, w, crop = 60, 80, 24
    image = torch.zeros(1, 1, h, w)
    image[0, 0, 31, 45] = 1.0  # the dot: continuous centre (45.5, 31.5)
    truth = torch.tensor([45.5 / w, 31.5 / h])
    # a first estimate off by (2.5, -2.5) px, at whole pixels, so every crop's pixels sample pixel centres exactly
    estimate = torch.tensor([48.0 / w, 29.0 / h])[None, None]
    stage = _DotFinder(get_entry("tiny_efficientnet").build(), 1, crop=crop)
    one, _ = stage.refine(image, estimate)
    stage.tta_shift = 0.25  # four more crops, 6 px off the estimate each way: the dot stays inside every one
    assert stage._shifts(torch.device("cpu")).shape == (5, 2)
    five, confidence = stage.refine(image, estimate)
    assert torch.allclose(one[0, 0], truth, atol=1e-6) and torch.allclose(five[0, 0], truth, atol=1e-6)
    assert confidence.shape == (1, 1)
    # the four shifts cancel in the mean, so also one shift alone: a crop mapped back with the centred crop's origin
    # would land 6 px off
    stage._shifts = lambda device: torch.tensor([[0.0, 0.0], [6.0, -6.0]], device=device)
    two, _ = stage.refine(image, estimate)
    assert torch.allclose(two[0, 0], truth, atol=1e-6)
    with pytest.raises(ValueError, match="refine_tta_shift"):
        _DotFinder(get_entry("tiny_efficientnet").build(), 1, crop=crop, tta_shift=0.5)


class _HalfwayFinder(_DotFinder):
    """Decodes each crop halfway between its centre and the dot: one pass halves an estimate's error, so a second
    pass, cropping around the first one's estimate, halves it again. The dot is found as the crop's intensity
    centroid, exact at any sub-pixel offset (bilinear sampling spreads the dot's pixel without moving its centre)."""

    def forward(self, crops: torch.Tensor, landmark: torch.Tensor) -> dict[str, torch.Tensor]:
        v = crops[:, 0]
        centres = (torch.arange(self.crop, dtype=v.dtype) + 0.5) / self.crop
        mass = v.sum((1, 2))
        dot = torch.stack([(v.sum(1) * centres).sum(1), (v.sum(2) * centres).sum(1)], -1) / mass[:, None]
        return {"coords": (dot + 0.5) / 2, "confidence": torch.ones(len(crops)), "heatmaps": v}


def test_each_refinement_pass_crops_around_the_previous_passes_estimate() -> None:
    h, w, crop = 60, 80, 24
    image = torch.zeros(1, 1, h, w)
    image[0, 0, 31, 45] = 1.0  # the dot: continuous centre (45.5, 31.5)
    truth = torch.tensor([45.5, 31.5])
    estimate = torch.tensor([49.5 / w, 27.5 / h])[None, None]  # (4, -4) px off
    stage = _HalfwayFinder(get_entry("tiny_efficientnet").build(), 1, crop=crop)
    errors = []
    for passes in (1, 2, 3):
        stage.passes = passes
        refined, _ = stage.refine(image, estimate)
        errors.append(refined[0, 0] * torch.tensor([w, h]) - truth)
    assert torch.allclose(errors[0], torch.tensor([2.0, -2.0]), atol=1e-5)
    assert torch.allclose(errors[1], torch.tensor([1.0, -1.0]), atol=1e-5)
    assert torch.allclose(errors[2], torch.tensor([0.5, -0.5]), atol=1e-5)
    with pytest.raises(ValueError, match="refine_passes"):
        _DotFinder(get_entry("tiny_efficientnet").build(), 1, crop=crop, passes=0)


def test_the_refinement_stage_takes_its_test_time_crops_from_the_task_options() -> None:
    from transfer.api import TASKS
    from transfer.config import Config, load_config

    def stage(*more: str) -> RefinementStage:
        cfg = load_config(Config, None, ["task.name=landmarks", "data.format=landmark_csv", "init=scratch",
                                         "task.landmarks.head=decoder", "task.landmarks.refine=true",
                                         "task.landmarks.refine_image_size=[60, 48]", "task.landmarks.refine_crop=32",
                                         "tracking.progress=false", *more])
        task = TASKS.get("landmarks")(cfg)
        task.info["num_landmarks"] = 2
        return task.build_model(get_entry("tiny_efficientnet").build()).refine_stage

    assert stage().tta_shift == 0.0 and stage().passes == 1
    assert stage("task.landmarks.refine_tta_shift=0.1").tta_shift == 0.1
    assert stage("task.landmarks.refine_passes=2").passes == 2


def test_only_the_final_training_rows_hold_full_resolution_copies_each_of_its_own_file(tiny_landmarks) -> None:
    """The refinement's full-resolution copies are decoded for the training rows once the split is final (after the
    fold, the validation carve and the label fraction), never for validation or test, and row i's copy is row i's
    image: subsets keep each row's source file."""
    import numpy as np
    from PIL import Image

    from transfer.api import TASKS
    from transfer.config import Config, load_config
    from transfer.runs.splits import prepare_data

    cfg = load_config(Config, None, ["task.name=landmarks", "data.format=landmark_csv", "init=scratch",
                                     f"data.root={tiny_landmarks}", "data.train=[train.csv, test.csv]",
                                     "data.image_dir=images", "data.folds=folds.csv", "data.fold=1",
                                     "data.val_fraction=0.25", "data.label_fraction=0.5", "backbone.in_chans=1",
                                     "task.landmarks.head=decoder", "task.landmarks.refine=true",
                                     "task.landmarks.refine_image_size=[60, 48]", "tracking.progress=false"])
    folds = "".join(f"{i:03d}.png,{i % 3}\n" for i in range(12))
    (tiny_landmarks / "folds.csv").write_text("image,fold\n" + folds)
    cfg.data.folds = str(tiny_landmarks / "folds.csv")
    task = TASKS.get("landmarks")(cfg)
    splits = prepare_data(task, cfg)
    assert all("refine_image" not in ds.targets for ds in (splits.train, splits.val, splits.test))
    train = task.for_training(splits.train)
    copies = train.targets["refine_image"]
    assert copies.dtype == torch.uint8 and len(copies) == len(train) == len(splits.train) < 8
    assert train.images is splits.train.images  # the same working-size tensor, not a copy
    for i, name in enumerate(train.ids):
        own = np.asarray(Image.open(tiny_landmarks / "images" / name))
        assert np.array_equal(copies[i, 0].numpy(), own), name
    for ds in (splits.val, splits.test):  # scored a batch at a time, from each row's own file
        assert [p.name for p in ds.sources] == ds.ids


def test_a_zoomed_crop_is_the_box_filtered_window_and_maps_back_exactly() -> None:
    """A coarse-stage crop (zoom 2): a 16-px window read into 8 px, each pixel the mean of its 2 x 2 image pixels
    (no aliasing), and a point maps into the window and back exactly."""
    h, w, zoom, size = 40, 50, 2, 8
    image = torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(0))
    origins = torch.tensor([[10.0, 6.0]])  # whole pixels: the 2 x 2 samples of each bin sit on pixel centres
    crop = extract_crops(image, torch.tensor([0]), origins, size * zoom, size)[0, 0]
    block_means = image[0, 0, 6 : 6 + size * zoom, 10 : 10 + size * zoom].reshape(size, zoom, size, zoom).mean((1, 3))
    assert crop.shape == (size, size) and torch.allclose(crop, block_means, atol=1e-6)
    point = torch.tensor([[0.33, 0.41]])
    in_window = to_crop(point, origins, (h, w), size * zoom)
    assert torch.allclose(from_crop(in_window, origins, (h, w), size * zoom), point, atol=1e-7)
    with pytest.raises(ValueError, match="zoom"):
        RefinementStage(get_entry("tiny_efficientnet").build(), 1, crop=16, zoom=0.5)


def test_the_coarse_stage_finds_what_the_fine_crop_cannot_see_and_the_fine_stage_crops_around_it() -> None:
    """Global estimate 20 px off: out of the fine crop (+-12 px) but in the coarse window (+-36 px). The model's
    chain is global -> coarse -> fine; the fine stage alone stays wherever its crop has no dot."""
    from tasks.landmarks.task import LandmarkModel

    h, w, crop = 90, 120, 24
    image = torch.zeros(1, 1, h, w)
    image[0, 0, 45, 60] = 1.0  # the dot: continuous centre (60.5, 45.5)
    truth = torch.tensor([60.5 / w, 45.5 / h])
    start = torch.tensor([80.0 / w, 45.0 / h])[None, None]
    backbone = get_entry("tiny_efficientnet").build()
    fine = _HalfwayFinder(backbone, 1, crop=crop)
    coarse = _HalfwayFinder(backbone, 1, crop=crop, zoom=3)
    assert coarse.window == 72
    model = LandmarkModel(backbone, 1, head="decoder", hidden=8, dropout=0.0, heatmap_stage=None, heatmap_weight=1.0,
                          heatmap_sigma=1.0, augment=None, decoder_width=8, refine=fine, coarse=coarse).eval()
    model._forward_global = lambda images: {"coords": start.expand(len(images), -1, -1),
                                             "confidence": torch.ones(len(images), 1)}
    out = model.forward_all(torch.zeros(1, 3, 30, 40), image)
    px = torch.tensor([w, h])
    assert torch.allclose(out["global_coords"], start)
    # the coarse stage (halfway to the dot it sees) leaves 10 px of the 20, the fine one halves that again. In y the
    # coarse stage sees the dot at its 3-px bin's centre (46.5, 1 px low): halfway from 45.0 is 45.75
    assert torch.allclose((out["coarse_coords"][0, 0] - truth) * px, torch.tensor([9.75, 0.25]), atol=1e-3)
    assert torch.allclose((out["coords"][0, 0] - truth) * px, torch.tensor([4.875, 0.125]), atol=1e-3)
    alone, _ = fine.refine(image, start)  # no dot in the fine crop: the centroid of nothing
    assert not torch.isfinite(alone).all() or ((alone[0, 0] - truth) * px).norm() > 9
    with pytest.raises(ValueError, match="needs the refinement stage"):
        LandmarkModel(backbone, 1, head="decoder", hidden=8, dropout=0.0, heatmap_stage=None, heatmap_weight=1.0,
                      heatmap_sigma=1.0, augment=None, decoder_width=8, coarse=coarse)


def test_the_coarse_stage_is_built_from_the_task_options_and_checked() -> None:
    from transfer.api import TASKS
    from transfer.config import Config, load_config
    from transfer.config.io import ConfigError

    base = ["task.name=landmarks", "data.format=landmark_csv", "init=scratch", "task.landmarks.head=decoder",
            "task.landmarks.refine=true", "task.landmarks.refine_image_size=[60, 48]", "task.landmarks.refine_crop=32",
            "task.landmarks.refine_sigma_mm=0.5", "tracking.progress=false"]

    def model(*more: str):
        task = TASKS.get("landmarks")(load_config(Config, None, [*base, *more]))
        task.info["num_landmarks"] = 2
        return task.build_model(get_entry("tiny_efficientnet").build())

    assert model().coarse_stage is None
    m = model("task.landmarks.refine_coarse_zoom=3", "task.landmarks.refine_coarse_jitter_mm=5")
    c = m.coarse_stage
    assert (c.window, c.crop, c.jitter_mm, c.sigma_mm) == (96, 32, 5.0, 1.5)
    assert m.refine_stage.window == 32 and c.backbone is not m.refine_stage.backbone
    assert set(m.extra_stages()) == {"refine", "refine_coarse"}
    with pytest.raises(ConfigError, match="refine_coarse_zoom: must be 0"):
        load_config(Config, None, [*base, "task.landmarks.refine_coarse_zoom=0.5"])
    with pytest.raises(ConfigError, match="refine_coarse_zoom: needs refine: true"):
        load_config(Config, None, ["task.name=landmarks", "task.landmarks.refine_coarse_zoom=3"])

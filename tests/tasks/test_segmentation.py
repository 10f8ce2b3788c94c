"""Segmentation task: mask-folder pairing and bad input, sliding windows, depth freezing, checkpoints, CLI smoke."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tasks.segmentation.inference import sliding_window_probs, window_starts
from tasks.segmentation.task import SegmentationTask, read_mask
from transfer.cli import main
from transfer.config import Config
from transfer.config.io import load_config
from transfer.errors import DatasetError
from transfer.weights import backbone_from_config

H, W = 36, 44  # not multiples of 32


def make_split(root: Path, split: str, n: int, *, seed: int = 0, fov: bool = True) -> Path:
    """DRIVE-like split: images/NN_<split>.png, manual/NN_manual1.gif (0/255), mask/NN_<split>_mask.png."""
    rng = np.random.default_rng(seed)
    d = root / split
    for sub in ("images", "manual", "mask"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        m = np.zeros((H, W), np.uint8)
        y, x = rng.integers(2, H - 14), rng.integers(2, W - 14)
        m[y : y + 12, x : x + 3] = 255  # a "vessel"
        m[y : y + 3, x : x + 12] = 255
        img = (rng.random((H, W)) * 60 + (m > 0) * 150).astype(np.uint8)
        Image.fromarray(img).save(d / "images" / f"{i:02d}_{split}.png")
        Image.fromarray(m).save(d / "manual" / f"{i:02d}_manual1.gif")
        if fov:
            f = np.zeros((H, W), np.uint8)
            f[1:-1, 1:-1] = 255
            Image.fromarray(f).save(d / "mask" / f"{i:02d}_{split}_mask.png")
    return d


def seg_args(root: Path, *extra: str) -> list[str]:
    return ["--set", "task.name=segmentation", "--set", "data.format=mask_folder", "--set", f"data.root={root}",
            "--set", "data.train=training", "--set", f"data.image_size=[{H}, {W}]", "--set", "backbone.in_chans=1",
            "--set", "task.segmentation.mask_dir=manual", "--set", "task.segmentation.fov_dir=mask",
            "--set", "task.segmentation.image_pattern=(?P<id>\\d+)_(?P<split>training|test)",
            "--set", "task.segmentation.mask_template='{id}_manual1.gif'",
            "--set", "task.segmentation.fov_template='{stem}_mask.png'",
            "--set", "task.segmentation.crop_size=32", "--set", "task.segmentation.decoder_width=4", *extra]


def make_cfg(root: Path, *extra: str, backbone: str = "tiny_efficientnet") -> Config:
    args = seg_args(root, "--set", f"backbone.name={backbone}", "--set", "init=scratch",
                    "--set", "tracking.progress=false", *extra)
    sets = [a for a in args if a != "--set"]
    return load_config(Config, None, sets)


@pytest.fixture
def seg_root(tmp_path) -> Path:
    make_split(tmp_path / "seg", "training", 8)
    make_split(tmp_path / "seg", "test", 3, seed=1)
    return tmp_path / "seg"


# -- data -----------------------------------------------------------------------------------------


def test_pairing_reads_masks_as_class_indices(seg_root):
    task = SegmentationTask(make_cfg(seg_root))
    ds = task.load_split("training", "train")
    assert len(ds) == 8 and ds.ids[0] == "00_training.png"
    assert ds.images.shape == (8, 1, H, W) and ds.targets["mask"].shape == (8, H, W)
    assert set(np.unique(ds.target_array("mask"))) == {0, 1}
    assert ds.target_array("fov")[:, 0].sum() == 0 and ds.target_array("fov")[:, 5, 5].all()
    assert task.info["num_classes"] == 2 and task.info["n_empty_masks"]["train"] == 0


def test_palette_gif_is_read_by_index(tmp_path):
    # DRIVE's 2nd_manual: 0/1 indices of a near-black / near-white palette
    im = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    im.putpalette([4, 2, 4, 252, 254, 252] + [0] * 762)
    im.save(tmp_path / "m.gif")
    assert read_mask(tmp_path / "m.gif").tolist() == [[0, 1], [1, 0]]
    # an exactly gray palette (how PIL writes a gray image to GIF) stands for gray levels
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    im.save(tmp_path / "g.gif")
    assert read_mask(tmp_path / "g.gif").tolist() == [[0, 255], [255, 0]]


def test_undeclared_value_names_file_and_value(seg_root):
    m = np.zeros((H, W), np.uint8)
    m[3, 3] = 128
    Image.fromarray(m).save(seg_root / "training" / "manual" / "02_manual1.gif")
    with pytest.raises(DatasetError, match=r"02_manual1\.gif.*\[128\]"):
        SegmentationTask(make_cfg(seg_root)).load_split("training", "train")


def test_mask_size_mismatch_names_file(seg_root):
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(seg_root / "training" / "manual" / "03_manual1.gif")
    with pytest.raises(DatasetError, match=r"03_manual1\.gif: mask is 44x37.*03_training\.png is 44x36"):
        SegmentationTask(make_cfg(seg_root)).load_split("training", "train")


def test_image_without_mask_and_mask_without_image(seg_root):
    (seg_root / "training" / "manual" / "04_manual1.gif").unlink()
    with pytest.raises(DatasetError, match=r"04_training\.png: image has no mask \(expected .*04_manual1\.gif\)"):
        SegmentationTask(make_cfg(seg_root)).load_split("training", "train")
    # skip mode: counted, not dropped silently
    task = SegmentationTask(make_cfg(seg_root, "data.on_bad=skip"))
    assert len(task.load_split("training", "train")) == 7
    assert [Path(s.path).name for s in task.skipped] == ["04_training.png"]
    Image.fromarray(np.zeros((H, W), np.uint8)).save(seg_root / "training" / "manual" / "99_manual1.gif")
    (seg_root / "training" / "images" / "04_training.png").unlink()
    with pytest.raises(DatasetError, match=r"99_manual1\.gif: mask has no image"):
        SegmentationTask(make_cfg(seg_root)).load_split("training", "train")


def test_empty_mask_is_allowed_and_counted(seg_root):
    Image.fromarray(np.zeros((H, W), np.uint8)).save(seg_root / "training" / "manual" / "05_manual1.gif")
    task = SegmentationTask(make_cfg(seg_root))
    ds = task.load_split("training", "train")
    assert len(ds) == 8 and task.info["empty_masks"]["train"] == ["05_training.png"]


def test_skip_mode_skips_bad_masks_with_reason(seg_root):
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(seg_root / "training" / "manual" / "01_manual1.gif")
    task = SegmentationTask(make_cfg(seg_root, "data.on_bad=skip"))
    ds = task.load_split("training", "train")
    assert len(ds) == 7 and "01_training.png" not in ds.ids
    assert len(task.skipped) == 1 and "[7]" in task.skipped[0].reason


# -- model ----------------------------------------------------------------------------------------


def _model(seg_root, backbone="tiny_efficientnet", *extra):
    cfg = make_cfg(seg_root, *extra, backbone=backbone)
    task = SegmentationTask(cfg)
    ds = task.load_split("training", "train")
    bb, _ = backbone_from_config(cfg.backbone, "scratch")
    return cfg, task, ds, task.build_model(bb, ds)


def test_sliding_window_equals_whole_image_where_both_fit(seg_root):
    torch.manual_seed(0)
    _, task, ds, model = _model(seg_root)
    model.eval()
    x = ds.images[:3]
    with torch.no_grad():
        whole = model(x).softmax(1)
    one = sliding_window_probs(model, x, window=64, overlap=0.5)  # one window covers the image
    assert torch.allclose(one, whole, atol=1e-6)
    # a per-pixel model gives the same answer however the windows overlap and blend
    pix = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        ref = pix(x).softmax(1)
    for blend in ("gaussian", "linear"):
        many = sliding_window_probs(pix, x, window=16, overlap=0.5, blend=blend, batch_size=5)
        assert torch.allclose(many, ref, atol=1e-5)
    assert window_starts(44, 16, 8) == [0, 8, 16, 24, 28] and window_starts(10, 16, 8) == [0]


def test_alexnet_fc_stages_are_unused_and_model_size_is_exact(seg_root):
    _, _, ds, model = _model(seg_root, "tiny_alexnet", "backbone.in_chans=1")
    assert model.unused_stages == ["fc6", "fc7"]
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 37, 45)).shape == (2, 2, 37, 45)


def test_decoder_top_stage_marks_the_stages_above_unused(seg_root):
    _, _, _, model = _model(seg_root, "tiny_efficientnet", "task.segmentation.decoder_top_stage=blocks4")
    assert model.unused_stages == ["blocks5", "blocks6", "conv_head"] and model.head.top_stage == "blocks4"


def test_frozen_stages_get_no_gradient_at_depth_head(seg_root):
    from transfer.engine import make_loader
    from transfer.runs.depth import setup_depth

    cfg, _, ds, model = _model(seg_root)
    stages, opt, train_mode = setup_depth(model, cfg, "head")
    assert stages == []
    train_mode()
    bn = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running_mean" in k}
    batch = next(iter(make_loader(ds, 4, shuffle=True)))
    out = model.training_step(batch)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    after = model.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in bn.items())


def test_stage1_checkpoint_loads_with_no_missing_backbone_keys(tmp_path, seg_root):
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(6):
        Image.fromarray((np.random.default_rng(i).random((32, 32)) * 255).astype(np.uint8)).save(pool / f"{i}.png")
    assert main(["pretrain", "--name", "s1", "--set", "backbone.name=tiny_efficientnet", "--set", "init=scratch",
                 "--set", "backbone.in_chans=1", "--set", "pretrain.method=simclr", "--set", "pretrain.epochs=1",
                 "--set", "pretrain.warmup_epochs=0", "--set", "pretrain.batch_size=4", "--set", "pretrain.max_steps=1",
                 "--set", f"data.root={tmp_path}", "--set", "pretrain.pool=pool", "--set", "data.image_size=[32, 32]",
                 "--set", f"tracking.out_dir={tmp_path / 'runs'}", "--set", "tracking.wandb_mode=disabled",
                 "--set", "tracking.progress=false"]) == 0
    ck = tmp_path / "runs" / "s1" / "backbone.pt"
    cfg = make_cfg(seg_root)
    bb, rep = backbone_from_config(cfg.backbone, str(ck))
    assert not rep.missing
    model = SegmentationTask(cfg).build_model(bb)
    saved = torch.load(ck, weights_only=True)["stages"]
    for sd in saved.values():
        for k, v in sd.items():
            assert torch.equal(model.backbone.state_dict()[k], v), k


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_finetune_evaluate_predict(tmp_path, seg_root, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--set", "backbone.name=tiny_efficientnet", "--set", "init=scratch", "--set", "train.epochs=2",
              "--set", "train.max_steps=2", "--set", "train.batch_size=4", "--set", f"tracking.out_dir={tmp_path / 'runs'}",
              "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false", "--set", "data.test=test",
              "--set", "train.depth=blocks3-head", "--set", "data.augment.hflip=true",
              "--set", "task.segmentation.vflip=true", "--set", "task.segmentation.spacing_mm=0.5"]
    assert main(["finetune", "--name", "seg", *seg_args(seg_root), *common]) == 0
    run = tmp_path / "runs" / "seg"
    for f in ("summary.json", "model.pt", "predictions_val.csv", "predictions_test.csv", "test_overlay_worst.png"):
        assert (run / f).exists(), f
    summary = json.loads((run / "summary.json").read_text())
    t = summary["test"]
    assert 0 <= t["dice"] <= 1 and 0 <= t["iou"] <= 1 and "hd95_mm" in t and t["n_images"] == 3
    assert summary["trainable_stages"][0] == "blocks3"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("val_dice" in r for r in rows)
    pred = pd.read_csv(run / "predictions_test.csv")
    assert list(pred["image"]) == ["00_test.png", "01_test.png", "02_test.png"] and "hd95_px" in pred
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", "test", "--out", str(tmp_path / "ev.csv")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["dice"] == pytest.approx(t["dice"])
    assert pd.read_csv(tmp_path / "ev.csv")["dice"].tolist() == pytest.approx(pred["dice"].tolist())
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(seg_root / "test" / "images"), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert len(df) == 3 and "vessel_pixels" not in df  # default class names
    for p in df["mask_path"]:
        m = np.asarray(Image.open(p))
        assert m.shape == (H, W) and set(np.unique(m)) <= {0, 255}


def test_cli_bad_mask_is_one_line_naming_the_file(tmp_path, seg_root, capsys):
    Image.fromarray(np.full((H, W), 9, np.uint8)).save(seg_root / "training" / "manual" / "06_manual1.gif")
    args = ["finetune", *seg_args(seg_root), "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
            "--set", f"tracking.out_dir={tmp_path / 'runs'}", "--set", "tracking.wandb_mode=disabled"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "06_manual1.gif" in err and "[9]" in err and "Traceback" not in err


def test_second_observer_script_scores_one_folder_against_another(tmp_path, seg_root, capsys):
    from tasks.segmentation.observer import main as observer_main

    d = seg_root / "training"
    (d / "second").mkdir()
    for f in sorted((d / "manual").iterdir()):
        m = np.asarray(Image.open(f).convert("L")).copy()
        m[:, :2] = 255  # the second observer marks two extra columns (inside and outside the FOV)
        Image.fromarray(m).save(d / "second" / f.name.replace("manual1", "manual2"))
    assert observer_main([str(d), "--truth", "manual", "--other", "second", "--fov", "mask"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_images"] == 8 and 0 < res["means"]["dice"] < 1 and res["means"]["sensitivity"] == 1.0
    assert observer_main([str(d), "--truth", "manual", "--other", "manual", "--fov", "mask"]) == 0
    assert json.loads(capsys.readouterr().out)["means"]["dice"] == 1.0


def test_predict_writes_masks_under_output_dir(tmp_path, seg_root):
    torch.manual_seed(0)
    _, task, ds, model = _model(seg_root)
    task.output_dir = tmp_path / "pred_masks"
    df = task.predict(model, ds.subset([0, 1]), torch.device("cpu"))
    assert [Path(p).parent for p in df["mask_path"]] == [tmp_path / "pred_masks"] * 2
    assert Image.open(df["mask_path"][0]).size == (W, H)
    assert not df["fov_applied"].any()  # ids without a folder: no FOV to find
    # images named by path in a split folder: their FOV masks are found and applied (border = background)
    from transfer.data.datasets import ImageDataset

    paths = [str(seg_root / "training" / "images" / n) for n in ds.ids[:2]]
    model.head.classifier.bias.data = torch.tensor([-50.0, 50.0])  # predicts foreground everywhere
    df = task.predict(model, ImageDataset(ds.images[:2], {"orig_size": ds.targets["orig_size"][:2]}, paths),
                      torch.device("cpu"))
    assert df["fov_applied"].all()
    m = np.asarray(Image.open(df["mask_path"][0]))
    assert (m[0] == 0).all() and (m[:, -1] == 0).all() and (m[1:-1, 1:-1] == 255).all()


# -- scoring at the files' resolution ----------------------------------------------------------------------------

def _truth_at_working_size(task, ds):
    """A 'model' whose probabilities are the working-size truth, one-hot: perfect at the working size only."""
    mask = torch.as_tensor(ds.target_array("mask")).long()
    return torch.nn.functional.one_hot(mask, 2).permute(0, 3, 1, 2).float()


def test_scores_at_native_resolution_not_the_working_size(seg_root, monkeypatch):
    """Old: masks were resized to data.image_size and scored there, so a prediction perfect at 16x16 scored Dice 1.0
    against a 16x16 copy of the truth. Now probabilities are resized back to the mask's 36x44 pixels and scored
    against the mask as stored, with spacing_mm per original pixel."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    from tasks.segmentation.metrics import overlap_metrics

    task = SegmentationTask(make_cfg(seg_root, "--set", "data.image_size=[16, 16]", "--set", "data.test=test",
                                     "--set", "task.segmentation.spacing_mm=0.5"))
    ds = task.load_split("test", "test")
    probs = _truth_at_working_size(task, ds)
    monkeypatch.setattr(task, "probabilities", lambda *a, **k: probs)
    result = task.evaluate(None, ds, torch.device("cpu"))  # type: ignore[arg-type]
    for i, row in result.predictions.iterrows():
        stem = Path(row["image"]).stem  # NN_test
        true = read_mask(seg_root / "test" / "manual" / f"{stem[:2]}_manual1.gif") > 0  # as stored: 36x44
        fov = read_mask(seg_root / "test" / "mask" / f"{stem}_mask.png") > 0
        pred = torch.nn.functional.interpolate(probs[i : i + 1], size=(H, W), mode="bilinear",
                                               align_corners=False)[0].argmax(0).numpy()
        assert row["dice"] == pytest.approx(overlap_metrics(pred == 1, true == 1, fov)["dice"])
        assert row["dice"] < 1.0  # a 16x16 map does not recover 3-pixel vessels at 36x44
        p, t = torch.as_tensor((pred == 1) & fov)[None, None], torch.as_tensor((true == 1) & fov)[None, None]
        hd95 = compute_hausdorff_distance(p, t, percentile=95, spacing=0.5).item()
        assd = compute_average_surface_distance(p, t, symmetric=True, spacing=0.5).item()
        assert row["hd95_mm"] == pytest.approx(hd95, rel=1e-6)
        assert row["hd95_px"] == pytest.approx(hd95 / 0.5, rel=1e-6)
        assert row["assd_mm"] == pytest.approx(assd, rel=0.15)  # MONAI averages the two directions' means
        assert row["assd_mm"] == pytest.approx(_assd_pooled(p[0, 0].numpy(), t[0, 0].numpy(), 0.5), rel=1e-6)
    assert result.metrics["scored_at"] == "native"


def _assd_pooled(pred: np.ndarray, true: np.ndarray, spacing: float) -> float:
    """ASSD as every boundary distance of both directions pooled, by brute force over boundary pixel pairs."""
    from scipy import ndimage

    def boundary(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m, border_value=0))

    a, b = boundary(pred) * spacing, boundary(true) * spacing
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return float(np.concatenate([d.min(1), d.min(0)]).mean())


def test_images_without_a_scorable_pixel_are_left_out_and_named(seg_root, monkeypatch, capsys):
    """Old: an all-zero field of view scored Dice 1.0 and was averaged in. Now it is counted and named, and so is an
    image whose truth and prediction are both empty."""
    Image.fromarray(np.zeros((H, W), np.uint8)).save(seg_root / "test" / "mask" / "01_test_mask.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(seg_root / "test" / "manual" / "02_manual1.gif")
    task = SegmentationTask(make_cfg(seg_root, "--set", "data.test=test"))
    ds = task.load_split("test", "test")
    probs = _truth_at_working_size(task, ds)
    monkeypatch.setattr(task, "probabilities", lambda *a, **k: probs)
    result = task.evaluate(None, ds, torch.device("cpu"))  # type: ignore[arg-type]
    m = result.metrics
    assert m["n_unscorable"] == 1 and m["unscorable"] == ["01_test.png"]
    assert m["n_empty_agree"] == 1 and m["empty_agree"] == ["02_test.png"]
    assert m["n_scored"] == 1 and m["dice"] == pytest.approx(result.predictions["dice"].iloc[0])
    assert "01_test.png" in capsys.readouterr().out


# -- sparse targets (issue 18) --------------------------------------------------------------------


def _sparse_split(root: Path, n: int, seed: int, size: int = 128) -> None:
    """``n`` images of ``size`` px with one bright 3-5 px square each (0.05-0.15% of the pixels) and their masks."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        m = np.zeros((size, size), np.uint8)
        r = int(rng.integers(3, 6))
        y, x = rng.integers(4, size - 4 - r, 2)
        m[y : y + r, x : x + r] = 255
        img = (rng.random((size, size)) * 100 + (m > 0) * 120).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(m).save(root / "masks" / f"{i}.png")


def test_a_sparse_lesion_is_learned_with_foreground_crops_and_not_with_uniform_ones(tmp_path, capsys):
    """32 px crops of 128 px images: about 10% of uniform crops hold the lesion, and Dice + CE learn "never
    foreground" (validation Dice 0, warned after 3 epochs); a third of the crops centred on it (the default) learn it
    on the same budget (8 epochs of 10 steps of 8 crops, tiny_efficientnet from scratch, about 10 s each)."""
    _sparse_split(tmp_path / "train", 16, 0)
    _sparse_split(tmp_path / "val", 8, 1)
    sets = ["task.name=segmentation", "data.format=mask_folder", f"data.root={tmp_path}", "data.train=train",
            "data.val=val", "data.image_size=[128, 128]", "backbone.in_chans=1", "backbone.name=tiny_efficientnet",
            "init=scratch", "task.segmentation.crop_size=32", "task.segmentation.decoder_width=8", "train.epochs=8",
            "train.steps_per_epoch=10", "train.batch_size=8", "train.optimizer=adamw", "train.lr=0.01",
            "train.patience=100", f"tracking.out_dir={tmp_path / 'runs'}", "tracking.wandb_mode=disabled",
            "tracking.progress=false", "tracking.log_media=false"]
    results = {}
    for name, ratio in (("fg", "0.33"), ("uniform", "0.0")):
        capsys.readouterr()
        args = [*sets, f"task.segmentation.foreground_ratio={ratio}"]
        assert main(["finetune", "--name", name, *[a for s in args for a in ("--set", s)]]) == 0
        cap = capsys.readouterr()
        summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        results[name] = (summary, cap.out + cap.err)
    fg, fg_text = results["fg"]
    uni, uni_text = results["uniform"]
    assert fg["val"]["dice"] > 0.5, fg["val"]
    assert uni["val"]["dice"] < 0.05, uni["val"]
    # the share of training crops holding the lesion: console and summary
    share_fg, share_uni = fg["task_info"]["train_foreground_crops"]["all"], uni["task_info"]["train_foreground_crops"]["all"]
    assert 0.33 < share_fg < 0.55 and share_uni < 0.2
    assert f"training crops holding foreground: {share_fg:.1%}" in fg_text
    warning = "validation Dice is still 0 after 3 epochs"
    assert warning in uni_text and any(warning in w for w in uni["warnings"])


def test_zero_dice_warning_after_three_epochs_and_the_crop_share(seg_root):
    task = SegmentationTask(make_cfg(seg_root))
    row = {"val_dice": 0.0, "train_foreground_crops": 0.1, "steps": 10}
    assert task.epoch_warnings([row, row]) == []
    three = [row, row, {**row, "train_foreground_crops": 0.4}]
    (w,) = task.epoch_warnings(three)
    assert "still 0 after 3 epochs" in w and "20.0% of the training crops held foreground" in w
    assert task.epoch_warnings([row, {**row, "val_dice": 0.2}, row]) == []
    assert task.epoch_warnings([row, {**row, "val_dice": float("nan")}, row]) == []  # nothing scored is not 0
    assert task.fit_report(three + [{**row, "steps": 20}], "all").startswith("training crops holding foreground: 16.0%")
    assert task.info["train_foreground_crops"] == {"all": 0.16}
    assert task.fit_report([{"val_dice": 0.0}], "head") is None

"""Shared fixtures: tiny configs, synthetic datasets, the real-data root."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# One torch thread per test process (and per subprocess a test starts): the models are tiny, and two threads on this
# project's 2-core machines fight each other and any parallel job (tiny_resnet forward: 0.002 s vs 0.47 s measured).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MEDTRANSFER_DATA", REPO.parent / "shared" / "data"))


def _real_data(sub: str) -> Path:
    p = DATA_ROOT / sub
    if not p.exists():
        pytest.skip(f"real dataset {p} not present (set MEDTRANSFER_DATA)")
    return p


@pytest.fixture
def real_data():
    """``real_data("isbi2015_ceph")`` -> the folder, or skip the test when it is absent."""
    return _real_data


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    """A MedMNIST-style npz: class 1 images are brighter in the centre, so a model can learn them."""
    rng = np.random.default_rng(0)

    def make(n):
        y = np.arange(n) % 2
        x = rng.integers(0, 100, size=(n, 28, 28)).astype(np.uint8)
        x[y == 1, 9:19, 9:19] += 120
        return x, y[:, None].astype(np.uint8)

    out = {}
    for split, n in (("train", 40), ("val", 12), ("test", 12)):
        x, y = make(n)
        out[f"{split}_images"], out[f"{split}_labels"] = x, y
    path = tmp_path / "tiny.npz"
    np.savez(path, **out)
    return path


@pytest.fixture
def tiny_landmarks(tmp_path) -> Path:
    """12 images of 60x48 (H x W) with a bright 3x3 dot at landmark 1 and landmark 2, plus a CSV."""
    rng = np.random.default_rng(1)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    rows = []
    for i in range(12):
        a = (rng.random((60, 48)) * 40).astype(np.uint8)
        pts = [(int(rng.integers(5, 43)), int(rng.integers(5, 55))) for _ in range(2)]
        for x, y in pts:
            a[y - 1 : y + 2, x - 1 : x + 2] = 255
        name = f"{i:03d}.png"
        Image.fromarray(a).save(img_dir / name)
        rows.append(f"{name},{pts[0][0]},{pts[0][1]},{pts[1][0]},{pts[1][1]}")
    (tmp_path / "train.csv").write_text("image_path,1_x,1_y,2_x,2_y\n" + "\n".join(rows[:9]) + "\n")
    (tmp_path / "test.csv").write_text("image_path,1_x,1_y,2_x,2_y\n" + "\n".join(rows[9:]) + "\n")
    return tmp_path


@pytest.fixture
def tiny_segmentation(tmp_path) -> Path:
    """A DRIVE-like folder: training/ (8) and test/ (3) with images/, manual/ (0/255 GIF) and mask/ (FOV), 36x44."""
    h, w = 36, 44
    for split, n, seed in (("training", 8, 0), ("test", 3, 1)):
        rng = np.random.default_rng(seed)
        d = tmp_path / "seg" / split
        for sub in ("images", "manual", "mask"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            m = np.zeros((h, w), np.uint8)
            y, x = rng.integers(2, h - 14), rng.integers(2, w - 14)
            m[y : y + 12, x : x + 3] = 255
            m[y : y + 3, x : x + 12] = 255
            img = (rng.random((h, w)) * 60 + (m > 0) * 150).astype(np.uint8)
            Image.fromarray(img).save(d / "images" / f"{i:02d}_{split}.png")
            Image.fromarray(m).save(d / "manual" / f"{i:02d}_manual1.gif")
            f = np.zeros((h, w), np.uint8)
            f[1:-1, 1:-1] = 255
            Image.fromarray(f).save(d / "mask" / f"{i:02d}_{split}_mask.png")
    return tmp_path / "seg"


@pytest.fixture
def tiny_voc(tmp_path) -> Path:
    """A VOC folder of 12 images of 48x64 (bright squares 'cell', dimmer bars 'blob'), lists train (8), val, test (2)."""
    root = tmp_path / "voc"
    rng = np.random.default_rng(0)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    ids = []
    h, w = 48, 64
    for i in range(12):
        a = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        objs = ""
        for cls, (bw, bh), val in (("cell", (12, 12), 250), ("blob", (20, 8), 160)):
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            a[y:y + bh, x:x + bw] = val
            objs += (f"<object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>{x}</xmin><ymin>{y}</ymin>"
                     f"<xmax>{x + bw}</xmax><ymax>{y + bh}</ymax></bndbox></object>")
        stem = f"img_{i:03d}"
        Image.fromarray(a).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width><height>{h}</height><depth>3</depth>"
            f"</size>{objs}</annotation>")
        ids.append(stem)
    for split, sel in (("train", ids[:8]), ("val", ids[8:10]), ("test", ids[10:])):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(sel) + "\n")
    return root


@pytest.fixture
def four_tasks(tiny_npz, tiny_landmarks, tiny_segmentation, tiny_voc):
    """task -> dotted settings of a tiny run of it (32-64 px, tiny backbones, scratch): classification, landmarks
    with the refinement stage, segmentation, detection. Add tracking, train.* and the like per test."""
    return {
        "classification": [
            "backbone.name=tiny_resnet", "backbone.in_chans=1", "data.format=npz", f"data.root={tiny_npz.parent}",
            "data.train=tiny.npz#train", "data.val=tiny.npz#val", "data.test=tiny.npz#test", "data.image_size=[32, 32]",
            "task.classification.bootstrap=20", "data.augment.hflip=true"],
        "landmarks": [
            "backbone.name=tiny_alexnet", "backbone.in_chans=1", "data.format=landmark_csv",
            f"data.root={tiny_landmarks}", "data.train=train.csv", "data.test=test.csv", "data.image_dir=images",
            "data.image_size=[64, 48]", "task.name=landmarks", "task.landmarks.head=decoder",
            "task.landmarks.refine=true", "task.landmarks.refine_image_size=[60, 48]", "task.landmarks.refine_crop=32",
            "data.augment.brightness=0.2"],
        "segmentation": [
            "backbone.name=tiny_efficientnet", "backbone.in_chans=1", "task.name=segmentation",
            "data.format=mask_folder", f"data.root={tiny_segmentation}", "data.train=training", "data.test=test",
            "data.image_size=[36, 44]", "task.segmentation.mask_dir=manual", "task.segmentation.fov_dir=mask",
            "task.segmentation.image_pattern=(?P<id>\\d+)_(?P<split>training|test)",
            "task.segmentation.mask_template='{id}_manual1.gif'", "task.segmentation.fov_template='{stem}_mask.png'",
            "task.segmentation.crop_size=32", "task.segmentation.decoder_width=4", "data.augment.hflip=true"],
        "detection": [
            "backbone.name=tiny_resnet", "backbone.in_chans=3", "data.format=voc", f"data.root={tiny_voc}",
            "data.train=ImageSets/Main/train.txt", "data.val=ImageSets/Main/val.txt",
            "data.test=ImageSets/Main/test.txt", "data.image_size=[48, 64]", "task.name=detection",
            "task.detection.classes=[cell, blob]", "task.detection.min_score=0", "task.detection.score_threshold=0",
            "task.detection.max_detections=5", "data.augment.hflip=true"],
    }



@pytest.fixture
def load_script():
    """``load_script("landmark_compare")``: scripts/<name>.py as a module, registered in ``sys.modules`` (as
    ``python scripts/...`` registers ``__main__``) so that a process pool can send its functions to workers."""
    import importlib.util
    import sys

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return load

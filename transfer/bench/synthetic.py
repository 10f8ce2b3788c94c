"""Small synthetic datasets in each task's file format, for checks that must run anywhere (``medtransfer doctor``).

Each writer makes learnable images (a bright structure at the labelled place on noise) in the layout the task reads,
and returns the ``--set`` settings of a run on it. Classification uses the PneumoniaMNIST copy that ships with the
package.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def classification(root: Path, size: int) -> list[str]:
    """PneumoniaMNIST (built in) at ``size`` px."""
    return ["task.name=classification", "data.format=npz", "data.train=builtin:pneumoniamnist#train",
            "data.val=builtin:pneumoniamnist#val", "data.test=builtin:pneumoniamnist#test",
            f"data.image_size=[{size}, {size}]", "backbone.in_chans=1", "task.classification.bootstrap=50",
            "data.label_fraction=0.1"]


def landmarks(root: Path, size: int, n: int = 24) -> list[str]:
    """``n`` gray images of ``size`` px with two bright dots, a landmark CSV; the refinement stage on."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        a = (rng.random((size, size)) * 60).astype(np.uint8)
        pts = [(int(rng.integers(8, size - 8)), int(rng.integers(8, size - 8))) for _ in range(2)]
        for x, y in pts:
            a[y - 2 : y + 3, x - 2 : x + 3] = 255
        Image.fromarray(a).save(root / "images" / f"{i:03d}.png")
        rows.append(f"{i:03d}.png,{pts[0][0]},{pts[0][1]},{pts[1][0]},{pts[1][1]}")
    head = "image_path,1_x,1_y,2_x,2_y\n"
    (root / "train.csv").write_text(head + "\n".join(rows[: n - 6]) + "\n")
    (root / "test.csv").write_text(head + "\n".join(rows[n - 6 :]) + "\n")
    return ["task.name=landmarks", "data.format=landmark_csv", f"data.root={root}", "data.train=train.csv",
            "data.test=test.csv", "data.image_dir=images", f"data.image_size=[{size}, {size}]", "backbone.in_chans=1",
            "task.landmarks.head=decoder", "task.landmarks.refine=true",
            f"task.landmarks.refine_image_size=[{size}, {size}]", "task.landmarks.refine_crop=32"]


def segmentation(root: Path, size: int, n: int = 16) -> list[str]:
    """DRIVE-like folders (images, manual, mask) with a bright cross per image."""
    for split, count, seed in (("training", n, 0), ("test", 4, 1)):
        rng = np.random.default_rng(seed)
        d = root / split
        for sub in ("images", "manual", "mask"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            m = np.zeros((size, size), np.uint8)
            y, x = int(rng.integers(2, size - 30)), int(rng.integers(2, size - 30))
            m[y : y + 28, x : x + 4] = 255
            m[y : y + 4, x : x + 28] = 255
            img = (rng.random((size, size)) * 60 + (m > 0) * 150).astype(np.uint8)
            Image.fromarray(img).save(d / "images" / f"{i:02d}_{split}.png")
            Image.fromarray(m).save(d / "manual" / f"{i:02d}_manual1.gif")
            fov = np.full((size, size), 255, np.uint8)
            Image.fromarray(fov).save(d / "mask" / f"{i:02d}_{split}_mask.png")
    return ["task.name=segmentation", "data.format=mask_folder", f"data.root={root}", "data.train=training",
            "data.test=test", f"data.image_size=[{size}, {size}]", "backbone.in_chans=1",
            "task.segmentation.mask_dir=manual", "task.segmentation.fov_dir=mask",
            "task.segmentation.image_pattern=(?P<id>\\d+)_(?P<split>training|test)",
            "task.segmentation.mask_template='{id}_manual1.gif'", "task.segmentation.fov_template='{stem}_mask.png'",
            f"task.segmentation.crop_size={size}"]


def detection(root: Path, size: int, n: int = 24) -> list[str]:
    """A VOC folder: bright squares ('cell') and dimmer bars ('blob') on noise, train/val/test lists."""
    rng = np.random.default_rng(0)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        a = (rng.random((size, size, 3)) * 60).astype(np.uint8)
        objs = ""
        for cls, (bw, bh), val in (("cell", (size // 6, size // 6), 250), ("blob", (size // 4, size // 10), 160)):
            x, y = int(rng.integers(0, size - bw)), int(rng.integers(0, size - bh))
            a[y : y + bh, x : x + bw] = val
            objs += (f"<object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>{x}</xmin><ymin>{y}</ymin>"
                     f"<xmax>{x + bw}</xmax><ymax>{y + bh}</ymax></bndbox></object>")
        stem = f"img_{i:03d}"
        Image.fromarray(a).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")
        ids.append(stem)
    for split, sel in (("train", ids[: n - 8]), ("val", ids[n - 8 : n - 4]), ("test", ids[n - 4 :])):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(sel) + "\n")
    return ["task.name=detection", "data.format=voc", f"data.root={root}", "data.train=ImageSets/Main/train.txt",
            "data.val=ImageSets/Main/val.txt", "data.test=ImageSets/Main/test.txt",
            f"data.image_size=[{size}, {size}]", "backbone.in_chans=3", "task.detection.classes=[cell, blob]"]


#: task -> writer(root, size) -> settings
WRITERS = {"classification": classification, "landmarks": landmarks, "segmentation": segmentation,
           "detection": detection}

"""Bad input gets a clear error naming the file and row; augmentation moves landmarks with the image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from transfer.data.augment import BatchAugment
from transfer.config import AugmentConfig, Config
from transfer.config.io import load_config
from transfer.errors import DatasetError
from transfer.api import TASKS


def _task(tmp_path, *overrides):
    cfg = load_config(Config, None, [f"data.root={tmp_path}", "data.image_size=[16, 16]", "backbone.in_chans=1",
                                     "tracking.progress=false", *overrides])
    return TASKS.get(cfg.task.name)(cfg)


def _img(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20), value, np.uint8)).save(path)


def test_empty_class_folder(tmp_path):
    _img(tmp_path / "train" / "a" / "1.png")
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(DatasetError, match=r"train/b.*holds no image"):
        _task(tmp_path, "data.format=folder").load_split("train", "train")


def test_folder_classes_load(tmp_path):
    for c in ("normal", "pneumonia"):
        for i in range(3):
            _img(tmp_path / "train" / c / f"{i}.png", 50 if c == "normal" else 200)
    t = _task(tmp_path, "data.format=folder")
    ds = t.load_split("train", "train")
    assert t.info["class_names"] == ["normal", "pneumonia"] and ds.target_array("label").tolist() == [0, 0, 0, 1, 1, 1]


def test_csv_missing_column_and_absent_image(tmp_path):
    (tmp_path / "a.csv").write_text("file,label\nx.png,0\n")
    with pytest.raises(DatasetError, match=r"a.csv: missing column 'path'"):
        _task(tmp_path, "data.format=csv").load_split("a.csv", "train")
    (tmp_path / "b.csv").write_text("path,label\nx.png,0\n")
    with pytest.raises(DatasetError, match=r"b.csv, line 2: image '.*x.png' does not exist"):
        _task(tmp_path, "data.format=csv").load_split("b.csv", "train")


def test_landmark_csv_errors(tmp_path):
    _img(tmp_path / "im" / "1.png")
    cases = {
        "image_path,1_x,1_y,2_x\n1.png,1,2,3\n": "missing column 2_y",
        "image_path,1_x,1_y\n1.png,1,abc\n": r"line 2 \(1.png\): column 1_y has non-numeric",
        "image_path,1_x,1_y\n1.png,1,\n": r"line 2 \(1.png\): column 1_y has non-numeric or missing",
        "image_path,1_x,1_y\n2.png,1,1\n": r"line 2: image '.*2.png' does not exist",
        "image_path,1_x,1_y\n1.png,20,5\n": r"line 2 \(1.png\): landmark 1 at \(20, 5\) lies outside the 20x20 image",
        "name,1_x,1_y\n1.png,1,1\n": "no image column",
    }
    for i, (text, msg) in enumerate(cases.items()):
        (tmp_path / f"l{i}.csv").write_text(text)
        t = _task(tmp_path, "data.format=landmark_csv", "task.name=landmarks", "data.image_dir=im")
        with pytest.raises(DatasetError, match=msg) as e:
            t.load_split(f"l{i}.csv", "train")
        assert f"l{i}.csv" in str(e.value)


def test_landmark_csvs_read_as_one_split(tmp_path):
    """A list of landmark CSVs is one split: every row in order, each CSV's own spacing column (or none), and each
    error names the CSV of the row and its own line."""
    for i in range(1, 5):
        _img(tmp_path / "im" / f"{i}.png")
    (tmp_path / "a.csv").write_text("image_path,1_x,1_y,spacing\n1.png,3,4,0.2\n2.png,5,6,0.2\n")
    (tmp_path / "b.csv").write_text("image_path,1_x,1_y\n3.png,7,8\n4.png,9,10\n")
    t = _task(tmp_path, "data.format=landmark_csv", "task.name=landmarks", "data.image_dir=im",
              "task.landmarks.pixel_spacing=0.1")
    ds = t.load_split(["a.csv", "b.csv"], "train")
    assert ds.ids == ["1.png", "2.png", "3.png", "4.png"]
    assert ds.target_array("spacing")[:, 0].tolist() == pytest.approx([0.2, 0.2, 0.1, 0.1])
    assert (ds.target_array("landmarks")[:, 0] * 20 - 0.5).tolist() == [[3, 4], [5, 6], [7, 8], [9, 10]]
    (tmp_path / "c.csv").write_text("image_path,1_x,1_y\n3.png,1,1\n4.png,30,1\n")
    with pytest.raises(DatasetError, match=r"c.csv, line 3 \(4.png\): landmark 1 at \(30, 1\) lies outside"):
        t.load_split(["a.csv", "c.csv"], "train")
    (tmp_path / "d.csv").write_text("image_path,1_x,1_y\n4.png,1,1\n2.png,1,1\n")
    with pytest.raises(DatasetError, match=r"d.csv, line 3: image 2.png is also listed in .*a.csv"):
        t.load_split(["a.csv", "d.csv"], "train")
    (tmp_path / "e.csv").write_text("image_path,1_x,1_y,2_x,2_y\n4.png,1,1,2,2\n")
    with pytest.raises(DatasetError, match=r"e.csv: 2 landmarks, the training split has 1"):
        t.load_split(["a.csv", "e.csv"], "train")


def test_unreadable_image_skip_is_reported(tmp_path):
    _img(tmp_path / "im" / "1.png")
    (tmp_path / "im" / "2.png").write_bytes(b"garbage")
    (tmp_path / "l.csv").write_text("image_path,1_x,1_y\n1.png,3,4\n2.png,5,6\n")
    t = _task(tmp_path, "data.format=landmark_csv", "task.name=landmarks", "data.image_dir=im", "data.on_bad=skip")
    ds = t.load_split("l.csv", "train")
    assert len(ds) == 1 and len(t.skipped) == 1 and t.skipped[0].path.endswith("2.png")


def test_affine_moves_landmarks_with_the_image():
    torch.manual_seed(0)
    img = torch.zeros(4, 1, 48, 40)
    pts = torch.tensor([[[10.0, 12.0]], [[30.0, 20.0]], [[20.0, 40.0]], [[5.0, 5.0]]])
    for b, (x, y) in enumerate(pts[:, 0].tolist()):
        img[b, 0, int(y), int(x)] = 1.0
    aug = BatchAugment(AugmentConfig(rotation=20, scale=0.1, translate=0.05), landmarks=True)
    out, kp = aug(img, pts.clone())
    checked = 0
    for b in range(4):
        peak = out[b, 0].flatten().argmax()
        py, px = divmod(int(peak), out.shape[-1])
        if out[b, 0].max() > 0.2:  # the bright pixel survived interpolation
            assert abs(px - kp[b, 0, 0]) <= 1.0 and abs(py - kp[b, 0, 1]) <= 1.0
            checked += 1
    assert checked >= 2
    assert not torch.allclose(kp, pts)  # the points did move


def test_hflip_swaps_declared_pairs():
    torch.manual_seed(0)
    img = torch.rand(8, 1, 16, 16)
    pts = torch.tensor([[[2.0, 3.0], [12.0, 3.0], [7.0, 9.0]]]).repeat(8, 1, 1)
    aug = BatchAugment(AugmentConfig(hflip=True), flip_pairs=[(1, 2)], landmarks=True)
    out, kp = aug(img, pts.clone())
    flipped = [b for b in range(8) if torch.equal(out[b], img[b].flip(-1))]
    kept = [b for b in range(8) if torch.equal(out[b], img[b])]
    assert flipped and kept and len(flipped) + len(kept) == 8
    for b in flipped:
        # landmark 1 (left) is now the mirror of the old landmark 2, and the unpaired one just mirrors
        assert kp[b].tolist() == [[15 - 12.0, 3.0], [15 - 2.0, 3.0], [15 - 7.0, 9.0]]
    for b in kept:
        assert torch.equal(kp[b], pts[b])
    with pytest.raises(ValueError, match="flip_pairs"):
        BatchAugment(AugmentConfig(hflip=True), landmarks=True)

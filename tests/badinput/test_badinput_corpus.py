"""The bad-input corpus: every bad or unusual input a user may give, through the CLI, with its expected outcome.

Each row: how the input is made, the command, and the outcome: a one-line error naming the culprit (file, line,
key) and exit status 2, or a run that goes on and counts what it left out (warning line + summary.json). No case
may print a traceback or end in silence.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from transfer.cli import main

# ----------------------------------------------------------------------------- builders

SIZE = 32  #: side of every generated image (px) and of the working size


def png(path: Path, seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    """A random gray PNG (distinct seeds give distinct pixels, so no accidental train/test overlap)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random(size) * 255).astype(np.uint8)).save(path)
    return path


def class_folders(root: Path, classes: tuple[str, ...] = ("a", "b"), n: int = 4, seed: int = 0) -> Path:
    for ci, c in enumerate(classes):
        for i in range(n):
            png(root / c / f"{i}.png", seed * 1000 + ci * 100 + i)
    return root


def class_csv(root: Path, name: str, labels: list[str], seed: int) -> Path:
    """``name`` listing one new image per label (images under ``root/img``)."""
    rows = [f"img/{name}_{i}.png,{lab}" for i, lab in enumerate(labels)]
    for i in range(len(labels)):
        png(root / "img" / f"{name}_{i}.png", seed * 1000 + i)
    (root / name).write_text("path,label\n" + "\n".join(rows) + "\n")
    return root / name


def landmark_rows(root: Path, n: int = 8, seed: int = 0) -> list[str]:
    """``n`` images under ``root/im`` and their CSV rows: image, 2 landmarks inside the image."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        png(root / "im" / f"{seed}_{i}.png", seed * 1000 + i)
        x1, y1, x2, y2 = rng.integers(2, SIZE - 2, 4)
        rows.append(f"{seed}_{i}.png,{x1},{y1},{x2},{y2}")
    return rows


LANDMARK_HEADER = "image_path,1_x,1_y,2_x,2_y"


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def common(tmp: Path) -> list[str]:
    """Tiny and fast: tiny_resnet from scratch, 32 px gray, one step of one epoch, no plots, no W&B."""
    sets = ["backbone.name=tiny_resnet", "init=scratch", "train.epochs=1", "train.max_steps=1",
            "train.batch_size=4", f"data.image_size=[{SIZE}, {SIZE}]", "backbone.in_chans=1",
            "task.classification.bootstrap=10", f"data.root={tmp}", f"tracking.out_dir={tmp / 'runs'}",
            "tracking.wandb_mode=disabled", "tracking.progress=false", "tracking.log_media=false",
            f"data.cache_dir={tmp / 'cache'}"]
    return [a for s in sets for a in ("--set", s)]


def finetune(tmp: Path, *sets: str, name: str = "case") -> list[str]:
    return ["finetune", "--name", name, *common(tmp), *[a for s in sets for a in ("--set", s)]]


@dataclass
class Outcome:
    rc: int
    out: str
    err: str
    tmp: Path

    def summary(self, name: str = "case") -> dict:
        return json.loads((self.tmp / "runs" / name / "summary.json").read_text())

    def trained(self, name: str = "case") -> bool:
        return (self.tmp / "runs" / name / "metrics.jsonl").exists()


@dataclass
class Ctx:
    """What a case builder gets: its own folder, and trained runs shared by the whole corpus."""

    tmp: Path
    shared: dict = field(default_factory=dict)


def run_cli(argv: list[str], capsys, tmp: Path) -> Outcome:
    capsys.readouterr()
    rc = main(argv)
    cap = capsys.readouterr()
    return Outcome(rc, cap.out, cap.err, tmp)


Builder = Callable[[Ctx], list[str]]


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """One classification run (class folders) and one landmark run, trained once for predict/evaluate cases."""
    tmp = tmp_path_factory.mktemp("trained")
    class_folders(tmp / "train")
    write_csv(tmp / "lm.csv", LANDMARK_HEADER, landmark_rows(tmp))
    assert main(finetune(tmp, "data.format=folder", "data.train=train", name="cls")) == 0
    assert main(finetune(tmp, "data.format=landmark_csv", "task.name=landmarks", "data.train=lm.csv",
                         "data.image_dir=im", name="lm")) == 0
    return {"cls": tmp / "runs" / "cls", "lm": tmp / "runs" / "lm", "root": tmp}


LM = ("data.format=landmark_csv", "task.name=landmarks", "data.image_dir=im")


@dataclass
class Case:
    id: str
    build: Builder
    rc: int  #: 2: one-line error; 0: the run goes on
    expect: tuple[str, ...]  #: substrings of the output (the error line when rc == 2)
    check: Callable[[Outcome], None] | None = None


# ----------------------------------------------------------------------------- classification folders and CSVs


def _unsupported_in_class_folder(c: Ctx) -> list[str]:
    class_folders(c.tmp / "train")
    pixels = (np.random.default_rng(99).random((32, 32)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(c.tmp / "train" / "a" / "extra.webp", lossless=True)  # read: PIL reads WebP
    (c.tmp / "train" / "a" / "scan.nii").write_bytes(b"\x00" * 348)
    (c.tmp / "train" / "b" / "notes.txt").write_text("annotator notes")
    (c.tmp / "train" / "b" / ".DS_Store").write_bytes(b"\x00\x01")
    png(c.tmp / "train" / "b" / ".thumbnails" / "0.png", 5)  # a hidden folder's image is not a training image
    (c.tmp / "train" / "README").write_text("class folders")
    return finetune(c.tmp, "data.format=folder", "data.train=train")


def _check_unsupported(o: Outcome) -> None:
    s = o.summary()
    assert s["skipped_counts"] == {"not used": 5}
    assert {Path(x["path"]).relative_to(o.tmp / "train").as_posix(): x["reason"] for x in s["skipped"]} == {
        "a/scan.nii": "unsupported file type '.nii'", "b/notes.txt": "unsupported file type '.txt'",
        "b/.DS_Store": "hidden file", "b/.thumbnails/0.png": "hidden file", "README": "not in a class folder"}
    assert s["n_train"] + s["n_val"] == 9  # 8 PNGs and the WebP


def _single_class(c: Ctx) -> list[str]:
    class_folders(c.tmp / "train", classes=("a",))
    return finetune(c.tmp, "data.format=folder", "data.train=train")


def _class_missing_in_val(c: Ctx) -> list[str]:
    class_csv(c.tmp, "train.csv", ["a", "b"] * 4, seed=1)
    class_csv(c.tmp, "val.csv", ["a", "a", "a"], seed=2)
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv", "data.val=val.csv")


def _class_missing_in_test(c: Ctx) -> list[str]:
    class_csv(c.tmp, "train.csv", ["a", "b"] * 4, seed=1)
    class_csv(c.tmp, "test.csv", ["b", "b"], seed=2)
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv", "data.test=test.csv")


def _label_typo_in_csv(c: Ctx) -> list[str]:
    class_csv(c.tmp, "train.csv", ["normal", "pneumonia"] * 4 + ["pnuemonia"], seed=1)
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv")


def _too_few_to_carve(c: Ctx) -> list[str]:
    class_folders(c.tmp / "train", n=2)
    return finetune(c.tmp, "data.format=folder", "data.train=train")


def _npz(c: Ctx, train_labels: list[int], test_labels: list[int]) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, labels in (("train", train_labels), ("val", train_labels), ("test", test_labels)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (len(labels), 28, 28)).astype(np.uint8)
        arrays[f"{split}_labels"] = np.asarray(labels, np.uint8)[:, None]
    np.savez(c.tmp / "d.npz", **arrays)
    return c.tmp / "d.npz"


def _npz_labels_0_5(c: Ctx) -> list[str]:
    _npz(c, [0, 5] * 4, [0, 5])
    return finetune(c.tmp, "data.format=npz", "data.train=d.npz#train", "data.val=d.npz#val")


def _npz_test_label_unknown(c: Ctx) -> list[str]:
    _npz(c, [0, 1] * 4, [0, 1, 2])
    return finetune(c.tmp, "data.format=npz", "data.train=d.npz#train", "data.val=d.npz#val", "data.test=d.npz#test")


def _empty_csv(c: Ctx) -> list[str]:
    (c.tmp / "train.csv").write_bytes(b"")
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv")


def _header_only_csv(c: Ctx) -> list[str]:
    (c.tmp / "train.csv").write_text("path,label\n")
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv")


def _csv_missing_image(c: Ctx) -> list[str]:
    class_csv(c.tmp, "train.csv", ["a", "b"] * 4, seed=1)
    (c.tmp / "img" / "train.csv_1.png").unlink()
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv")


def _missing_column(c: Ctx) -> list[str]:
    (c.tmp / "train.csv").write_text("file,label\nx.png,a\n")
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv")


def _corrupt(c: Ctx, *sets: str) -> list[str]:
    class_folders(c.tmp / "train")
    (c.tmp / "train" / "b" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return finetune(c.tmp, "data.format=folder", "data.train=train", *sets)


def _tiny(c: Ctx, *sets: str) -> list[str]:
    class_folders(c.tmp / "train")
    png(c.tmp / "train" / "a" / "tiny.png", 7, size=(1, 1))
    return finetune(c.tmp, "data.format=folder", "data.train=train", *sets)


def _test_is_train(c: Ctx) -> list[str]:
    class_folders(c.tmp / "train")
    shutil.copytree(c.tmp / "train", c.tmp / "test")  # the same images under other paths
    return finetune(c.tmp, "data.format=folder", "data.train=train", "data.test=test")


def _check_test_is_train(o: Outcome) -> None:
    s = o.summary()
    assert s["test_overlaps_train"] == s["n_train"] and s["val_overlaps_train"] == 0


def _val_shares_train(c: Ctx) -> list[str]:
    class_csv(c.tmp, "train.csv", ["a", "b"] * 4, seed=1)
    shutil.copy(c.tmp / "train.csv", c.tmp / "val.csv")
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv", "data.val=val.csv")


def _ragged_csv(c: Ctx) -> list[str]:
    class_csv(c.tmp, "train.csv", ["a", "b"] * 4, seed=1)
    with open(c.tmp / "train.csv", "a") as f:
        f.write("img/train.csv_0.png,a,extra\n")
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv")


def _binary_csv(c: Ctx) -> list[str]:
    (c.tmp / "train.csv").write_bytes(b"path,label\n\xff\xfe\x00x.png,a\n")
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv")


def _npz_missing_key(c: Ctx) -> list[str]:
    _npz(c, [0, 1] * 4, [0, 1])
    return finetune(c.tmp, "data.format=npz", "data.train=d.npz#training")


def _unknown_backbone(c: Ctx) -> list[str]:
    class_folders(c.tmp / "train")
    return finetune(c.tmp, "data.format=folder", "data.train=train", "backbone.name=tiny_resnett")


def _unknown_depth(c: Ctx) -> list[str]:
    class_folders(c.tmp / "train")
    return finetune(c.tmp, "data.format=folder", "data.train=train", "train.depth=conv9-head")


def _nothing_written(o: Outcome) -> None:
    assert not (o.tmp / "runs" / "case").exists(), "a config error left a run directory"


def _unknown_key(c: Ctx) -> list[str]:
    return finetune(c.tmp, "data.fromat=csv")


def _bad_window(c: Ctx) -> list[str]:
    return finetune(c.tmp, "data.dicom_window=lungs")


# ----------------------------------------------------------------------------- landmark CSVs


def _lm(c: Ctx, train_rows: list[str], header: str = LANDMARK_HEADER, *sets: str,
        test: tuple[str, list[str]] | None = None) -> list[str]:
    write_csv(c.tmp / "train.csv", header, train_rows)
    extra = []
    if test is not None:
        write_csv(c.tmp / "test.csv", test[0], test[1])
        extra = ["data.test=test.csv"]
    return finetune(c.tmp, *LM, "data.train=train.csv", *extra, *sets)


def _lm_duplicate_row(c: Ctx) -> list[str]:
    rows = landmark_rows(c.tmp)
    return _lm(c, rows + [rows[1]])


def _lm_same_image_other_coords(c: Ctx) -> list[str]:
    rows = landmark_rows(c.tmp)
    name, *xy = rows[2].split(",")
    return _lm(c, rows + [",".join([name, *[str(int(v) + 1) for v in xy]])])


def _lm_extra_coordinate_columns(c: Ctx) -> list[str]:
    rows = [r + ",3,4" for r in landmark_rows(c.tmp)]
    return _lm(c, rows, LANDMARK_HEADER + ",3_X,3_Y")


def _lm_repeated_column(c: Ctx) -> list[str]:
    rows = [r + ",3" for r in landmark_rows(c.tmp)]
    return _lm(c, rows, LANDMARK_HEADER + ",1_x")


def _lm_half_pair(c: Ctx) -> list[str]:
    rows = [r + ",3" for r in landmark_rows(c.tmp)]
    return _lm(c, rows, LANDMARK_HEADER + ",3_x")


def _lm_spacing_text_in_test(c: Ctx) -> list[str]:
    test = [r + ",0.1" for r in landmark_rows(c.tmp, 3, seed=5)]
    test[1] = test[1].rsplit(",", 1)[0] + ",0.1mm"
    return _lm(c, landmark_rows(c.tmp), LANDMARK_HEADER, test=(LANDMARK_HEADER + ",spacing", test))


def _lm_nan(c: Ctx, *sets: str) -> list[str]:
    rows = landmark_rows(c.tmp)
    name, x1, y1, _, _ = rows[3].split(",")
    rows[3] = f"{name},{x1},{y1},,"  # landmark 2 could not be placed
    return _lm(c, rows, LANDMARK_HEADER, *sets, "tracking.log_media=true")


def _check_masked(o: Outcome) -> None:
    s = o.summary()
    assert s["landmarks_masked"] == {"train": 1}
    assert np.isfinite(s["val"]["mre_mm"]) and s["val"]["n_masked"] in (0, 1)


def _lm_outside(c: Ctx) -> list[str]:
    rows = landmark_rows(c.tmp)
    name, _, *rest = rows[2].split(",")
    rows[2] = ",".join([name, "999", *rest])
    return _lm(c, rows)


def _lm_empty_csv(c: Ctx) -> list[str]:
    (c.tmp / "train.csv").write_bytes(b"")
    return finetune(c.tmp, *LM, "data.train=train.csv")


def _lm_text_coordinate(c: Ctx) -> list[str]:
    rows = landmark_rows(c.tmp)
    name, x1, _, x2, y2 = rows[4].split(",")
    rows[4] = f"{name},{x1},abc,{x2},{y2}"
    return _lm(c, rows, LANDMARK_HEADER, "task.landmarks.missing=mask")  # a typo is never "missing"


# ----------------------------------------------------------------------------- predict / evaluate on trained runs


def _predict_folder_unsupported(c: Ctx) -> list[str]:
    folder = c.tmp / "new"
    png(folder / "1.png", 501)
    png(folder / "2.png", 502)
    (folder / "3.nii").write_bytes(b"\x00" * 348)
    (folder / ".DS_Store").write_bytes(b"\x00")
    return ["predict", str(c.shared["cls"]), str(folder), "--out", str(c.tmp / "p.csv")]


def _check_predict_unsupported(o: Outcome) -> None:
    assert len(pd.read_csv(o.tmp / "p.csv")) == 2
    side = pd.read_csv(o.tmp / "p.csv.skipped.csv")
    assert sorted(Path(p).name for p in side["path"]) == [".DS_Store", "3.nii"]


def _predict_tiny(c: Ctx, *flags: str) -> list[str]:
    png(c.tmp / "new" / "ok.png", 503)
    png(c.tmp / "new" / "tiny.png", 504, size=(1, 1))
    return ["predict", str(c.shared["cls"]), str(c.tmp / "new"), "--out", str(c.tmp / "p.csv"), *flags]


def _predict_missing_run(c: Ctx) -> list[str]:
    png(c.tmp / "x.png", 1)
    return ["predict", str(c.tmp / "no_run"), str(c.tmp / "x.png"), "--out", str(c.tmp / "p.csv")]


def _predict_missing_file(c: Ctx) -> list[str]:
    return ["predict", str(c.shared["cls"]), str(c.tmp / "absent.png"), "--out", str(c.tmp / "p.csv")]


def _predict_only_unsupported(c: Ctx) -> list[str]:
    (c.tmp / "new").mkdir()
    (c.tmp / "new" / "scan.nii").write_bytes(b"\x00" * 348)
    return ["predict", str(c.shared["cls"]), str(c.tmp / "new"), "--out", str(c.tmp / "p.csv")]


def _evaluate_empty_csv(c: Ctx) -> list[str]:
    (c.tmp / "e.csv").write_bytes(b"")
    return ["evaluate", str(c.shared["lm"]), "--data", str(c.tmp / "e.csv")]


def _evaluate_one_class(c: Ctx) -> list[str]:
    class_folders(c.tmp / "ev", classes=("a", "b"), n=2, seed=7)
    shutil.rmtree(c.tmp / "ev" / "b")
    (c.tmp / "ev" / "b").mkdir()
    png(c.tmp / "ev" / "b" / "x.png", 9).rename(c.tmp / "ev" / "b" / "x.nii")  # not an image: b holds none
    return ["evaluate", str(c.shared["cls"]), "--data", str(c.tmp / "ev")]


CASES = [
    Case("unsupported files in a class folder (.nii .txt .DS_Store .thumbnails/, a file beside the classes; .webp read)",
         _unsupported_in_class_folder, 0, ("5 files or rows not used", "unsupported file type '.nii'", "2 hidden file"),
         _check_unsupported),
    Case("a single class folder", _single_class, 2, ("train: only one class ['a']",)),
    Case("a class missing from the validation CSV", _class_missing_in_val, 2,
         ("val.csv: the val split has no image of class 'b'", "a=3, b=0")),
    Case("a class missing from the test CSV", _class_missing_in_test, 2,
         ("test.csv: the test split has no image of class 'a'",)),
    Case("a label typo in the training CSV", _label_typo_in_csv, 2, ("train.csv: class 'pnuemonia' has 1 sample",)),
    Case("too few images to carve a stratified validation split", _too_few_to_carve, 2,
         ("train: 0.2 of 4 samples is 1 for validation and 3 for training, fewer than the 2 classes",)),
    Case("npz labels {0, 5}", _npz_labels_0_5, 2, ("d.npz#train: labels [0, 5] are not 0..K-1",)),
    Case("npz test label outside the training classes", _npz_test_label_unknown, 2,
         ("d.npz#test: labels [2] are not training classes 0..1",)),
    Case("an empty (0-byte) CSV", _empty_csv, 2, ("train.csv: CSV is empty",)),
    Case("a header-only CSV", _header_only_csv, 2, ("train.csv: CSV has a header (path, label) but no rows",)),
    Case("a CSV row naming an absent image", _csv_missing_image, 2, ("train.csv, line 3: image", "does not exist")),
    Case("a CSV without its path column", _missing_column, 2, ("train.csv: missing column 'path'",)),
    Case("a corrupt image", _corrupt, 2, ("b/3.png", "PNG")),
    Case("a corrupt image, data.on_bad=skip", lambda c: _corrupt(c, "data.on_bad=skip"), 0,
         ("1 files or rows not used", "1 unreadable", "b/3.png"),
         lambda o: o.summary()["skipped_counts"] == {"unreadable": 1} or pytest.fail("not counted")),
    Case("a 1x1 image", _tiny, 2, ("a/tiny.png: image is 1x1 px, smaller than data.min_image_size=16",)),
    Case("a 1x1 image, data.on_bad=skip", lambda c: _tiny(c, "data.on_bad=skip"), 0, ("1 too small",),
         lambda o: o.summary()["skipped_counts"] == {"too small": 1} or pytest.fail("not counted")),
    Case("a 1x1 image, data.min_image_size=1", lambda c: _tiny(c, "data.min_image_size=1"), 0, ()),
    Case("test images that are training images", _test_is_train, 0,
         ("WARNING: 6 of 8 test images are also training images", "test metrics are not held out"),
         _check_test_is_train),
    Case("a validation CSV equal to the training CSV", _val_shares_train, 0,
         ("WARNING: 8 of 8 val images are also training images",),
         lambda o: o.summary()["val_overlaps_train"] == 8 or pytest.fail("not recorded")),
    Case("a CSV with a ragged row", _ragged_csv, 2, ("train.csv: CSV cannot be parsed", "Expected 2 fields in line 10")),
    Case("a CSV that is not text", _binary_csv, 2, ("train.csv: CSV cannot be parsed (UnicodeDecodeError",)),
    Case("an npz without the named key", _npz_missing_key, 2,
         ("d.npz: missing key 'training_images' and 'training_labels'; keys present:",)),
    Case("an unknown config key", _unknown_key, 2, ("unknown key 'data.fromat'",), _nothing_written),
    Case("an unknown backbone", _unknown_backbone, 2, ("unknown backbone 'tiny_resnett'; registered:",),
         _nothing_written),
    Case("an unknown fine-tuning depth", _unknown_depth, 2, ("unknown fine-tuning depth 'conv9-head'; valid:",),
         _nothing_written),
    Case("an unknown DICOM window preset", _bad_window, 2, ("data.dicom_window: unknown preset 'lungs'",)),
    Case("landmark CSV: a duplicate row", _lm_duplicate_row, 2,
         ("train.csv, lines 3, 10: image 0_1.png is listed 2 times, with the same coordinates",)),
    Case("landmark CSV: one image twice with other coordinates", _lm_same_image_other_coords, 2,
         ("train.csv, lines 4, 10: image 0_2.png is listed 2 times, with different coordinates",)),
    Case("landmark CSV: extra coordinate columns 3_X, 3_Y", _lm_extra_coordinate_columns, 2,
         ("train.csv: column '3_X' looks like a landmark coordinate",)),
    Case("landmark CSV: a repeated column", _lm_repeated_column, 2, ("train.csv: column '1_x' appears more than once",)),
    Case("landmark CSV: 3_x without 3_y", _lm_half_pair, 2, ("train.csv: missing column 3_y",)),
    Case("landmark CSV: text spacing in the test split", _lm_spacing_text_in_test, 2,
         ("test.csv, line 3 (5_1.png): column spacing has '0.1mm'",),
         lambda o: not o.trained() or pytest.fail("trained before the test split was checked")),
    Case("landmark CSV: an empty coordinate (default missing=error)", _lm_nan, 2,
         ("train.csv, line 5 (0_3.png): column 2_x has non-numeric or missing value (empty)", "missing=mask")),
    Case("landmark CSV: an empty coordinate, task.landmarks.missing=mask", lambda c: _lm_nan(
        c, "task.landmarks.missing=mask"), 0, ("1 missing landmarks in 1 images masked",), _check_masked),
    Case("landmark CSV: a text coordinate under missing=mask", _lm_text_coordinate, 2,
         ("train.csv, line 6 (0_4.png): column 1_y has non-numeric or missing value 'abc'",)),
    Case("landmark CSV: a landmark outside its image", _lm_outside, 2,
         ("train.csv, line 4 (0_2.png): landmark 1 at (999,", "lies outside the 32x32 image")),
    Case("landmark CSV: empty (0-byte)", _lm_empty_csv, 2, ("train.csv: landmark CSV is empty",)),
    Case("predict: a folder with .nii and .DS_Store", _predict_folder_unsupported, 0,
         ("2 files or rows not used", "unsupported file type '.nii'", "wrote 2 predictions"),
         _check_predict_unsupported),
    Case("predict: a 1x1 image", _predict_tiny, 2, ("tiny.png: image is 1x1 px",)),
    Case("predict: a 1x1 image, --on-bad skip", lambda c: _predict_tiny(c, "--on-bad", "skip"), 0,
         ("wrote 1 predictions", "1 skipped")),
    Case("predict: a run directory without model.pt", _predict_missing_run, 2, ("no_run: no trained model here",)),
    Case("predict: an image that does not exist", _predict_missing_file, 2, ("absent.png': no such file or folder",)),
    Case("predict: a folder with no image, only a .nii", _predict_only_unsupported, 2,
         ("no image (", "found only other files, e.g.", "scan.nii (unsupported file type '.nii')")),
    Case("evaluate: an empty CSV", _evaluate_empty_csv, 2, ("e.csv: landmark CSV is empty",)),
    Case("evaluate: a class with no image (only a .nii)", _evaluate_one_class, 2,
         ("class folder 'b' holds no image", "x.nii: unsupported file type '.nii'")),
]


# ----------------------------------------------------------------------------- issue 18: configs


def _one_line(o: Outcome) -> None:
    assert len(o.err.strip().splitlines()) == 1, o.err


def _yaml_duplicate_key(c: Ctx) -> list[str]:
    (c.tmp / "cfg.yaml").write_text("train:\n  epochs: 1\n  lr: 0.01\n  epochs: 3\n")
    return ["finetune", str(c.tmp / "cfg.yaml"), *common(c.tmp)[2:]]


def _yaml_syntax_error(c: Ctx) -> list[str]:
    (c.tmp / "cfg.yaml").write_text("train:\n  epochs: [1, 2\n  lr: 0.01\n")
    return ["finetune", str(c.tmp / "cfg.yaml")]


def _set_template(c: Ctx) -> list[str]:
    return ["config", "show", "--set", "task.segmentation.mask_template={stem}.jpg"]


def _set_bare_braces(c: Ctx) -> list[str]:
    return ["config", "show", "--set", "task.segmentation.mask_template={stem}"]


def _pretrain_default_warmup(c: Ctx) -> list[str]:
    return ["pretrain", "--set", "pretrain.epochs=3"]


CASES += [
    Case("a YAML key given twice (train.epochs)", _yaml_duplicate_key, 2,
         ("cfg.yaml', lines 2 and 4: key 'train.epochs' is given twice",), _one_line),
    Case("a YAML syntax error is one line", _yaml_syntax_error, 2,
         ("cfg.yaml', line 3, column 5: not valid YAML: expected ',' or ']'", "flow sequence that starts at line 2"),
         _one_line),
    Case("--set with the README's template form {stem}.jpg", _set_template, 0, ("mask_template: '{stem}.jpg'",)),
    Case("--set with a bare {stem} (a YAML mapping)", _set_bare_braces, 2,
         ("'task.segmentation.mask_template'", "expected a string, got the YAML mapping", "quote the value")),
    Case("pretrain.epochs below the default warm-up", _pretrain_default_warmup, 2,
         ("pretrain.warmup_epochs: must be in [0, pretrain.epochs=3), got 5 (the default)",)),
]


# ----------------------------------------------------------------------------- issue 18: classification CSVs


def _csv_label(c: Ctx, label: str) -> list[str]:
    class_csv(c.tmp, "train.csv", ["a", "b"] * 4, seed=1)
    lines = (c.tmp / "train.csv").read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + "," + label  # line 5 of the file
    (c.tmp / "train.csv").write_text("\n".join(lines) + "\n")
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv")


def _csv_image_two_labels(c: Ctx) -> list[str]:
    class_csv(c.tmp, "train.csv", ["a", "b"] * 4, seed=1)
    with open(c.tmp / "train.csv", "a") as f:
        f.write("img/train.csv_2.png,b\n")  # listed on line 4 as 'a'
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv")


def _csv_repeated_header(c: Ctx) -> list[str]:
    class_csv(c.tmp, "train.csv", ["a", "b"] * 4, seed=1)
    (c.tmp / "more.csv").write_text((c.tmp / "train.csv").read_text())
    (c.tmp / "train.csv").write_text((c.tmp / "train.csv").read_text() + "path,label\n")
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv")


CASES += [
    Case("classification CSV: an empty label", lambda c: _csv_label(c, ""), 2,
         ("train.csv', line 5: the label is empty or missing",)),
    Case("classification CSV: a NaN label", lambda c: _csv_label(c, "NaN"), 2,
         ("train.csv', line 5: the label is empty or missing",)),
    Case("classification CSV: one image with labels a and b", _csv_image_two_labels, 2,
         ("train.csv', lines 4, 10: image 'train.csv_2.png' is listed 2 times, with different labels 'a', 'b'",)),
    Case("classification CSV: a repeated header row", _csv_repeated_header, 2,
         ("train.csv', line 10: repeats the header row (path, label)",)),
]


# ----------------------------------------------------------------------------- issue 18: detection

DET = ("task.name=detection", "task.detection.classes=[cell]", "backbone.in_chans=3", "data.image_size=[64, 64]",
       "task.detection.fpn_channels=8", "task.detection.roi_samples=16")


def _coco(c: Ctx, images: list, annotations: list | None = None) -> Path:
    """``train.json`` over 64x64 PNGs ``im/<file>``; ``images`` as (id, file) pairs; one box per image by default."""
    for n, (_, file) in enumerate(images):
        png(c.tmp / "im" / file, 700 + n, size=(64, 64))
    if annotations is None:
        annotations = [{"id": k + 1, "image_id": i, "category_id": 1, "bbox": [8, 8, 20, 20]}
                       for k, (i, _) in enumerate(images)]
    doc = {"images": [{"id": i, "file_name": f} for i, f in images], "annotations": annotations,
           "categories": [{"id": 1, "name": "cell"}]}
    (c.tmp / "train.json").write_text(json.dumps(doc))
    return c.tmp / "train.json"


def _coco_run(c: Ctx, *sets: str) -> list[str]:
    return finetune(c.tmp, *DET, "data.format=coco", "data.train=train.json", "data.image_dir=im", *sets)


def _coco_image_id_twice(c: Ctx) -> list[str]:
    _coco(c, [(1, "a.png"), (2, "b.png"), (3, "c.png"), (1, "d.png")])
    return _coco_run(c)


def _coco_category_id_twice(c: Ctx) -> list[str]:
    path = _coco(c, [(i, f"{i}.png") for i in range(1, 6)])
    doc = json.loads(path.read_text())
    doc["categories"].append({"id": 1, "name": "blob"})
    path.write_text(json.dumps(doc))
    return _coco_run(c)


def _coco_top_level_list(c: Ctx) -> list[str]:
    (c.tmp / "train.json").write_text(json.dumps([{"id": 1, "file_name": "a.png"}]))
    return _coco_run(c)


def _coco_no_annotations(c: Ctx, *sets: str) -> list[str]:
    _coco(c, [(i, f"{i}.png") for i in range(1, 9)], annotations=[])
    return _coco_run(c, *sets)


def _coco_clipped(c: Ctx) -> list[str]:
    _coco(c, [(i, f"{i}.png") for i in range(1, 9)])
    doc = json.loads((c.tmp / "train.json").read_text())
    doc["annotations"][0]["bbox"] = [50, 50, 30, 30]  # past the 64 px border: clipped to it
    (c.tmp / "train.json").write_text(json.dumps(doc))
    return _coco_run(c)


def _voc_listed_twice(c: Ctx) -> list[str]:
    for i in range(4):
        png(c.tmp / "voc" / "JPEGImages" / f"{i}.png", 800 + i, size=(64, 64))
        (c.tmp / "voc" / "Annotations").mkdir(parents=True, exist_ok=True)
        (c.tmp / "voc" / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.png</filename><object><name>cell</name><bndbox><xmin>5</xmin><ymin>5</ymin>"
            "<xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>")
    (c.tmp / "voc" / "ImageSets" / "Main").mkdir(parents=True)
    (c.tmp / "voc" / "ImageSets" / "Main" / "train.txt").write_text("0\n1\n2\n3\n1\n")
    return finetune(c.tmp, *DET, "data.format=voc", "data.train=voc/ImageSets/Main/train.txt")


CASES += [
    Case("COCO: an image id used twice (for another file)", _coco_image_id_twice, 2,
         ("train.json': images id 1 is used twice, by images[0] (file_name 'a.png') and images[3] "
          "(file_name 'd.png')",)),
    Case("COCO: a category id used twice", _coco_category_id_twice, 2,
         ("train.json': categories id 1 is used twice, by categories[0] (name 'cell') and categories[1]",)),
    Case("COCO: the top level is a list", _coco_top_level_list, 2,
         ("train.json': the top level is a JSON list, not the object of a COCO instances file",)),
    Case("COCO: a training file without a single annotation", _coco_no_annotations, 2,
         ("train.json': the training split has no box (6 images, none annotated)", "task.detection.allow_no_boxes=true"),
         lambda o: not o.trained() or pytest.fail("trained on no box")),
    Case("COCO: no annotation, task.detection.allow_no_boxes=true", lambda c: _coco_no_annotations(
        c, "task.detection.allow_no_boxes=true"), 0, (), lambda o: o.trained() or pytest.fail("not trained")),
    Case("COCO: a box past the border is clipped and said on the console", _coco_clipped, 0,
         ("warning: train: 1 boxes clipped to the image",),
         lambda o: "boxes clipped" in o.err or pytest.fail("not on stderr")),
    Case("VOC: an image listed twice in the split list", _voc_listed_twice, 2,
         ("train.txt', lines 2 and 5: image id '1' is listed twice",)),
]


# ----------------------------------------------------------------------------- issue 18: segmentation


def _seg_no_foreground(c: Ctx, *sets: str) -> list[str]:
    """8 images whose masks are all 0 (no foreground anywhere): ``seg/images/i.png``, ``seg/masks/i.png``."""
    for i in range(8):
        png(c.tmp / "seg" / "images" / f"{i}.png", 900 + i)
        (c.tmp / "seg" / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(c.tmp / "seg" / "masks" / f"{i}.png")
    return finetune(c.tmp, "task.name=segmentation", "data.format=mask_folder", "data.train=seg",
                    "task.segmentation.crop_size=32", "task.segmentation.decoder_width=4", *sets)


def _seg_empty_fov(c: Ctx) -> list[str]:
    """Training masks with a foreground square, field-of-view masks all 1, except one test image whose field of view
    is all 0: it has no pixel to score."""
    for split, n in (("seg", 8), ("segtest", 3)):
        for sub in ("images", "masks", "fov"):
            (c.tmp / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            png(c.tmp / split / "images" / f"{i}.png", 950 + 10 * (split == "segtest") + i)
            m = np.zeros((SIZE, SIZE), np.uint8)
            m[8:20, 10:22] = 255
            Image.fromarray(m).save(c.tmp / split / "masks" / f"{i}.png")
            fov = np.full((SIZE, SIZE), 0 if (split, i) == ("segtest", 1) else 255, np.uint8)
            Image.fromarray(fov).save(c.tmp / split / "fov" / f"{i}.png")
    return finetune(c.tmp, "task.name=segmentation", "data.format=mask_folder", "data.train=seg", "data.test=segtest",
                    "task.segmentation.fov_dir=fov", "task.segmentation.fov_template={stem}.png",
                    "task.segmentation.class_values=[0, 255]",
                    "task.segmentation.crop_size=32", "task.segmentation.decoder_width=4")


def _check_empty_fov(o: Outcome) -> None:
    test = o.summary()["test"]
    assert test["n_unscorable"] == 1 and test["unscorable"] == ["1.png"] and test["n_scored"] + 1 == test["n_images"]


CASES += [
    Case("segmentation: a test image whose field of view is empty", _seg_empty_fov, 0,
         ("left out of the means (no pixel in the field of view): 1.png",), _check_empty_fov),
    Case("segmentation: every training mask empty", _seg_no_foreground, 2,
         ("seg: no foreground in the training split (6 masks of the 8 read, every one empty inside its field of view)",
          "task.segmentation.allow_no_foreground=true"),
         lambda o: (_one_line(o), not o.trained() or pytest.fail("trained on no foreground"))),
    Case("segmentation: every training mask empty, allow_no_foreground=true", lambda c: _seg_no_foreground(
        c, "task.segmentation.allow_no_foreground=true"), 0, (), lambda o: o.trained() or pytest.fail("not trained")),
]


# ----------------------------------------------------------------------------- issue 18: links


def _links_in_class_folder(c: Ctx) -> list[str]:
    class_folders(c.tmp / "train")
    (c.tmp / "train" / "a" / "gone.png").symlink_to(c.tmp / "nowhere.png")  # dangling
    (c.tmp / "train" / "b" / "self.png").symlink_to("self.png")  # refers to itself
    (c.tmp / "train" / "b" / "more").symlink_to(c.tmp / "train" / "a")  # a folder: never followed
    return finetune(c.tmp, "data.format=folder", "data.train=train")


def _check_links(o: Outcome) -> None:
    s = o.summary()
    reasons = {Path(x["path"]).name: x["reason"] for x in s["skipped"]}
    assert reasons == {"gone.png": "broken symbolic link", "self.png": "symbolic link loop",
                       "more": "symbolic link to a folder (not followed)"}, reasons
    assert s["n_train"] + s["n_val"] == 8


def _predict_folder_links(c: Ctx) -> list[str]:
    png(c.tmp / "new" / "1.png", 511)
    (c.tmp / "new" / "gone.png").symlink_to(c.tmp / "nowhere.png")
    (c.tmp / "new" / "self.png").symlink_to("self.png")
    return ["predict", str(c.shared["cls"]), str(c.tmp / "new"), "--out", str(c.tmp / "p.csv")]


def _check_predict_links(o: Outcome) -> None:
    side = pd.read_csv(o.tmp / "p.csv.skipped.csv")
    assert dict(zip((Path(p).name for p in side["path"]), side["reason"])) == {
        "gone.png": "broken symbolic link", "self.png": "symbolic link loop"}


CASES += [
    Case("links in a class folder: dangling, to itself, to a folder", _links_in_class_folder, 0,
         ("3 files or rows not used", "1 broken symbolic link", "1 symbolic link loop",
          "1 symbolic link to a folder (not followed)"), _check_links),
    Case("predict: a folder with a dangling link and a link to itself", _predict_folder_links, 0,
         ("2 files or rows not used", "broken symbolic link", "symbolic link loop", "wrote 1 predictions"),
         _check_predict_links),
]


# ----------------------------------------------------------------------------- issue 18: multi-frame files


def _frames(path: Path, n: int, fmt: str) -> Path:
    rng = np.random.default_rng(n)
    frames = [Image.fromarray((rng.random((SIZE, SIZE)) * 255).astype(np.uint8)) for _ in range(n)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    return path


def _multi_frame(c: Ctx, suffix: str, fmt: str, *sets: str) -> list[str]:
    class_folders(c.tmp / "train")
    _frames(c.tmp / "train" / "a" / f"stack{suffix}", 3, fmt)
    return finetune(c.tmp, "data.format=folder", "data.train=train", *sets)


CASES += [
    Case("a 3-page TIFF in a class folder", lambda c: _multi_frame(c, ".tif", "TIFF"), 2,
         ("a/stack.tif: TIFF file has 3 frames; medtransfer reads single-frame images only",)),
    Case("a 3-frame GIF in a class folder", lambda c: _multi_frame(c, ".gif", "GIF"), 2,
         ("a/stack.gif: GIF file has 3 frames",)),
    Case("a 3-frame GIF, data.on_bad=skip", lambda c: _multi_frame(c, ".gif", "GIF", "data.on_bad=skip"), 0,
         ("1 unreadable", "GIF file has 3 frames"),
         lambda o: o.summary()["skipped_counts"] == {"unreadable": 1} or pytest.fail("not counted")),
]


# ----------------------------------------------------------------------------- issue 18: outputs and trained models


def _truncated_model(c: Ctx) -> Path:
    run = c.tmp / "run"
    shutil.copytree(c.shared["cls"], run)
    data = (run / "model.pt").read_bytes()
    (run / "model.pt").write_bytes(data[: len(data) // 2])  # a copy cut short
    return run


def _predict_truncated_model(c: Ctx) -> list[str]:
    png(c.tmp / "x.png", 521)
    return ["predict", str(_truncated_model(c)), str(c.tmp / "x.png"), "--out", str(c.tmp / "p.csv")]


def _evaluate_truncated_model(c: Ctx) -> list[str]:
    class_folders(c.tmp / "ev", n=2, seed=9)
    return ["evaluate", str(_truncated_model(c)), "--data", str(c.tmp / "ev")]


def _predict_out_is_folder(c: Ctx) -> list[str]:
    png(c.tmp / "x.png", 522)
    (c.tmp / "results").mkdir()
    return ["predict", str(c.shared["cls"]), str(c.tmp / "x.png"), "--out", str(c.tmp / "results")]


CASES += [
    Case("predict: a truncated model.pt", _predict_truncated_model, 2,
         ("run/model.pt': the trained model cannot be read, it is truncated or corrupt",)),
    Case("evaluate: a truncated model.pt", _evaluate_truncated_model, 2,
         ("run/model.pt': the trained model cannot be read, it is truncated or corrupt",)),
    Case("predict: --out naming an existing folder", _predict_out_is_folder, 2,
         ("results': --out names a folder; name a file, e.g.", "results/predictions.csv'")),
]


def test_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    """ENOSPC while saving the resume state, then torch's zip writer failing on top of it (as on a real full
    disk): one line naming the folder and the cause, and failed.json keeps the cause, not torch's error."""
    class_folders(tmp_path / "train")

    def full_disk(obj, f, *args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4800 vs 4771")

    monkeypatch.setattr(torch, "save", full_disk)
    o = run_cli(finetune(tmp_path, "data.format=folder", "data.train=train"), capsys, tmp_path)
    assert o.rc == 2 and "Traceback" not in o.out + o.err
    run = tmp_path / "runs" / "case"
    assert o.err.strip().splitlines() == [f"medtransfer: error: '{run}': cannot write last.pt (no space left on the "
                                          "device, errno 28)"]
    failed = json.loads((run / "failed.json").read_text())
    assert "no space left" in failed["error"] and "unexpected pos" not in failed["error"]


def test_read_only_out_dir_is_one_line(tmp_path, capsys, monkeypatch):
    """tracking.out_dir on a read-only filesystem (EROFS; simulated: chmod does not stop root)."""
    class_folders(tmp_path / "train")
    runs, real_mkdir = tmp_path / "runs", Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == runs or runs in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    o = run_cli(finetune(tmp_path, "data.format=folder", "data.train=train"), capsys, tmp_path)
    assert o.rc == 2 and "Traceback" not in o.out + o.err
    (line,) = o.err.strip().splitlines()
    assert line.startswith(f"medtransfer: error: '{runs / 'case'}': cannot write ") and line.endswith(
        "(read-only file system, errno 30)"), line


def test_predict_out_on_full_disk_is_one_line(tmp_path, capsys, monkeypatch, trained_runs):
    png(tmp_path / "x.png", 523)
    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst).endswith("p.csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    o = run_cli(["predict", str(trained_runs["cls"]), str(tmp_path / "x.png"), "--out", str(tmp_path / "p.csv")],
                capsys, tmp_path)
    assert o.rc == 2 and o.err.strip().splitlines() == [
        f"medtransfer: error: '{tmp_path}': cannot write p.csv (no space left on the device, errno 28)"]


# ----------------------------------------------------------------------------- issue 18: how values are shown


def _csv_trailing_space(c: Ctx) -> list[str]:
    class_csv(c.tmp, "train.csv", ["a", "b"] * 4, seed=1)
    text = (c.tmp / "train.csv").read_text().replace("img/train.csv_3.png,b", "img/train.csv_3.png ,b")
    (c.tmp / "train.csv").write_text(text)
    return finetune(c.tmp, "data.format=csv", "data.train=train.csv")


def _lm_spacing_zero(c: Ctx) -> list[str]:
    rows = [r + ",0.1" for r in landmark_rows(c.tmp)]
    rows[2] = rows[2].rsplit(",", 1)[0] + ",0"
    return _lm(c, rows, LANDMARK_HEADER + ",spacing")


CASES += [
    Case("a CSV path with a trailing space (quoted in the message)", _csv_trailing_space, 2,
         ("train.csv, line 5: image '", "train.csv_3.png ' does not exist")),
    Case("landmark CSV: spacing 0 (shown as 0.0, not np.float64(0.0))", _lm_spacing_zero, 2,
         ("train.csv, line 4 (0_2.png): column spacing has 0.0, not a positive number of mm per pixel",),
         lambda o: "np." not in o.err or pytest.fail(o.err)),
]


# ----------------------------------------------------------------------------- the corpus


def _command(argv: list[str]) -> str:
    """The command and its telling options, for the table in the closing note."""
    keep = [a for a in argv[1:] if a.startswith(("data.on_bad", "data.min", "task.landmarks.missing", "--on-bad"))]
    return " ".join([argv[0], *keep])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, trained_runs, capsys):
    argv = case.build(Ctx(tmp_path, trained_runs))
    o = run_cli(argv, capsys, tmp_path)
    text = o.out + o.err
    assert "Traceback" not in text
    assert o.rc == case.rc, f"{_command(argv)}: exit {o.rc}\n{text}"
    if case.rc == 2:
        lines = o.err.strip().splitlines()
        assert lines and lines[-1].startswith("medtransfer: error: "), o.err
        where = lines[-1]
    else:
        where = text
    for piece in case.expect:
        assert piece in where, f"{piece!r} not in:\n{where}"
    if case.check is not None:
        case.check(o)

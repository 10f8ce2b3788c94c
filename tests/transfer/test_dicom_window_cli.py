"""data.dicom_window reaches the reader and the decode cache's key, is recorded with the run, and fine-tunes via the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from transfer.cli import main
from transfer.data.cache import DecodeCache

pydicom = pytest.importorskip("pydicom")


def write_ct(path: Path, hu: np.ndarray) -> Path:
    """A minimal CT slice: int16 stored values, rescale intercept -1024 (stored = HU + 1024), no window in the file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _hu(seed: int, shift: float) -> np.ndarray:
    return (np.random.default_rng(seed).uniform(-1000, 1000, (32, 32)) + shift).round()


def _linear(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def test_window_reaches_the_pixels_and_the_cache_key(tmp_path):
    hu = _hu(0, 0)
    p = write_ct(tmp_path / "ct.dcm", hu)
    cache = DecodeCache(tmp_path / "c")
    lung = cache.get(p, (32, 32), window=(-600, 1500)).array[0]
    bone = cache.get(p, (32, 32), window=(400, 1800)).array[0]
    np.testing.assert_allclose(lung, _linear(hu, -600, 1500), atol=2e-5)  # uint16 cache quantisation
    np.testing.assert_allclose(bone, _linear(hu, 400, 1800), atol=2e-5)
    names = sorted(e.name for e in (tmp_path / "c").rglob("*.npz"))
    assert len(names) == 2 and any("-w-600_1500-" in n for n in names) and any("-w400_1800-" in n for n in names)
    # a second read of each window is a hit on its own entry, not the other window's pixels
    assert np.array_equal(DecodeCache(tmp_path / "c").get(p, (32, 32), window=(-600, 1500)).array[0], lung)


def test_dicom_finetune_with_a_window_preset(tmp_path, capsys):
    for c, shift in (("a", -300), ("b", 300)):
        for i in range(4):
            write_ct(tmp_path / "train" / c / f"{i}.dcm", _hu(10 * (c == "b") + i, shift))
    sets = ["backbone.name=tiny_resnet", "init=scratch", "train.epochs=1", "train.max_steps=1", "train.batch_size=4",
            "data.image_size=[32, 32]", "backbone.in_chans=1", "task.classification.bootstrap=10",
            f"data.root={tmp_path}", "data.format=folder", "data.train=train", f"tracking.out_dir={tmp_path / 'runs'}",
            "tracking.wandb_mode=disabled", "tracking.progress=false", "tracking.log_media=false",
            "data.dicom_window=lung"]
    assert main(["finetune", "--name", "dcm", *[a for s in sets for a in ("--set", s)]]) == 0
    run = tmp_path / "runs" / "dcm"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["dicom_window"] == "lung"
    assert json.loads((run / "summary.json").read_text())["n_train"] == 6
    entries = list((tmp_path / "cache").rglob("*.npz"))  # MEDTRANSFER_CACHE of the test (conftest)
    assert len(entries) == 8 and all("-w-600_1500-" in e.name for e in entries)
    # predict reads the window from the run: the same cache entries, nothing decoded again
    assert main(["predict", str(run), str(tmp_path / "train" / "a"), "--out", str(tmp_path / "p.csv")]) == 0
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 8

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

"""predict's coordinates are in the original image's pixels, checked against positions known independently.

Each synthetic image (different sizes and aspect ratios) is black with one bright square at a chosen place. The
trained model is replaced by an oracle that answers, on the decoded working-size image, the intensity centroid in
normalised coordinates (pixel centres at (i + 0.5) / size). What predict writes must then be the square's centre in
the original file's pixels: the whole chain (decode, resize, normalised output, back to the file's pixels, the CSV)
is tested against the place the square was drawn, not against the same code path.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import transfer.runs.predict as predict_mod
from transfer.cli import main

#: (H, W) of the files, and the centre (x, y) of the bright square, in file pixels
CASES = [((60, 48), (20.0, 31.0)), ((200, 100), (70.0, 150.0)), ((90, 300), (233.0, 40.0)),
         ((64, 48), (11.0, 50.0)), ((257, 511), (100.0, 200.0))]


class CentroidOracle(nn.Module):
    """Every landmark at the intensity centroid of the image: (B, C, H, W) -> coords (B, L, 2) normalised (u, v)."""

    def __init__(self, landmarks: int) -> None:
        super().__init__()
        self.landmarks = landmarks
        self.dummy = nn.Parameter(torch.zeros(()))  # a device to move to

    def forward_all(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        w = images.float().mean(1)  # (B, H, W), black background: only the square weighs
        h_, w_ = w.shape[-2:]
        ys = (torch.arange(h_, dtype=torch.float32) + 0.5) / h_
        xs = (torch.arange(w_, dtype=torch.float32) + 0.5) / w_
        total = w.sum((1, 2))
        u = (w.sum(1) * xs).sum(1) / total
        v = (w.sum(2) * ys).sum(1) / total
        coords = torch.stack([u, v], -1)[:, None, :].expand(-1, self.landmarks, -1)
        return {"coords": coords}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_all(images)["coords"]


def _square(path, size_hw, centre_xy, half=3):
    a = np.zeros(size_hw, np.uint8)
    x, y = (int(round(c)) for c in centre_xy)
    a[y - half: y + half + 1, x - half: x + half + 1] = 255  # centre of pixel x is x in file-pixel coordinates
    Image.fromarray(a).save(path)


@pytest.fixture
def lm_run(tmp_path, tiny_landmarks):
    args = ["finetune", "--name", "lm", "--set", "backbone.name=tiny_efficientnet", "--set", "init=scratch",
            "--set", "backbone.in_chans=1", "--set", "task.name=landmarks", "--set", "data.format=landmark_csv",
            "--set", f"data.root={tiny_landmarks}", "--set", "data.train=train.csv", "--set", "data.image_dir=images",
            "--set", "data.image_size=[64, 48]", "--set", "train.epochs=1", "--set", "train.max_steps=1",
            "--set", "train.batch_size=4", "--set", f"tracking.out_dir={tmp_path / 'runs'}",
            "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false",
            "--set", "tracking.log_media=false"]
    assert main(args) == 0
    return tmp_path / "runs" / "lm"


def test_predict_writes_the_square_centre_in_file_pixels(tmp_path, lm_run, monkeypatch):
    real = predict_mod.load_model

    def with_oracle(*args, **kwargs):
        cfg, task, model = real(*args, **kwargs)
        return cfg, task, CentroidOracle(len(task.info["landmark_names"]))

    monkeypatch.setattr(predict_mod, "load_model", with_oracle)
    files = []
    for i, (size, centre) in enumerate(CASES):
        files.append(tmp_path / f"sq{i}.png")
        _square(files[-1], size, centre)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(lm_run), *map(str, files), "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    assert list(pred["image"]) == [f.name for f in files]
    for (size, (x, y)), (_, row) in zip(CASES, pred.iterrows()):
        # the working size is 64 x 48: one working pixel is this many file pixels; the centroid of a resized
        # square is exact up to interpolation at the edges, so a fraction of a working pixel is allowed, which
        # still catches a half-pixel shift, swapped axes or a scale by the wrong side
        tol_x, tol_y = 0.15 * max(1.0, size[1] / 48), 0.15 * max(1.0, size[0] / 64)
        for k in (1, 2):
            assert abs(row[f"{k}_x"] - x) < tol_x, (size, k, row[f"{k}_x"], x)
            assert abs(row[f"{k}_y"] - y) < tol_y, (size, k, row[f"{k}_y"], y)

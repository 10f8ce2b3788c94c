"""``medtransfer cv`` on the tiny landmark set in 3 folds: one resumable run per fold, each testing on its own fold;
the report's per-fold rows, mean and SD over folds, and the pooled metrics of all test folds."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from transfer.cli import main
from transfer.data.folds import make_folds


def _args(tiny_landmarks, tmp_path, *extra: str) -> list[str]:
    folds = tiny_landmarks / "folds.csv"
    if not folds.is_file():
        make_folds([f"{i:03d}.png" for i in range(12)], 3, seed=0).to_csv(folds, index=False)
    settings = ["backbone.name=tiny_alexnet", "backbone.in_chans=1", "init=scratch", "data.format=landmark_csv",
                f"data.root={tiny_landmarks}", "data.train=[train.csv, test.csv]", "data.image_dir=images",
                f"data.folds={folds}", "data.fold=0", "data.val_fraction=0.25", "data.image_size=[64, 48]", "task.name=landmarks",
                "task.landmarks.head=decoder", "train.epochs=1", "train.max_steps=1", "train.batch_size=4",
                "tracking.wandb_mode=disabled", "tracking.progress=false", f"tracking.out_dir={tmp_path / 'runs'}",
                "runtime.device=cpu"]
    return ["cv", "--name", "tiny", *[x for s in settings for x in ("--set", s)], *extra]


def test_cv_runs_every_fold_on_its_own_test_fold_and_pools_them(tiny_landmarks, tmp_path, capsys):
    report = tmp_path / "reports" / "cv.md"
    assert main(_args(tiny_landmarks, tmp_path, "--report", str(report))) == 0
    res = json.loads((tmp_path / "runs" / "tiny-cv.json").read_text())
    assert res["k"] == 3 and res["pending"] == [] and [r["fold"] for r in res["folds"]] == [0, 1, 2]
    folds = pd.read_csv(tiny_landmarks / "folds.csv").set_index("image")["fold"]
    preds = []
    for k in range(3):
        pred = pd.read_csv(tmp_path / "runs" / f"tiny-fold{k}" / "predictions_test.csv")
        assert set(pred["image"]) == set(folds[folds == k].index)  # fold k is run k's test split
        preds.append(pred)
    # over folds: the mean and sample SD of the three runs' own test MRE
    mre = [json.loads((tmp_path / "runs" / f"tiny-fold{k}" / "summary.json").read_text())["test"]["mre_mm"]
           for k in range(3)]
    assert res["over_folds"]["mre_mm"]["mean"] == pytest.approx(np.mean(mre))
    assert res["over_folds"]["mre_mm"]["sd"] == pytest.approx(np.std(mre, ddof=1))
    # pooled: all 12 images once, every landmark error of every fold's test split
    errors = pd.concat(preds)[["1_err_mm", "2_err_mm"]].to_numpy()
    assert res["pooled_images"] == 12 and res["pooled"]["n_images"] == 12
    assert res["pooled"]["mre_mm"] == pytest.approx(errors.mean())
    assert res["pooled"]["over"]["10.0"] == pytest.approx(100 * (errors > 10).mean())
    text = report.read_text()
    assert "## Each fold's test split" in text and "## Over folds" in text and "## All folds' test images pooled" in text
    assert "Per-landmark gross failures" in text and "medtransfer cv --set backbone.name=tiny_alexnet" in text and "--folds" not in text
    # a rerun reads every fold back; training nothing
    before = [(tmp_path / "runs" / f"tiny-fold{k}" / "model.pt").stat().st_mtime_ns for k in range(3)]
    assert main(_args(tiny_landmarks, tmp_path)) == 0
    assert before == [(tmp_path / "runs" / f"tiny-fold{k}" / "model.pt").stat().st_mtime_ns for k in range(3)]


def test_cv_in_pieces_reports_the_finished_folds_and_names_the_rest(tiny_landmarks, tmp_path, capsys):
    assert main(_args(tiny_landmarks, tmp_path, "--folds", "1")) == 0
    assert not (tmp_path / "runs" / "tiny-fold0").exists()
    res = json.loads((tmp_path / "runs" / "tiny-cv.json").read_text())
    assert res["pending"] == [0, 2] and [r["fold"] for r in res["folds"]] == [1]
    assert "**Not finished yet**" in (tmp_path / "runs" / "tiny-cv.md").read_text()
    assert main(_args(tiny_landmarks, tmp_path, "--report-only")) == 0 and not (tmp_path / "runs" / "tiny-fold0").exists()
    capsys.readouterr()
    assert main(_args(tiny_landmarks, tmp_path, "--folds", "3")) == 2
    err = capsys.readouterr().err
    assert "--folds [3]" in err and "folds 0..2" in err and "Traceback" not in err
    # a fold trained under another config is refused, naming the changed key, not mixed into the report
    assert main(_args(tiny_landmarks, tmp_path, "--report-only", "--set", "train.lr=0.5")) == 2
    assert "train.lr" in capsys.readouterr().err

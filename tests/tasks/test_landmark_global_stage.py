"""The global landmark stage end to end: stride-4 decoder heatmaps, local soft-argmax, confidence in predict."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from transfer.cli import main


def test_decoder_head_finetunes_and_predicts_with_confidence(tmp_path, tiny_landmarks, capsys):
    runs = tmp_path / "runs"
    args = ["finetune", "--name", "global", "--set", "backbone.name=tiny_efficientnet", "--set", "init=scratch",
            "--set", "backbone.in_chans=1", "--set", "train.epochs=2", "--set", "train.max_steps=2",
            "--set", "train.batch_size=4", "--set", f"tracking.out_dir={runs}", "--set", "tracking.wandb_mode=disabled",
            "--set", "tracking.progress=false", "--set", "data.format=landmark_csv",
            "--set", f"data.root={tiny_landmarks}", "--set", "data.train=train.csv", "--set", "data.test=test.csv",
            "--set", "data.image_dir=images", "--set", "data.image_size=[64, 48]", "--set", "task.name=landmarks",
            "--set", "task.landmarks.head=decoder", "--set", "task.landmarks.heatmap_weight=1.0",
            "--set", "task.landmarks.sigma_mm=0.5", "--set", "train.optimizer=adamw"]
    assert main(args) == 0
    run = runs / "global"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["mre_mm"] > 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_heatmap"]) and r["train_heatmap"] > 0 for r in rows)  # the heatmap term trained
    test_imgs = [tiny_landmarks / "images" / f"{i:03d}.png" for i in (9, 10, 11)]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), *map(str, test_imgs), "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    for col in ("1_x", "2_y", "1_confidence", "2_confidence", "mean_confidence", "flipped_confidence", "flag"):
        assert col in pred.columns, col
    conf = pred[["1_confidence", "2_confidence"]].to_numpy()
    assert ((conf > 0) & (conf <= 1)).all()
    test_pred = pd.read_csv(run / "predictions_test.csv")
    cols = ["1_x", "1_y", "2_x", "2_y"]
    assert np.allclose(pred[cols].to_numpy(), test_pred[cols].to_numpy(), atol=1e-3)

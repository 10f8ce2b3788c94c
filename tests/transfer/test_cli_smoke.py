"""2-step smoke runs of every CLI command on tiny backbones and synthetic data."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from transfer.cli import main


def _common(tmp_path, backbone="tiny_resnet"):
    return ["--set", f"backbone.name={backbone}", "--set", "init=scratch", "--set", "train.epochs=2",
            "--set", "train.max_steps=2", "--set", "train.batch_size=4", "--set", f"tracking.out_dir={tmp_path / 'runs'}",
            "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false",
            "--set", "task.classification.bootstrap=20"]


def test_backbones_and_config_show(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "conv1" in out and "blocks6" in out
    lite = [line for line in out.splitlines() if line.startswith("efficientnet_lite0 ")][0]
    assert " no " in lite  # imagenet weights on disk: no download
    assert main(["config", "show", "--set", "train.depth=conv3-head"]) == 0
    assert "depth: conv3-head" in capsys.readouterr().out


def test_config_error_is_one_line(capsys, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trian: {}\n")
    assert main(["config", "show", str(p)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'trian'" in err and str(p) in err and "Traceback" not in err


def test_classification_finetune_evaluate_predict(tmp_path, tiny_npz, capsys):
    args = ["finetune", "--name", "cls", *_common(tmp_path), "--set", "data.format=npz",
            "--set", f"data.root={tiny_npz.parent}", "--set", "data.train=tiny.npz#train",
            "--set", "data.val=tiny.npz#val", "--set", "data.test=tiny.npz#test",
            "--set", "data.image_size=[32, 32]", "--set", "backbone.in_chans=1", "--set", "train.depth=layer3-head",
            "--set", "task.classification.class_weights=balanced"]
    assert main(args) == 0
    run = tmp_path / "runs" / "cls"
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "model.pt", "predictions_val.csv",
              "predictions_test.csv", "test_roc.png"):
        assert (run / f).exists(), f
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(r["steps"] == 2 for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trainable_stages"] == ["layer3", "layer4"]
    assert 0 <= summary["test"]["roc_auc"] <= 1 and summary["n_test"] == 12
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", "tiny.npz#test", "--out", str(tmp_path / "ev.csv")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["roc_auc"] == pytest.approx(summary["test"]["roc_auc"])


def test_landmark_finetune_predict_then_evaluate(tmp_path, tiny_landmarks, capsys):
    args = ["finetune", "--name", "lm", *_common(tmp_path, "tiny_efficientnet"), "--set", "data.format=landmark_csv",
            "--set", f"data.root={tiny_landmarks}", "--set", "data.train=train.csv", "--set", "data.test=test.csv",
            "--set", "data.image_dir=images", "--set", "data.image_size=[64, 48]", "--set", "task.name=landmarks",
            "--set", "backbone.in_chans=1", "--set", "data.augment.rotation=5", "--set", "train.optimizer=adamw"]
    assert main(args) == 0
    run = tmp_path / "runs" / "lm"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["mre_mm"] > 0 and set(summary["test"]["sdr"]) == {"2.0", "2.5", "3.0", "4.0"}
    assert (run / "test_overlay_worst.png").exists()
    test_imgs = [tiny_landmarks / "images" / f"{i:03d}.png" for i in (9, 10, 11)]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), *map(str, test_imgs), "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    assert list(pred.columns)[:2] == ["image", "path"] and {"1_x", "1_y", "2_x", "2_y"} <= set(pred.columns)
    assert pred["1_confidence"].isna().all()  # the regression head has no heatmap to be confident about
    assert len(pred) == 3
    assert list(pred["path"]) == list(map(str, test_imgs))  # as given on the command line
    test_pred = pd.read_csv(run / "predictions_test.csv")
    # one naming in every output: predict's rows join the run's test predictions on the file name
    assert list(pred["image"]) == list(test_pred["image"]) == ["009.png", "010.png", "011.png"]
    # predictions are in original pixels and agree with the run's own test predictions
    assert np.allclose(pred[["1_x", "1_y", "2_x", "2_y"]].to_numpy(), test_pred[["1_x", "1_y", "2_x", "2_y"]].to_numpy(),
                       atol=1e-3)
    assert "mirror_fixed" in pred.columns
    # predict changes how the task predicts (task.* options), never what the model was trained with
    assert main(["predict", str(run), *map(str, test_imgs), "--out", str(out),
                 "--set", "task.landmarks.fix_mirrored=false"]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), *map(str, test_imgs), "--out", str(out), "--set", "data.image_size=[32, 32]"]) != 0
    err = capsys.readouterr().err
    assert "only task.* options can change after training" in err and "Traceback" not in err
    assert main(["evaluate", str(run), "--data", "test.csv", "--out", str(tmp_path / "ev.csv")]) == 0
    assert list(pd.read_csv(tmp_path / "ev.csv")["image"]) == list(pred["image"])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["mre_mm"] == pytest.approx(summary["test"]["mre_mm"], rel=1e-5)
    # the run's own carved validation split, rebuilt from its config and seed: the summary's validation score
    assert main(["evaluate", str(run), "--split", "val", "--out", str(tmp_path / "val.csv")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["mre_mm"] == pytest.approx(summary["val"]["mre_mm"], rel=1e-5)
    assert list(pd.read_csv(tmp_path / "val.csv")["image"]) == list(pd.read_csv(run / "predictions_val.csv")["image"])
    for bad, why in ((["--split", "val", "--data", "test.csv"], "either --data"), ([], "either --data"),
                     (["--split", "val", "--set", "train.lr=0.1"], "only task.* options")):
        assert main(["evaluate", str(run), *bad]) == 2
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err


def test_auto_depth_records_curve(tmp_path, tiny_npz):
    args = ["finetune", "--name", "auto", *_common(tmp_path, "tiny_alexnet"), "--set", "data.format=npz",
            "--set", f"data.root={tiny_npz.parent}", "--set", "data.train=tiny.npz#train",
            "--set", "data.val=tiny.npz#val", "--set", "data.image_size=[32, 32]", "--set", "backbone.in_chans=1",
            "--set", "train.depth=auto", "--set", "train.auto_epochs=1", "--set", "train.auto_tolerance=-1"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "runs" / "auto" / "summary.json").read_text())
    depths = [r["depth"] for r in summary["depth_curve"]]
    # tolerance -1 always continues: every depth from head down to conv1-head is tried, in order
    assert depths == ["head", "fc7-head", "fc6-head", "conv5-head", "conv4-head", "conv3-head", "conv2-head", "conv1-head"]
    assert summary["selected_depth"] in depths


def test_bad_landmark_csv_names_file_and_line(tmp_path, tiny_landmarks, capsys):
    csv = tiny_landmarks / "train.csv"
    lines = csv.read_text().splitlines()
    parts = lines[3].split(",")
    parts[1] = "999"
    lines[3] = ",".join(parts)
    csv.write_text("\n".join(lines) + "\n")
    args = ["finetune", *_common(tmp_path), "--set", "data.format=landmark_csv", "--set", f"data.root={tiny_landmarks}",
            "--set", "data.train=train.csv", "--set", "data.image_dir=images", "--set", "data.image_size=[32, 32]",
            "--set", "task.name=landmarks", "--set", "backbone.in_chans=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train.csv, line 4" in err and "landmark 1" in err and "outside" in err


def test_bench_commands(tmp_path, tiny_npz, tiny_landmarks, capsys):
    assert main(["bench", "data", "--image-dir", str(tiny_landmarks / "images"), "--size", "32", "32",
                 "--cache-dir", str(tmp_path / "bc")]) == 0
    out = capsys.readouterr().out
    assert '"n": 12' in out and "warm" in out
    assert main(["bench", "finetune", *_common(tmp_path)[:-2], "--set", "data.format=npz",
                 "--set", f"data.root={tiny_npz.parent}", "--set", "data.train=tiny.npz#train",
                 "--set", "data.val=tiny.npz#val", "--set", "data.image_size=[32, 32]", "--set", "backbone.in_chans=1",
                 "--steps", "3", "--warmup", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["engine_images_per_s"] > 0 and res["bare_images_per_s"] > 0
    assert 0 <= res["data_wait_share"] < 1

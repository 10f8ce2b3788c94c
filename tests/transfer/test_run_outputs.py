"""What a run directory and predict's outputs say is what happened: config errors before anything is written, a
failed start marked, the stages that really trained, skipped inputs in a file."""
from __future__ import annotations

import json

import pandas as pd
import torch
from torch.utils.data import DataLoader

from transfer.cli import main
from transfer.runs.model_io import load_model


def _lm(tmp_path, root, name: str, *extra: str) -> list[str]:
    return ["finetune", "--name", name, "--set", "backbone.name=tiny_efficientnet", "--set", "init=scratch",
            "--set", "backbone.in_chans=1", "--set", "task.name=landmarks", "--set", "data.format=landmark_csv",
            "--set", f"data.root={root}", "--set", "data.train=train.csv", "--set", "data.image_dir=images",
            "--set", "data.image_size=[64, 48]", "--set", "train.epochs=1", "--set", "train.max_steps=2",
            "--set", "train.batch_size=4", "--set", f"tracking.out_dir={tmp_path / 'runs'}",
            "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false",
            "--set", "tracking.log_media=false", *extra]


def test_config_errors_come_before_data_and_leave_no_directory(tmp_path, capsys):
    # data.train names no file: had the data been read first, that would be the error
    for bad, said in (("train.depth=layer9-head", "unknown fine-tuning depth 'layer9-head'"),
                      ("backbone.name=resnet_nope", "unknown backbone 'resnet_nope'")):
        args = _lm(tmp_path, tmp_path / "absent", "bad", "--set", bad)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "runs").exists()


def test_a_start_that_fails_is_marked_then_cleared(tmp_path, tiny_landmarks, capsys):
    nothing = tmp_path / "nothing.pt"
    torch.save({"state_dict": {"unrelated.weight": torch.zeros(2)}}, nothing)
    assert main(_lm(tmp_path, tiny_landmarks, "r", "--set", f"init={nothing}")) == 2
    run = tmp_path / "runs" / "r"
    failed = json.loads((run / "failed.json").read_text())
    assert failed["status"] == "failed" and "no weight matches" in failed["error"]
    assert not (run / "summary.json").exists()
    capsys.readouterr()
    assert main(_lm(tmp_path, tiny_landmarks, "r")) == 0  # the next start that succeeds clears the mark
    assert not (run / "failed.json").exists() and (run / "summary.json").is_file()


def test_summary_lists_only_stages_that_receive_gradients(tmp_path, tiny_landmarks):
    # a heatmap head reads one stride-8 stage: the stages above it get no gradient at depth "all"
    assert main(_lm(tmp_path, tiny_landmarks, "hm", "--set", "task.landmarks.head=heatmap",
                    "--set", "train.depth=all")) == 0
    run = tmp_path / "runs" / "hm"
    summary = json.loads((run / "summary.json").read_text())
    _, task, model = load_model(run)
    model.train()
    batch = next(iter(DataLoader(task.load_split("train.csv", "train"), batch_size=4)))
    model.zero_grad()
    model.training_step(batch)["loss"].backward()
    got_grad = [s for s, params in model.backbone.stage_parameters().items()
                if any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in params)]
    assert summary["trainable_stages"] == got_grad
    assert got_grad != model.backbone.stage_names  # the case the test is about: some stages unused


def test_predict_skip_writes_the_skipped_files_beside_the_csv(tmp_path, tiny_landmarks, capsys):
    assert main(_lm(tmp_path, tiny_landmarks, "p")) == 0
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    good = tiny_landmarks / "images" / "000.png"
    out = tmp_path / "pred.csv"
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "runs" / "p"), str(good), str(bad), "--out", str(out),
                 "--on-bad", "skip"]) == 0
    said = capsys.readouterr().out
    side = pd.read_csv(tmp_path / "pred.csv.skipped.csv")
    assert list(side["path"]) == [str(bad)] and side["reason"].str.contains("broken.png").all()
    assert "1 skipped, listed in" in said and "pred.csv.skipped.csv" in said
    assert list(pd.read_csv(out)["image"]) == ["000.png"]
    # every input bad: a sentence naming the file, not a Python object's repr
    assert main(["predict", str(tmp_path / "runs" / "p"), str(bad), "--out", str(out), "--on-bad", "skip"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "Skipped(" not in err and len(err.strip().splitlines()) == 1

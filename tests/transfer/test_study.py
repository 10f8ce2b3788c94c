from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from transfer.cli import main
from transfer.studies.report import cpu_count
from transfer.stats import paired_bootstrap_auc, paired_errors


def test_study_grid_report_and_resume(tmp_path, tiny_npz, capsys):
    report = tmp_path / "report" / "r.md"
    args = ["study", "--set", "backbone.name=tiny_resnet", "--set", "backbone.in_chans=1", "--set", "data.format=npz",
            "--set", f"data.root={tiny_npz.parent}", "--set", "data.train=tiny.npz#train",
            "--set", "data.val=tiny.npz#val", "--set", "data.test=tiny.npz#test", "--set", "data.image_size=[32, 32]",
            "--set", "train.epochs=1", "--set", "train.max_steps=2", "--set", "train.batch_size=4",
            "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false", "--set", "runtime.device=cpu",
            "--set", "task.classification.bootstrap=10", "--set", f"study.out_dir={tmp_path / 's'}",
            "--set", "study.name=t", "--set", "study.inits=[imagenet, scratch]", "--set", "study.depths=[head, all]",
            "--set", "study.label_fractions=[0.5, 1.0]", "--set", f"study.report={report}",
            "--set", "study.command=medtransfer study x.yaml",
            "--set", "study.references=[{name: paper, metrics: {roc_auc: 0.9}}]"]
    # tiny_resnet has no ImageNet weights: the study reports it as a one-line error
    assert main(args) == 2
    assert "no ImageNet weights" in capsys.readouterr().err
    args[args.index("study.inits=[imagenet, scratch]")] = "study.inits=[scratch, " + str(_ckpt(tmp_path)) + "]"
    assert main(args) == 0
    res = pd.read_csv(tmp_path / "s" / "t" / "results.csv")
    assert len(res) == 2 * 2 * 2 and set(res["depth"]) == {"head", "all"}
    assert set(res["label_fraction"]) == {0.5, 1.0}
    assert (res[res["label_fraction"] == 0.5]["n_train"] == 20).all()
    comp = pd.read_csv(tmp_path / "s" / "t" / "comparisons.csv")
    assert len(comp) == 4 and set(comp["vs"]) == {"scratch"}
    text = report.read_text()
    assert "medtransfer study x.yaml" in text and "paper" in text and "r_depth.png" in text
    assert (report.parent / "r_fraction.png").exists()
    # the device the runs trained on (here from their config.yaml), not the machine writing the report
    assert f"min of training in all on CPU ({cpu_count()} cores, " in text
    assert "Per-landmark" not in text  # classification adds no task section
    # a second call reuses the finished runs instead of training again
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier") == 8 and "--restart" not in out  # study has no --restart: no such advice
    # a changed training key is never mixed into the finished cells: a one-line error naming the key
    assert main(args + ["--set", "train.lr=0.05"]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "study.name" in err and "Traceback" not in err


def _ckpt(tmp_path):
    import torch

    from transfer.weights import backbone_checkpoint, build_backbone

    bb, _ = build_backbone("tiny_resnet", "scratch", in_chans=1)
    path = tmp_path / "ssl" / "backbone.pt"
    path.parent.mkdir()
    torch.save(backbone_checkpoint(bb, {"method": "test"}), path)
    return path


def test_paired_stats():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    good = y + rng.normal(0, 0.5, 200)
    bad = y + rng.normal(0, 2.0, 200)
    r = paired_bootstrap_auc(y, good, bad, n=500)
    assert r["difference"] > 0 and r["ci95"][0] > 0 and r["p_value"] < 0.05
    same = paired_bootstrap_auc(y, good, good, n=200)
    assert same["difference"] == 0
    a = rng.normal(2, 1, 50)
    e = paired_errors(a, a + 1.0, metric="mre_mm")
    assert e["difference"] == pytest.approx(-1.0) and e["p_value"] < 1e-6

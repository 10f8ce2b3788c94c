"""A run whose validation metric is NaN at every epoch completes, keeps the last epoch and says so."""
from __future__ import annotations

import json
import math

import pytest

from tasks.classification.task import ClassificationTask
from transfer.cli import main


@pytest.fixture
def nan_val_auc(monkeypatch):
    """Validation ROC AUC is NaN (as with a one-class validation split); test metrics are untouched."""
    original = ClassificationTask.summary_metrics

    def summary_metrics(self, metrics):
        return {**original(self, metrics), "roc_auc": float("nan")}

    monkeypatch.setattr(ClassificationTask, "summary_metrics", summary_metrics)


def _args(tmp_path, npz, depth: str) -> list[str]:
    return ["finetune", "--name", "nan", "--set", "backbone.name=tiny_resnet", "--set", "init=scratch",
            "--set", "train.epochs=2", "--set", "train.auto_epochs=2", "--set", "train.max_steps=2",
            "--set", "train.batch_size=4", "--set", f"tracking.out_dir={tmp_path / 'runs'}",
            "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false",
            "--set", "task.classification.bootstrap=20", "--set", "data.format=npz",
            "--set", f"data.root={npz.parent}", "--set", "data.train=tiny.npz#train", "--set", "data.val=tiny.npz#val",
            "--set", "data.test=tiny.npz#test", "--set", "data.image_size=[32, 32]", "--set", "backbone.in_chans=1",
            "--set", f"train.depth={depth}"]


@pytest.mark.parametrize("depth", ["layer3-head", "auto"])
def test_finetune_with_all_nan_validation_completes_and_warns(tmp_path, tiny_npz, nan_val_auc, depth):
    assert main(_args(tmp_path, tiny_npz, depth)) == 0
    run = tmp_path / "runs" / "nan"
    summary = json.loads((run / "summary.json").read_text())
    assert math.isnan(summary["best_val"]) and summary["best_epoch"] == 1  # the last of 2 epochs is kept
    assert any("NaN" in w and "roc_auc" in w for w in summary["warnings"])
    assert 0 <= summary["test"]["roc_auc"] <= 1 and (run / "model.pt").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isnan(r["val_roc_auc"]) and r["best_epoch"] == -1 for r in rows)
    if depth == "auto":
        # a NaN never beats the first depth, so the search stops after the second one
        assert [c["depth"] for c in summary["depth_curve"]] == ["head", "layer4-head"]
        assert summary["selected_depth"] == "head"

"""``auto`` depth unfreezes while validation improves, in the metric's own direction, and stops when it does not.

Real fine-tunes (tiny backbone, one epoch per depth); only the validation value the search sees is scripted, so the
expected depth is known: AUC (higher is better, classification) and MRE (lower is better, landmarks). A flipped sign
in the improvement test picks the wrong depth or stops at the wrong place.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from transfer.api import TASKS
from transfer.cli import main


def _script(monkeypatch, task_name: str, values: list[float]) -> list[float]:
    """Each validation of the search returns the next of ``values`` as the task's monitored metric."""
    cls = TASKS.get(task_name)
    real = cls.summary_metrics
    left = list(values)

    def scripted(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {**real(self, metrics), self.monitor: left.pop(0)}

    monkeypatch.setattr(cls, "summary_metrics", scripted)
    return left


def _common(tmp_path) -> list[str]:
    return ["--set", "init=scratch", "--set", "backbone.in_chans=1", "--set", "train.depth=auto",
            "--set", "train.auto_epochs=1", "--set", "train.auto_tolerance=0", "--set", "train.batch_size=4",
            "--set", "train.max_steps=2", "--set", f"tracking.out_dir={tmp_path / 'runs'}",
            "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false",
            "--set", "tracking.log_media=false"]


@pytest.mark.parametrize("values, chosen, tried", [
    ([0.60, 0.70, 0.65], "layer4-head", 3),  # improves once, then drops: stop, keep layer4-head
])
def test_auto_depth_on_auc_higher_is_better(tmp_path, tiny_npz, monkeypatch, values, chosen, tried):
    left = _script(monkeypatch, "classification", values)
    args = ["finetune", "--name", "auc", *_common(tmp_path), "--set", "backbone.name=tiny_resnet",
            "--set", "data.format=npz", "--set", f"data.root={tiny_npz.parent}", "--set", "data.train=tiny.npz#train",
            "--set", "data.val=tiny.npz#val", "--set", "data.image_size=[32, 32]",
            "--set", "task.classification.bootstrap=20"]
    assert main(args) == 0
    s = json.loads((tmp_path / "runs" / "auc" / "summary.json").read_text())
    assert [r["depth"] for r in s["depth_curve"]] == ["head", "layer4-head", "layer3-head"][:tried]
    assert s["selected_depth"] == chosen and s["best_val"] == max(values) and left == []


@pytest.mark.parametrize("values, chosen, tried", [
    ([5.0, 4.0, 4.5], 1, 3),  # MRE falls once, then rises: stop, keep the second depth tried
])
def test_auto_depth_on_mre_lower_is_better(tmp_path, tiny_landmarks, monkeypatch, values, chosen, tried):
    left = _script(monkeypatch, "landmarks", values)
    args = ["finetune", "--name", "mre", *_common(tmp_path), "--set", "backbone.name=tiny_efficientnet",
            "--set", "task.name=landmarks", "--set", "data.format=landmark_csv",
            "--set", f"data.root={tiny_landmarks}", "--set", "data.train=train.csv", "--set", "data.image_dir=images",
            "--set", "data.image_size=[64, 48]"]
    assert main(args) == 0
    s = json.loads((tmp_path / "runs" / "mre" / "summary.json").read_text())
    depths = [r["depth"] for r in s["depth_curve"]]
    assert len(depths) == tried and depths[0] == "head"
    assert s["selected_depth"] == depths[chosen]
    assert s["best_val"] == min(values) and left == []

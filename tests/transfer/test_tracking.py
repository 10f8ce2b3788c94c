from __future__ import annotations

import json

import torch

from transfer.config import Config
from transfer.config.io import to_dict
from transfer.tracking import Run, read_metrics


def test_wandb_offline_run_records_checkpoint_lineage(tmp_path, monkeypatch):
    """Offline W&B: metrics, summary, and a stage-1 checkpoint (with its full config) as an input artifact."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    ckpt = tmp_path / "backbone.pt"
    torch.save({"x": torch.zeros(1)}, ckpt)
    prov = {"method": "cae", "config": to_dict(Config()), "artifact_name": "backbone-cae"}
    run = Run(tmp_path / "runs", "r", to_dict(Config()), wandb_mode="offline")
    assert run.wandb_run is not None
    run.use_checkpoint(ckpt, prov)
    assert run.wandb_run.config["init_checkpoint"]["artifact"] == "backbone-cae"
    assert run.wandb_run.config["init_checkpoint"]["method"] == "cae"
    run.log_epoch({"epoch": 0, "train_loss": 1.0})
    run.log_summary({"ok": 1})
    run.finish()
    assert run.warnings == []
    assert json.loads((tmp_path / "runs" / "r" / "summary.json").read_text()) == {"ok": 1}
    assert list((tmp_path / "runs" / "r" / "wandb").glob("offline-run-*"))


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path):
    import os

    from transfer.tracking import atomic_write_text

    atomic_write_text(tmp_path / "a.json", "{}")
    with open(tmp_path / "b.json", "w") as f:
        f.write("{}")
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == os.stat(tmp_path / "b.json").st_mode & 0o777


def test_read_metrics_returns_what_log_epoch_wrote(tmp_path):
    assert read_metrics(tmp_path) == []
    run = Run(tmp_path, "r", {}, wandb_mode="disabled")
    run.log_epoch({"epoch": 0, "train_loss": 1.5})
    run.log_epoch({"epoch": 1, "train_loss": 0.5})
    assert read_metrics(run.dir) == [{"epoch": 0, "train_loss": 1.5}, {"epoch": 1, "train_loss": 0.5}]

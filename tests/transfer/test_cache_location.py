"""The decode cache is where this command says ($MEDTRANSFER_CACHE, --cache-dir), never where the run was trained."""
from __future__ import annotations

import numpy as np
import yaml
from PIL import Image

from transfer.cli import main
from transfer.config import Config, load_config


def _entries(folder):
    return list(folder.rglob("*.npz")) if folder.exists() else []


def test_default_is_resolved_per_process_not_frozen(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "env"))
    cfg = load_config(Config, None, [])
    assert cfg.data.cache_dir is None and cfg.data.cache_path() == tmp_path / "env"
    monkeypatch.delenv("MEDTRANSFER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cfg.data.cache_path() == tmp_path / "xdg" / "medtransfer"


def test_predict_uses_its_own_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(4):
            (tmp_path / "train" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(tmp_path / "train" / c / f"{i}.png")
    train_cwd, elsewhere = tmp_path / "train_cwd", tmp_path / "elsewhere"
    train_cwd.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(train_cwd)
    sets = ["backbone.name=tiny_resnet", "init=scratch", "train.epochs=1", "train.max_steps=1", "train.batch_size=4",
            "data.image_size=[32, 32]", "backbone.in_chans=1", "task.classification.bootstrap=10",
            f"data.root={tmp_path}", "data.format=folder", "data.train=train", f"tracking.out_dir={tmp_path / 'runs'}",
            "tracking.wandb_mode=disabled", "tracking.progress=false", "tracking.log_media=false",
            "data.cache_dir=rel_cache"]  # a relative folder, as the old default was
    assert main(["finetune", "--name", "r", *[a for s in sets for a in ("--set", s)]]) == 0
    assert len(_entries(train_cwd / "rel_cache")) == 8
    run = tmp_path / "runs" / "r"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["cache_dir"] == "rel_cache"

    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "predict_env"))
    assert main(["predict", str(run), str(tmp_path / "train" / "a"), "--out", "p.csv"]) == 0
    assert len(_entries(tmp_path / "predict_env")) == 4
    assert not (elsewhere / "rel_cache").exists() and not (elsewhere / ".cache").exists()
    assert main(["evaluate", str(run), "--data", "train", "--cache-dir", str(tmp_path / "cli")]) == 0
    assert len(_entries(tmp_path / "cli")) == 8 and len(_entries(tmp_path / "predict_env")) == 4

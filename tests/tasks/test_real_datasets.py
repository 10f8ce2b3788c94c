"""The configs' datasets load as they are (skip when ../shared/data is absent)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transfer.config import Config
from transfer.config.io import load_config
from transfer.runs.splits import prepare_data
from transfer.api import TASKS

pytestmark = pytest.mark.realdata


REPO = Path(__file__).resolve().parents[2]


def _task(root: Path, config: str, *overrides: str):
    cfg = load_config(Config, REPO / "configs" / config, [f"data.root={root}", "tracking.progress=false", *overrides])
    return cfg, TASKS.get(cfg.task.name)(cfg)


def test_isbi_csvs_load_as_they_are(real_data):
    root = real_data("isbi2015_ceph").parent
    cfg, task = _task(root, "isbi2015_landmarks.yaml", "data.image_size=[40, 32]")
    splits = prepare_data(task, cfg)
    assert splits.info["n_train"] + splits.info["n_val"] == 150 and splits.info["n_test"] == 150
    assert task.info["num_landmarks"] == 19 and task.info["landmark_names"][0] == "sella"
    sizes = splits.test.target_array("orig_size")
    assert (sizes == [2400, 1935]).all()
    # normalised coordinates map back to the CSV's integer pixels
    from tasks.landmarks.task import to_pixels

    import pandas as pd

    df = pd.read_csv(real_data("isbi2015_ceph") / "test1_senior.csv")
    px = to_pixels(splits.test.target_array("landmarks").astype(np.float64), sizes)
    row = df.set_index("image_path").loc[splits.test.ids[0]]
    assert np.allclose(px[0, 0], [row["1_x"], row["1_y"]], atol=1e-3)


def test_pneumoniamnist_official_splits(real_data):
    root = real_data("pneumoniamnist").parent
    cfg, task = _task(root, "pneumoniamnist.yaml", "data.image_size=[28, 28]")
    splits = prepare_data(task, cfg)
    counts = {k: np.bincount(getattr(splits, k).target_array("label")).tolist() for k in ("train", "val", "test")}
    assert counts == {"train": [1214, 3494], "val": [135, 389], "test": [234, 390]}
    assert task.info["class_names"] == ["normal", "pneumonia"]

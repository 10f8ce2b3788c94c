"""scripts/landmark_compare.py: two trainings compared per image on the validation parts they share."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transfer.cli import main as cli


def _train(runs: Path, data_root: Path, name: str, *more: str) -> Path:
    fixed = ["backbone.name=tiny_efficientnet", "init=scratch", "backbone.in_chans=1", "train.max_steps=2",
             "train.epochs=1", "train.batch_size=4", f"tracking.out_dir={runs}", "tracking.wandb_mode=disabled",
             "tracking.progress=false", "data.format=landmark_csv", f"data.root={data_root}",
             "data.train=train.csv", "data.test=test.csv", "data.image_dir=images", "task.name=landmarks",
             "task.landmarks.head=decoder", "data.image_size=[32, 24]", "data.val_fraction=0.34"]
    assert cli(["finetune", "--name", name, *(a for kv in (*fixed, *more) for a in ("--set", kv))]) == 0
    return runs / name


def test_the_comparison_pairs_images_and_refuses_runs_of_other_validation_parts(tmp_path, tiny_landmarks,
                                                                                 load_script):
    runs = tmp_path / "runs"
    a = _train(runs, tiny_landmarks, "a", "seed=1", "data.split_seed=0")
    b = _train(runs, tiny_landmarks, "b", "seed=2", "data.split_seed=0", "task.landmarks.sigma_mm=1.0")
    other = _train(runs, tiny_landmarks, "other", "seed=3")
    module = load_script("landmark_compare")
    # a model against itself: no difference on any image, and no test can call one
    _, same, landmarks = module.compare([a], [a])
    assert (same["difference"] == 0).all() and (same["p_value"] == 1).all()
    assert np.allclose(landmarks["difference_mm"], 0)
    runs_table, comparison, _ = module.compare([a], [b])
    pooled = comparison.iloc[0]
    assert pooled["n_images"] == runs_table.iloc[0]["n_images"]
    # the pooled difference is the difference of the two models' validation MREs (same images, equal weights)
    assert np.isclose(pooled["difference"], runs_table.iloc[1]["mre_mm"] - runs_table.iloc[0]["mre_mm"])
    out = tmp_path / "cmp.md"
    assert module.main(["--baseline", str(a), "--candidate", str(b), "--out", str(out)]) == 0
    assert "| pooled (1 pairs) |" in out.read_text()
    with pytest.raises(SystemExit, match="not the same images"):
        module.compare([a], [other])
    with pytest.raises(SystemExit):
        module.main(["--baseline", str(a), str(b), "--candidate", str(b), "--out", str(out)])

"""The study's paired AUC comparison resamples as often as the config says (it used 2000 whatever the config)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from transfer.api import TASKS
from transfer.config import Config, load_config


def test_paired_comparison_uses_the_configured_resample_count():
    cfg = load_config(Config, None, ["task.classification.bootstrap=37"])
    task = TASKS.get("classification")(cfg)
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    frame = lambda p: pd.DataFrame({"image": [f"{i}.png" for i in range(40)], "label": y.astype(str),  # noqa: E731
                                    "prob_0": 1 - p, "prob_1": p})
    res = task.paired_comparison(frame(0.3 * y + 0.7 * rng.random(40)), frame(rng.random(40)))
    assert res["test"] == "paired bootstrap (37 resamples)"

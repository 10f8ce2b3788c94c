"""Per-class recall over seeds, from each run's test predictions (tasks whose predictions name a label and a
predicted class; landmark tasks add their per-landmark tables through ``Task.report_sections``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from transfer.studies.seed_stats import seed_interval


def per_class_recall(runs_dir: Path, df: pd.DataFrame) -> pd.DataFrame:
    """Rows (init, depth, labels, class): test recall of the class (its share predicted as itself), mean and 95%
    interval over seeds (logit scale, inside [0, 1]; none below three seeds). Empty when the predictions have no ``label`` / ``predicted`` columns."""
    rows = []
    for (init, depth, frac), g in df.groupby(["init", "depth", "label_fraction"], sort=False):
        recalls: dict[str, list[float]] = {}
        for run in g["run"]:
            f = runs_dir / run / "predictions_test.csv"
            if not f.is_file():
                continue
            p = pd.read_csv(f, usecols=lambda c: c in ("label", "predicted"))
            if not {"label", "predicted"} <= set(p.columns):
                return pd.DataFrame()
            for cls, c in p.groupby(p["label"].astype(str)):
                recalls.setdefault(cls, []).append(float((c["predicted"].astype(str) == cls).mean()))
        for cls, values in sorted(recalls.items()):
            ci = seed_interval(values, (0.0, 1.0))  # a recall is a proportion
            rows.append({"init": init, "depth": depth, "labels": frac, "class": cls, "seeds": ci["n"],
                         "recall": ci["mean"], "ci95_lo": ci["lo"], "ci95_hi": ci["hi"]})
    return pd.DataFrame(rows)

"""The report hook: landmarks add the per-landmark table (the dental seed's Table I); classification adds nothing."""
from __future__ import annotations

import numpy as np

from tasks.landmarks.metrics import landmark_metrics
from transfer.api import TASKS
from transfer.config import Config
from transfer.config.io import load_config
from transfer.studies.report import md_table


def _task(*overrides):
    cfg = load_config(Config, None, ["tracking.progress=false", *overrides])
    return TASKS.get(cfg.task.name)(cfg)


def _landmark_summary(offset: float) -> dict:
    true = np.array([[[10.0, 10.0], [20.0, 30.0]], [[12.0, 14.0], [25.0, 28.0]]])
    pred = true + np.array([[[offset, 0.0], [0.0, 2 * offset]], [[offset, 0.0], [0.0, 4 * offset]]])
    return {"test": landmark_metrics(pred, true, 0.1, names=["sella", "nasion"])}


def test_landmark_report_section_is_the_per_landmark_table():
    task = _task("task.name=landmarks", "data.format=landmark_csv")
    runs = {"imagenet-all-frac1-seed0": _landmark_summary(10.0), "scratch-all-frac1-seed0": _landmark_summary(20.0)}
    lines = task.report_sections(runs, md_table)
    assert lines[0] == "## Per-landmark radial error on the test split (mm, mean ± SD; SDR at 2.0 mm in parentheses)"
    text = "\n".join(lines)
    assert "| landmark | imagenet-all-frac1-seed0 | scratch-all-frac1-seed0 |" in text
    # sella: errors 1 mm and 1 mm (then 2 and 2); nasion: 2 and 4 mm (then 4 and 8), sample SD; SDR counts
    # errors up to 2 mm: sella 100% (then 100%), nasion 50% (then 0%)
    assert "| sella | 1.00 ± 0.00 (100%) | 2.00 ± 0.00 (100%) |" in text
    assert (f"| nasion | 3.00 ± {np.std([2, 4], ddof=1):.2f} (50%) | 6.00 ± {np.std([4, 8], ddof=1):.2f} (0%) |"
            in text)
    # the gross failures per landmark, > 4 / > 10 mm: nasion's 4 and 8 mm errors of the second run, one of two
    # above 4 mm, none above 10
    assert "### Per-landmark gross failures on the test split (% of errors > 4 mm / > 10 mm)" in text
    assert "| nasion | 0.0 / 0.0 | 50.0 / 0.0 |" in text
    # a run without per-landmark test metrics (an older summary): no table rather than a partial one
    assert task.report_sections({**runs, "old": {"test": {"mre_mm": 1.0}}}, md_table) == []
    assert task.report_sections({}, md_table) == []


def test_classification_adds_no_report_section():
    task = _task("task.name=classification", "data.format=npz")
    runs = {"imagenet-all-frac1-seed0": {"test": {"roc_auc": 0.9, "accuracy": 0.8}}}
    assert task.report_sections(runs, md_table) == []
    # and the landmark table is not produced from classification summaries either
    assert _task("task.name=landmarks", "data.format=landmark_csv").report_sections(runs, md_table) == []


def test_per_landmark_table_without_a_2mm_radius_shows_no_sdr():
    true = np.array([[[10.0, 10.0], [20.0, 30.0]], [[12.0, 14.0], [25.0, 28.0]]])
    summary = {"test": landmark_metrics(true + 10.0, true, 0.1, radii=(2.5,), names=["sella", "nasion"])}
    text = "\n".join(_task("task.name=landmarks", "data.format=landmark_csv").report_sections({"r": summary}, md_table))
    errors_table = text.split("### Per-landmark gross failures")[0]
    assert f"| sella | {np.hypot(1, 1):.2f} ± 0.00 |" in errors_table
    assert "%" not in errors_table and "SDR" not in errors_table

"""The HTML study report in a real browser: scripts/check_report_html.py opens it in headless Chromium and finds
every promised section, table and image rendered; a page with a broken image fails the check."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from transfer.api import TASKS
from transfer.config import Config
from transfer.config.io import load_config
from transfer.studies.report import write_report
from transfer.studies.statistics import aggregate_seeds, compare_inits

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "check_report_html.py"

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None or importlib.util.find_spec("playwright") is None,
    reason="needs Debian's chromium (apt-get install -y chromium) and playwright (pip install playwright); "
           ".ci/run installs both")


@pytest.fixture
def report(tmp_path) -> Path:
    cfg = load_config(Config, None, ["data.format=npz", "tracking.progress=false", "study.depths=[head]",
                                     "study.label_fractions=[0.1, 1.0]", f"study.report={tmp_path / 'r.md'}"])
    task = TASKS.get(cfg.task.name)(cfg)
    rows = []
    for init, base in (("imagenet", 0.9), ("scratch", 0.7)):
        for frac in (0.1, 1.0):
            for seed in range(4):
                run = f"{init}-head-frac{frac:g}-seed{seed}"
                d = tmp_path / "runs" / run
                d.mkdir(parents=True)
                auc = base + 0.02 * seed + 0.05 * frac
                (d / "metrics.jsonl").write_text("".join(
                    f'{{"epoch": {e}, "steps": 10, "val_roc_auc": {auc - 0.1 / (e + 1):.4f}}}\n' for e in range(4)))
                rows.append({"init": init, "init_name": init, "variant": "", "depth": "head", "label_fraction": frac,
                             "seed": seed, "run": run, "selected_depth": "head", "best_epoch": 3, "n_train": 40,
                             "seconds": 5.0, "val_roc_auc": auc, "test_roc_auc": auc, "test_accuracy": auc - 0.1})
    df = pd.DataFrame(rows)
    return write_report(cfg, task, df, aggregate_seeds(df, task), compare_inits(task, df, tmp_path / "runs", "signflip"),
                        tmp_path).with_suffix(".html")


def _check(html: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(html), *extra], capture_output=True, text=True, timeout=120)


def test_every_promised_section_table_and_image_renders(report, tmp_path):
    r = _check(report, "--screenshot", str(tmp_path / "shot.png"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   headings:" in r.stdout and "ok   image r_fraction.png" in r.stdout
    assert "ok   image r_curves.png" in r.stdout and "ok   tables" in r.stdout
    assert (tmp_path / "shot.png").stat().st_size > 10_000


def test_a_broken_image_fails_the_check(report):
    html = report.read_text()
    start = html.index('src="data:image/png;base64,') + len('src="data:image/png;base64,')
    report.write_text(html[:start] + "bm90IGEgcG5n" + html[html.index('"', start):])  # "not a png"
    r = _check(report)
    assert r.returncode == 1 and "FAIL image" in r.stdout

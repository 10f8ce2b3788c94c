"""The study report names the device the runs trained on, read from their run directories."""
from __future__ import annotations

import json
import platform

import pandas as pd
import yaml

from transfer.api import TASKS
from transfer.config import Config
from transfer.config.io import load_config
from transfer.studies.report import cpu_count, describe_devices, run_devices, run_summaries, write_report
from transfer.studies.statistics import aggregate_seeds

RUNS = ["imagenet-all-frac1-seed0", "scratch-all-frac1-seed0"]


def _study(tmp_path, summary_extra: dict, runtime_device: str):
    """Two finished runs on disk (summary.json, config.yaml) and the report written from them."""
    cfg = load_config(Config, None, ["data.format=npz", "tracking.progress=false", "study.depths=[all]",
                                     f"study.report={tmp_path / 'report' / 'r.md'}"])
    task = TASKS.get(cfg.task.name)(cfg)
    for i, run in enumerate(RUNS):
        d = tmp_path / "runs" / run
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"test": {"roc_auc": 0.8 + 0.1 * i}, **summary_extra}))
        (d / "config.yaml").write_text(yaml.safe_dump({"runtime": {"device": runtime_device}}))
    df = pd.DataFrame({"init": ["imagenet", "scratch"], "depth": "all", "label_fraction": 1.0, "seed": 0, "run": RUNS,
                       "selected_depth": "all", "best_epoch": 1, "n_train": 40, "seconds": 30.0,
                       "val_roc_auc": [0.9, 0.7], "test_roc_auc": [0.9, 0.8]})
    out = write_report(cfg, task, df, aggregate_seeds(df, task), pd.DataFrame(), tmp_path)
    return out.read_text()


def _grid_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("- Grid:"))


def test_report_names_the_cpu_from_the_runs_config(tmp_path):
    line = _grid_line(_study(tmp_path, {}, "cpu"))
    processor = platform.processor() or platform.machine()
    assert line.endswith(f"1.0 min of training in all on CPU ({cpu_count()} cores, {processor}).")


def test_report_prefers_the_device_recorded_in_the_summary(tmp_path):
    line = _grid_line(_study(tmp_path, {"device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3"}, "auto"))
    assert line.endswith("on NVIDIA H100 80GB HBM3.") and "CPU" not in line


def test_unrecorded_auto_device_is_said_so_not_guessed(tmp_path):
    line = _grid_line(_study(tmp_path, {}, "auto"))
    assert "CPU" not in line and "did not record" in line and "`runtime.device: auto`" in line


def test_runs_on_different_devices_are_counted(tmp_path):
    for run, device in zip(RUNS, ("cpu", "cuda:0")):
        (tmp_path / run).mkdir()
        (tmp_path / run / "summary.json").write_text(json.dumps({"device": device}))
    devices = run_devices(tmp_path, run_summaries(tmp_path, [*RUNS, "never-ran"]))
    assert devices == [("cpu", None), ("cuda:0", None)]
    text = describe_devices(devices)
    assert text.startswith("CPU (") and text.endswith("(1 run), CUDA device `cuda:0` (name not recorded) (1 run)")

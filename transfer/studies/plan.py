"""``medtransfer study --dry-run``: the plan (each cell reused, resumed or run) and an estimate of its compute.

The estimate comes from the finished cells' own durations when there are some, else from a timing probe: one
cell trained for a few steps in a temporary folder (nothing is written to the study). It assumes every run
goes to ``train.epochs`` (early stopping can only make it shorter) and it is rough: it scales one measured step
to every cell by its number of optimiser steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from transfer.config import Config
from transfer.runs.finetune import run_finetune
from transfer.studies.cells import Cell, cell_config, is_finished

PROBE_STEPS = 3


def cell_status(run_dir: Path) -> str:
    if is_finished(run_dir):
        return "reuse"
    return "resume" if any(run_dir.glob("last*.pt")) else "run"


def print_plan(cfg: Config, root: Path, cells: list[Cell], progress: Callable[[str], None]) -> dict[str, Any]:
    """Print one line per cell and the estimate; returns the plan as a dict (nothing is trained or written)."""
    status = {c.name: cell_status(root / "runs" / c.name) for c in cells}
    todo = [c for c in cells if status[c.name] != "reuse"]
    for k, c in enumerate(cells, 1):
        progress(f"[{k}/{len(cells)}] {c.name}: {status[c.name]}")
    estimate = _estimate(cfg, root, cells, todo, progress)
    n_reuse = len(cells) - len(todo)
    progress(f"plan: {len(cells)} cells in {root}: {n_reuse} reused, {len(todo)} to run; "
             f"estimated compute {estimate['minutes']:.1f} min on this machine ({estimate['source']})")
    return {"root": str(root), "cells": status, "to_run": len(todo), "reused": n_reuse, "estimate": estimate}


def _estimate(cfg: Config, root: Path, cells: list[Cell], todo: list[Cell],
              progress: Callable[[str], None]) -> dict[str, Any]:
    if not todo:
        return {"minutes": 0.0, "source": "nothing to run"}
    seconds = [json.loads((root / "runs" / c.name / "summary.json").read_text()).get("seconds")
               for c in cells if is_finished(root / "runs" / c.name)]
    seconds = [s for s in seconds if s]
    if seconds:
        per_cell = statistics.median(seconds)
        return {"minutes": per_cell * len(todo) / 60, "source": f"median of {len(seconds)} finished cells, "
                f"{per_cell:.0f} s each"}
    progress(f"timing probe: {PROBE_STEPS} steps of {todo[0].name} ...")
    probe = probe_step_seconds(cfg, todo[0])
    total = sum(probe["overhead_s"] + _steps(cfg, probe["n_images"], c.label_fraction) * probe["step_s"]
                for c in todo)
    return {"minutes": total / 60, "source": f"timing probe: {probe['step_s']:.2f} s per step, "
            f"{probe['overhead_s']:.0f} s per run to load and evaluate, every run to train.epochs", **probe}


def _steps(cfg: Config, n_images: float, fraction: float) -> int:
    per_epoch = cfg.train.steps_per_epoch or math.ceil(n_images * fraction / cfg.train.batch_size)
    return cfg.train.epochs * per_epoch


def probe_step_seconds(cfg: Config, cell: Cell) -> dict[str, float]:
    """Train ``cell`` (at depth ``all``, the costliest) for a few steps in a temporary folder: seconds per step,
    the fixed cost of a run (data, model, evaluation), and the full training set's size."""
    with tempfile.TemporaryDirectory() as tmp:
        c = cell_config(cfg, dataclasses.replace(cell, depth="all"), Path(tmp))
        c = dataclasses.replace(
            c, train=dataclasses.replace(c.train, epochs=1, max_steps=PROBE_STEPS, eval_test=False),
            tracking=dataclasses.replace(c.tracking, wandb_mode="disabled", progress=False, log_media=False))
        t0 = time.time()
        with contextlib.redirect_stdout(io.StringIO()):
            summary = run_finetune(c, name="probe")
        seconds = time.time() - t0
        row = json.loads((Path(tmp) / "runs" / "probe" / "metrics.jsonl").read_text().splitlines()[0])
    step_s = cfg.train.batch_size / row["images_per_s"] if row.get("images_per_s") else seconds / PROBE_STEPS
    step_s = min(step_s, seconds / PROBE_STEPS)
    return {"step_s": step_s, "overhead_s": max(0.0, seconds - PROBE_STEPS * step_s),
            "n_images": summary["n_train"] / cell.label_fraction}

"""``medtransfer study``: the grid initialisation x depth x label fraction x seed, then tables, statistics, report."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from transfer.api import TASKS, Task
from transfer.config import Config
from transfer.config.io import to_dict
from transfer.runs.finetune import run_finetune
from transfer.runs.pretrain import resolve_pretrain_init
from transfer.studies.report import write_report
from transfer.studies.statistics import aggregate_seeds, compare_inits
from transfer.tracking import Run, RunStateError, atomic_write_json

#: resolves a ``pretrain:<method>`` init to a checkpoint path (default: transfer.runs.pretrain.resolve_pretrain_init)
PretrainResolver = Callable[[Config, str, Path], Path]


@dataclass(frozen=True)
class Cell:
    """One grid cell: a run directory ``<label>-<depth>-frac<f>-seed<s>``."""

    init: str
    depth: str
    label_fraction: float
    seed: int

    @property
    def label(self) -> str:
        return init_label(self.init)

    @property
    def name(self) -> str:
        return f"{self.label}-{self.depth}-frac{self.label_fraction:g}-seed{self.seed}"


def init_label(init: str) -> str:
    if init in ("imagenet", "scratch"):
        return init
    if init.startswith("pretrain:"):
        return init.split(":", 1)[1]
    return Path(init).parent.name or Path(init).stem


def grid_cells(cfg: Config) -> list[Cell]:
    """Every cell of the study, init-major, then depth, label fraction and seed."""
    st = cfg.study
    return [Cell(i, d, f, s) for i in st.inits for d in st.depths for f in st.label_fractions for s in st.seeds]


def run_study(cfg: Config, *, resolve_pretrain: PretrainResolver = resolve_pretrain_init,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every grid cell (skipping cells already complete on disk), then write results and the report."""
    st = cfg.study
    root = Path(st.out_dir) / st.name
    root.mkdir(parents=True, exist_ok=True)
    task = TASKS.get(cfg.task.name)(cfg)
    cells = grid_cells(cfg)
    t0 = time.time()
    rows = []
    for k, cell in enumerate(cells, 1):
        summary = run_cell(cfg, cell, root, resolve_pretrain, lambda msg: progress(f"[{k}/{len(cells)}] {msg}"))
        rows.append(_result_row(task, cell, summary))
    df = pd.DataFrame(rows)
    df.to_csv(root / "results.csv", index=False)
    comparisons = compare_inits(task, df, root / "runs")
    comparisons.to_csv(root / "comparisons.csv", index=False)
    agg = aggregate_seeds(df, task)
    agg.to_csv(root / "aggregate.csv", index=False)
    out: dict[str, Any] = {"root": str(root), "n_runs": len(df), "seconds": round(time.time() - t0, 1)}
    atomic_write_json(root / "study.json", {**out, "config": to_dict(cfg)})
    if st.report:
        out["report"] = str(write_report(cfg, task, df, agg, comparisons, root))
    _log_study_wandb(cfg, root, df, comparisons)
    return out


def run_cell(cfg: Config, cell: Cell, root: Path, resolve_pretrain: PretrainResolver,
             progress: Callable[[str], None]) -> dict[str, Any]:
    """The summary of one cell's fine-tuning run: read back when it finished earlier, else trained now."""
    run_dir = root / "runs" / cell.name
    init = cell.init
    if init.startswith("pretrain:"):
        init = str(resolve_pretrain(cfg, init.split(":", 1)[1], root))
    c = dataclasses.replace(
        cfg, init=init, seed=cell.seed,
        train=dataclasses.replace(cfg.train, depth=cell.depth),
        data=dataclasses.replace(cfg.data, label_fraction=cell.label_fraction),
        tracking=dataclasses.replace(cfg.tracking, out_dir=str(root / "runs"), name=cell.name,
                                     wandb_group=cfg.tracking.wandb_group or cfg.study.name),
    )
    done = (run_dir / "summary.json").is_file()
    progress(f"{cell.name}: done earlier, reusing {run_dir}" if done else f"{cell.name} ...")
    try:
        # run_finetune reuses a finished cell only when its config is this cell's (and resumes a cut-short one)
        return run_finetune(c, name=cell.name)
    except RunStateError as e:
        raise RunStateError(f"study {cfg.study.name!r}, cell {cell.name}: {e}. For a study: set a new study.name "
                            f"(or study.out_dir), or delete {run_dir} to run the cell again") from None


def _result_row(task: Task, cell: Cell, summary: dict[str, Any]) -> dict[str, Any]:
    """One row of ``results.csv``: the cell, its selection, and its flat validation and test metrics."""
    return {
        "init": cell.label, "depth": cell.depth, "label_fraction": cell.label_fraction, "seed": cell.seed,
        "run": cell.name, "selected_depth": summary["selected_depth"], "best_epoch": summary["best_epoch"],
        "n_train": summary["n_train"], "seconds": summary.get("seconds"),
        **_flat_metrics(task, summary, "val"), **_flat_metrics(task, summary, "test"),
    }


def _flat_metrics(task: Task, summary: dict[str, Any], split: str) -> dict[str, float]:
    return {f"{split}_{k}": v for k, v in task.summary_metrics(summary.get(split, {})).items()}


def _log_study_wandb(cfg: Config, root: Path, df: pd.DataFrame, comparisons: pd.DataFrame) -> None:
    run = Run(root, "wandb-study", to_dict(cfg), wandb_mode=cfg.tracking.wandb_mode, project=cfg.tracking.wandb_project,
              entity=cfg.tracking.wandb_entity, job_type="study", group=cfg.tracking.wandb_group or cfg.study.name,
              tags=["study", cfg.task.name])
    try:
        run.log_table("study/results", df)
        if len(comparisons):
            run.log_table("study/comparisons", comparisons)
        run.log_images(sorted(root.glob("*.png")), prefix="study/")
    finally:
        run.finish()

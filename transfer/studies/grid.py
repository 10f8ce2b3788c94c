"""``medtransfer study``: the grid initialisation x depth x label fraction x seed, then tables, statistics, report.

The order is fixed: check the manifest (a changed config stops here), produce the stage-1 checkpoints the cells
share (once, before any cell that needs them), run the cells not finished yet, then rebuild every table from the
run directories. Each step is idempotent, so a killed study, a shard and a cluster job array all converge on the
same study directory.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from transfer.backbones.feature_memo import FrozenFeatureMemo
from transfer.config import Config
from transfer.config.io import to_dict
from transfer.runs.finetune import run_finetune
from transfer.runs.pretrain import finished_study_pretrain, resolve_pretrain_init, study_pretrain_config
from transfer.studies.cells import (Cell, StageOne, cell_config, grid_cells, init_label, is_finished, shard_cells,
                                     stage_one)
from transfer.studies.executors import run_jobs
from transfer.studies.manifest import StudyConfigError, check_manifest
from transfer.studies.plan import print_plan
from transfer.studies.tables import write_study_outputs
from transfer.tracking import RESTART_OR_RENAME, Run, RunStateError, atomic_write_json

__all__ = ["Cell", "grid_cells", "init_label", "run_study", "run_cell"]


def study_root(cfg: Config) -> Path:
    return Path(cfg.study.out_dir) / cfg.study.name


def run_study(cfg: Config, *, shard: tuple[int, int] | None = None, dry_run: bool = False,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the study's cells (the ``shard`` i/n slice of them), then write its tables and report."""
    root = study_root(cfg)
    cells = grid_cells(cfg)
    mine = shard_cells(cells, shard)
    finished = [c for c in cells if is_finished(root / "runs" / c.name)]
    check_manifest(cfg, root, cells, finished, write=not dry_run)
    if dry_run:
        for one in {one.key: one for c in mine if (one := stage_one(c.init)) is not None}.values():
            # a stale checkpoint is refused here too, before a real run would stop on it
            state = "reuse" if stage_one_finished(cfg, one, root) else "train"
            progress(f"stage 1 {one.key}: {state} ({root / 'pretrain' / one.key})")
        return print_plan(cfg, root, mine, progress)
    t0 = time.time()
    stage1 = {one.key: one for c in mine if (one := stage_one(c.init)) is not None
              and not stage_one_finished(cfg, one, root)}
    run_jobs(cfg, root, pretrain_job, [(cfg, stage1[k], str(root)) for k in sorted(stage1)], "pretrain", progress)
    done = {c.name for c in finished}
    numbered = [(k, c) for k, c in enumerate(mine, 1)]
    for k, c in numbered:
        if c.name in done:
            progress(f"[{k}/{len(mine)}] {c.name}: done earlier, reusing {root / 'runs' / c.name}")
    todo = [(k, c) for k, c in numbered if c.name not in done]
    # local: one job running every cell in turn, so its cells share one memo of frozen-backbone features
    per_job = cfg.study.submitit.cells_per_job if cfg.study.executor == "submitit" else max(len(todo), 1)
    chunks = [todo[i:i + per_job] for i in range(0, len(todo), per_job)]
    run_jobs(cfg, root, cells_job, [(cfg, chunk, len(mine), str(root)) for chunk in chunks], "finetune", progress)
    out = {**write_study_outputs(cfg, root), "seconds": round(time.time() - t0, 1)}
    atomic_write_json(root / "study.json", {**out, "shard": list(shard) if shard else None, "config": to_dict(cfg)})
    if not out["missing"]:
        _log_study_wandb(cfg, root)
    return out


def stage_one_finished(cfg: Config, one: StageOne, root: Path) -> bool:
    """Whether ``one``'s checkpoint is in the study, trained with this config's pretrain section. One of another
    config stops the study before any cell runs: its cells would otherwise fine-tune from stale weights."""
    try:
        c = study_pretrain_config(cfg, one.method, root, source=one.source, name=one.key)
        return finished_study_pretrain(c) is not None
    except RunStateError as e:
        # the run-level way out (--restart / --name) is not the study's: name the study's own
        raise StudyConfigError(f"{str(e).removesuffix(RESTART_OR_RENAME)}delete {root / 'pretrain' / one.key} to "
                               "pretrain it again with this config (and the runs/ cells made from it), or set a new "
                               "study.name (or study.out_dir)") from None


def pretrain_job(cfg: Config, one: StageOne, root: str) -> str:
    """Stage 1 for ``one`` (a job): its checkpoint, made once; shards that need it at the same time wait for the
    one making it (a file lock on the study's shared folder) instead of training it twice."""
    out = Path(root) / "pretrain"
    out.mkdir(parents=True, exist_ok=True)
    tags = [*cfg.tracking.tags, f"study:{cfg.study.name}", f"init:{one.key}"]
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, tags=tags))
    with open(out / f".{one.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return str(resolve_pretrain_init(cfg, one.method, Path(root), source=one.source, name=one.key))


def cells_job(cfg: Config, cells: list[tuple[int, Cell]], total: int, root: str) -> str:
    """Fine-tune ``cells`` one after another (a job); one console line per cell (in a submitit job, its log; the
    submitting process prints the returned lines), each run's own output in its run directory."""
    lines = []
    memo = FrozenFeatureMemo()  # head-only cells on the same weights (ImageNet) compute each image's features once
    for k, cell in cells:
        summary = run_cell(cfg, cell, Path(root), memo)
        lines.append(f"[{k}/{total}] {cell.name}: {_headline(summary)}")
        print(lines[-1], flush=True)
    return "; ".join(lines)


def _headline(summary: dict[str, Any]) -> str:
    monitor = summary.get("monitor", "")
    test = (summary.get("test") or {}).get(monitor)
    val = summary.get("best_val")
    parts = [f"val {monitor} {val:.3f}" if isinstance(val, (int, float)) else None,
             f"test {monitor} {test:.3f}" if isinstance(test, (int, float)) else None,
             f"{summary.get('seconds', 0):.0f} s" if summary.get("seconds") is not None else None]
    return ", ".join(p for p in parts if p)


def run_cell(cfg: Config, cell: Cell, root: Path, feature_memo: FrozenFeatureMemo | None = None) -> dict[str, Any]:
    """The summary of one cell's fine-tuning run: read back when it finished earlier, else trained now (its
    console output goes to ``console.log`` in its run directory; progress bars stay on stderr)."""
    c = cell_config(cfg, cell, root)
    run_dir = root / "runs" / cell.name
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open(run_dir / "console.log", "a") as log, contextlib.redirect_stdout(log):
            # run_finetune reuses a finished cell only when its config is this cell's (and resumes a cut-short one)
            return run_finetune(c, name=cell.name, feature_memo=feature_memo)
    except RunStateError as e:
        raise RunStateError(f"study {cfg.study.name!r}, cell {cell.name}: {e}. For a study: set a new study.name "
                            f"(or study.out_dir), or delete {run_dir} to run the cell again") from None


def _log_study_wandb(cfg: Config, root: Path) -> None:
    """The study's own W&B run: the results and comparison tables and the report's plots, in the study's group."""
    run = Run(root, "wandb-study", to_dict(cfg), wandb_mode=cfg.tracking.wandb_mode, project=cfg.tracking.wandb_project,
              entity=cfg.tracking.wandb_entity, job_type="study", group=cfg.tracking.wandb_group or cfg.study.name,
              tags=["study", cfg.task.name, cfg.backbone.name])
    try:
        for name in ("results", "aggregate", "comparisons", "label_efficiency"):
            f = root / f"{name}.csv"
            if f.is_file() and f.stat().st_size > 1:
                run.log_table(f"study/{name}", pd.read_csv(f))
        run.log_images(sorted(root.glob("*.png")), prefix="study/")
    finally:
        run.finish()

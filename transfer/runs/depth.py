"""Training at a fine-tuning depth: freezing and LR groups for a depth, one fit, and the ``auto`` depth search."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from transfer.api import Task, TaskModel
from transfer.config import Config, to_dict
from transfer.engine import FitResult
from transfer.finetune import (LRSpec, build_optimizer, depth_names, freeze_stages, param_groups, set_train_mode,
                               trainable_stages)
from transfer.runs.context import RunContext
from transfer.runs.splits import Splits
from transfer.tracking import Run, training_config


def setup_depth(model: TaskModel, cfg: Config, depth: str
                ) -> tuple[list[str], torch.optim.Optimizer, Callable[[], None]]:
    """Freeze for ``depth``; return the trained stages, the optimiser over their LR groups, and the train-mode hook."""
    stages, opt, train_mode, _ = setup_depth_stages(model, cfg, depth)
    return stages, opt, train_mode


def setup_depth_stages(model: TaskModel, cfg: Config, depth: str
                       ) -> tuple[list[str], torch.optim.Optimizer, Callable[[], None], dict[str, list[str]]]:
    """:func:`setup_depth`, and also the trained stages of each further stage (:meth:`TaskModel.extra_stages`) by
    name: at ``depth``, or at the stage's own depth when it names one."""
    bb = model.backbone
    # only stages that get a gradient: those a head never reads stay frozen (a trainable parameter without a gradient
    # stops DDP with "Expected to have finished reduction")
    stages = [s for s in trainable_stages(depth, bb.stage_names) if s not in model.unused_stages]
    t = cfg.train
    spec = LRSpec(t.lr, t.head_lr_mult, t.bias_lr_mult, t.layer_decay, t.weight_decay)
    extra = {name: [s for s in trainable_stages(x.depth or depth, x.backbone.stage_names) if s not in x.unused_stages]
             for name, x in model.extra_stages().items()}
    # the model's own stage, then any further stage (its own backbone, head and trained stages)
    pairs = [("", bb, model.head, stages, model.reads_stage_outputs)] + [
        (f"{name}.", x.backbone, x.head, extra[name], x.reads_stage_outputs)
        for name, x in model.extra_stages().items()]
    groups: list[dict] = []
    for prefix, b, head, trained, dense in pairs:
        freeze_stages(b, trained)
        if dense:  # parameters of a read stage that come after its feature map (timm's final norm) get no gradient
            unused = b.unused_by_stage_outputs()
            for n, p in b.named_parameters():
                if n in unused:
                    p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
        groups += param_groups(b, head, trained, spec, prefix=prefix)
    opt = build_optimizer(groups, t.optimizer, t.momentum)

    def train_mode() -> None:
        model.train()
        for _, b, _, trained, _ in pairs:
            set_train_mode(b, trained)  # frozen stages keep BatchNorm in eval mode

    return stages, opt, train_mode, extra


@dataclass(frozen=True)
class DepthFit:
    """One fit at a depth: the best validation value and its epoch, the stages that were trained (those of the
    depth that receive a gradient), and the engine's record of the fit."""

    best: float
    best_epoch: int
    trained_stages: list[str]
    result: FitResult
    #: the trained stages of each further (backbone, head) pair by name, e.g. {"refine": [...]}
    extra_trained_stages: dict[str, list[str]] = field(default_factory=dict)


def fit_depth(task: Task, model: TaskModel, cfg: Config, ctx: RunContext, splits: Splits, depth: str, run: Run,
              epochs: int, resume_path: Path | None, tag: str = "", rows_before: int = 0) -> DepthFit:
    """Train ``model`` at ``depth``; leaves the best validation state loaded.

    ``rows_before``: rows of ``metrics.jsonl`` written before this depth (``auto``); rows past them and the
    resumed history are dropped before training, so each epoch is in the file once.
    """
    stages, opt, train_mode, extra = setup_depth_stages(model, cfg, depth)
    t = cfg.train
    engine = ctx.engine(model, opt, grad_clip=t.grad_clip, progress=cfg.tracking.progress,
                        scheduler=torch.optim.lr_scheduler.ExponentialLR(opt, gamma=t.gamma), train_mode=train_mode)
    num_samples = t.steps_per_epoch * t.batch_size if t.steps_per_epoch else None
    loader = ctx.train_loader(splits.train, t.batch_size, num_workers=cfg.data.workers(), num_samples=num_samples,
                              drop_last=len(splits.train) > t.batch_size or num_samples is not None)

    def evaluate(epoch: int) -> dict[str, float]:
        res = task.evaluate(model, splits.val, ctx.device, batch_size=max(t.batch_size, 64))
        return task.summary_metrics(res.metrics)

    rows: list[dict[str, Any]] = []  # this fit's epoch rows, a resumed fit's restored ones first
    warned: set[str] = set()

    def on_start(history: list[dict[str, Any]]) -> None:
        rows[:] = history
        run.keep_metrics(rows_before + len(history))

    def on_epoch(row: dict[str, Any]) -> None:
        run.log_epoch({"depth": depth, **row} if tag else row)
        rows.append(row)
        for msg in task.epoch_warnings(rows):  # e.g. a segmentation whose validation Dice has not left 0
            if msg not in warned:
                warned.add(msg)
                run.warn(msg)

    res = engine.fit(loader, epochs, evaluate=evaluate, monitor=task.monitor, mode=task.mode, patience=t.patience,
                     on_epoch=on_epoch, resume_path=resume_path, max_steps=t.max_steps,
                     resume_config=training_config(to_dict(cfg), "finetune"), resume_data=splits.fingerprint,
                     on_start=on_start)
    line = task.fit_report(res.history, depth)
    if line and run.writes:
        print(line)
    if res.best_metric is None:  # no finite validation value: nothing to select on, keep the last epoch
        run.warn(f"every validation {task.monitor} at depth {depth} was NaN; kept the last epoch's weights")
        return DepthFit(float("nan"), res.epochs_run - 1, stages, res, extra)
    model.load_state_dict(res.best_state)
    return DepthFit(res.best_metric, res.best_epoch, stages, res, extra)


def auto_depth(task: Task, model: TaskModel, cfg: Config, ctx: RunContext, splits: Splits, run: Run,
               curve: list[dict[str, Any]], resumed: dict[str, Any] | None = None) -> tuple[str, DepthFit]:
    """Tajbakhsh et al.'s incremental procedure: head only, then one more stage at a time while val improves.

    Each depth continues from the best weights of the previous one; the best
    model over all depths is kept. Each depth has its resume state (``last_<depth>.pt``); ``resumed`` gets
    ``epoch``/``depth`` of the last depth that continued from one. Returns the chosen depth and its fit.
    """
    t = cfg.train
    epochs = t.auto_epochs or t.epochs
    sign = 1.0 if task.mode == "max" else -1.0
    names = [d for d in depth_names(model.backbone.stage_names) if d != "all"]
    best_depth, best, best_state = None, None, None
    rows = 0
    for depth in names:
        stages = trainable_stages(depth, model.backbone.stage_names)
        if stages and stages[0] in model.unused_stages:  # this depth adds only stages no head reads: as the last
            continue
        fit = fit_depth(task, model, cfg, ctx, splits, depth, run, epochs, run.dir / f"last_{depth}.pt",
                        tag=depth, rows_before=rows)
        rows += fit.result.epochs_run
        if fit.result.resumed_from is not None and resumed is not None:
            resumed.update(epoch=fit.result.resumed_from, depth=depth)
        curve.append({"depth": depth, "val": fit.best, "best_epoch": fit.best_epoch})
        run.write_json("depth_curve.json", curve)
        if best is None or sign * (fit.best - best.best) > t.auto_tolerance:
            best_depth, best = depth, fit
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            break
    assert best_state is not None and best_depth is not None and best is not None
    model.load_state_dict(best_state)
    return best_depth, best

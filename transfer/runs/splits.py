"""The labelled splits of a stage-2 run: train (at its label fraction), validation, test."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transfer.api import Task
from transfer.config import Config
from transfer.data.datasets import ImageDataset
from transfer.data.splits import nested_fraction, validation_split
from transfer.errors import DatasetError


@dataclass
class Splits:
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset | None
    info: dict[str, Any]


def prepare_data(task: Task, cfg: Config) -> Splits:
    """Train / validation / test; validation carved (stratified) from training when not given.

    The label fraction is taken from the training part *after* the validation
    split, so every fraction is selected on the same validation images.
    """
    d = cfg.data
    if not d.train:
        raise DatasetError("data.train is empty: name the training split in the config or with --set data.train=...")
    full = task.load_split(d.train, "train")
    if d.val:
        train, val = full, task.load_split(d.val, "val")
        carved = False
    else:
        groups = full.meta.get("groups")
        tr, va = validation_split(len(full), d.val_fraction, cfg.seed, task.label_array(full), groups)
        train, val = full.subset(tr), full.subset(va)
        carved = True
    n_before = len(train)
    keep = nested_fraction(len(train), d.label_fraction, cfg.seed, task.label_array(train),
                           task.info.get("class_names"), source=f"training split {d.train}")
    train = train.subset(keep)
    test = task.load_split(d.test, "test") if d.test else None
    info = {"n_train": len(train), "n_train_before_fraction": n_before, "n_val": len(val),
            "n_test": len(test) if test is not None else 0, "val_carved_from_train": carved,
            "skipped": [vars(s) for s in task.skipped]}
    if task.skipped:
        print(f"warning: skipped {len(task.skipped)} items (unreadable images or invalid annotations; listed in "
              f"summary.json), e.g. {task.skipped[0].path}: {task.skipped[0].reason}")
    return Splits(train, val, test, info)

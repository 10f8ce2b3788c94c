"""The labelled splits of a stage-2 run: train (at its label fraction), validation, test."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from transfer.api import Task
from transfer.config import Config
from transfer.config.io import ConfigError
from transfer.data.datasets import ImageDataset, Skipped
from transfer.data.folds import fold_split, read_folds
from transfer.data.fingerprint import DataFingerprint, data_fingerprint
from transfer.data.inventory import describe_skipped
from transfer.data.overlap import shared_images
from transfer.data.splits import nested_fraction, validation_split
from transfer.errors import DatasetError


@dataclass
class Splits:
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset | None
    info: dict[str, Any]
    #: what the run trains and is scored on, stored with its resume states (a resume on changed data is refused)
    fingerprint: DataFingerprint = field(default_factory=dict)


def load_listed(task: Task, spec: str | list[str], which: str, key: str = "data.train") -> ImageDataset:
    """``task.load_split(spec, which)``; a list of listings (``key`` names where it came from) only for a task that
    reads lists, refused before anything is read for any other."""
    if isinstance(spec, list) and not task.reads_listing_lists:
        raise ConfigError(f"{key}: task {task.name} reads one listing per split, got a list {spec}")
    return task.load_split(spec, which)


def prepare_data(task: Task, cfg: Config) -> Splits:
    """Train / validation / test; validation carved (stratified) from training when not given.

    With ``data.fold`` the test split is that fold of the training listings (``data.folds``) and training the other
    folds, before validation is carved. The label fraction is taken from the training part *after* the validation
    split, so every fraction is selected on the same validation images.
    """
    d = cfg.data
    split_seed = cfg.seed if d.split_seed is None else d.split_seed
    if not d.train:
        raise DatasetError("data.train is empty: name the training split in the config or with --set data.train=...")
    full = load_listed(task, d.train, "train")
    fold_test, fold_info = None, {}
    if d.fold is not None:
        full, fold_test, fold_info = _hold_out_fold(full, d.folds, d.fold, task.skipped)
    if d.val:
        train, val = full, task.load_split(d.val, "val")
        carved = False
    else:
        groups = full.meta.get("groups")
        tr, va = validation_split(len(full), d.val_fraction, split_seed, task.label_array(full), groups,
                                  task.info.get("class_names"), source=str(d.train))
        train, val = full.subset(tr), full.subset(va)
        carved = True
    n_before = len(train)
    keep = nested_fraction(len(train), d.label_fraction, split_seed, task.label_array(train),
                           task.info.get("class_names"), source=f"training split {d.train}")
    train = train.subset(keep)
    test = task.load_split(d.test, "test") if d.test else fold_test
    test_source = d.test or (f"{d.folds} (fold {d.fold})" if d.fold is not None else None)
    # every split holds what training and scoring need (e.g. every class), checked before anything trains
    for which, ds, source in (("train", train, d.train), ("val", val, d.val or f"{d.train} (carved)"),
                              ("test", test, test_source)):
        if ds is not None:
            task.check_split(ds, which, str(source))
    info = {"n_train": len(train), "n_train_before_fraction": n_before, "n_val": len(val),
            "n_test": len(test) if test is not None else 0, "val_carved_from_train": carved, "split_seed": split_seed,
            **fold_info,
            **_overlaps(train, {"val": val, "test": test}), **task.data_report,
            "skipped_counts": dict(Counter(s.kind for s in task.skipped)),
            "skipped": [vars(s) for s in task.skipped]}
    if task.skipped:
        print(describe_skipped(task.skipped), file=sys.stderr)
    return Splits(train, val, test, info, data_fingerprint({"train": train, "val": val, "test": test}))


def _hold_out_fold(full: ImageDataset, folds: str, fold: int, skipped: list[Skipped]
                   ) -> tuple[ImageDataset, ImageDataset, dict[str, Any]]:
    """(training part, test split, what ``summary.json`` records) of ``full`` for fold ``fold`` of the folds file."""
    path = Path(folds).expanduser()
    assignment = read_folds(path)
    tr, te = fold_split(full.ids, assignment, fold, str(path), skipped=[s.path for s in skipped])
    if not len(tr) or not len(te):
        raise DatasetError(f"{path}: fold {fold} leaves {len(tr)} training and {len(te)} test images")
    return full.subset(tr), full.subset(te), {"folds": str(path), "fold": fold,
                                              "n_folds": int(assignment.max()) + 1}


def _overlaps(train: ImageDataset, others: dict[str, ImageDataset | None]) -> dict[str, int]:
    """``<split>_overlaps_train``: images of a split that are training images too (then it is not held out)."""
    present = {name: ds for name, ds in others.items() if ds is not None}
    out = {}
    for name, shared in shared_images(train, present).items():
        out[f"{name}_overlaps_train"] = len(shared)
        if shared:
            print(f"WARNING: {len(shared)} of {len(present[name])} {name} images are also training images (same "
                  f"pixels), e.g. {shared[0][0]} = {shared[0][1]}: {name} metrics are not held out", file=sys.stderr)
    return out

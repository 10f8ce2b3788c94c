"""A study directory's ``manifest.json``: the grid, the resolved config and the fingerprint of its training part.

The first process of a study writes it; every later one (a restart, a shard, a cluster job) compares its own
config with it before running anything, so cells trained under two configs are never mixed in one table. Keys
that only say where or how a study runs (``study.*``, ``tracking.*``, device) are not part of the fingerprint:
growing the grid (another seed) or moving to another machine is allowed.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transfer.config import Config
from transfer.config.io import from_dict, to_dict
from transfer.errors import MedTransferError
from transfer.studies.cells import Cell
from transfer.tracking import atomic_write_json, config_changes, config_fingerprint, training_config

MANIFEST = "manifest.json"
#: keys each cell sets for itself (its grid coordinates), so they are not part of the study's fingerprint
CELL_KEYS: tuple[str, ...] = ("init", "seed", "train.depth", "data.label_fraction")


class StudyConfigError(MedTransferError):
    """A study directory holds cells of another config."""


def study_key(cfg: Config) -> dict[str, Any]:
    """The flat training config every cell shares; stage-1 keys count when an init is pretrained by the study."""
    key = {k: v for k, v in training_config(to_dict(cfg), "finetune").items() if k not in CELL_KEYS}
    if cfg.study.variants:  # each variant's overrides are part of its cells' training config
        key["study.variants"] = to_dict(cfg.study.variants)
    if any(i.startswith("pretrain:") for i in cfg.study.inits):
        key.update({k: v for k, v in training_config(to_dict(cfg), "pretrain").items()
                    if k.startswith("pretrain.")})
    return key


def build_manifest(cfg: Config, cells: list[str]) -> dict[str, Any]:
    st = cfg.study
    key = study_key(cfg)
    return {"format": 1, "name": st.name, "fingerprint": config_fingerprint(key),
            "grid": {"inits": list(st.inits), "depths": list(st.depths), "label_fractions": list(st.label_fractions),
                     "seeds": list(st.seeds), **({"variants": list(st.variants)} if st.variants else {})},
            "cells": cells, "training_config": key, "config": to_dict(cfg), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}


def read_manifest(root: Path) -> dict[str, Any]:
    import json

    path = Path(root) / MANIFEST
    if not path.is_file():
        raise StudyConfigError(f"{path}: no study manifest here (is {root} a study directory written by "
                               f"`medtransfer study`?)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise StudyConfigError(f"{path}: unreadable study manifest ({e})") from None


def manifest_config(root: Path) -> Config:
    """The resolved config a study directory was run with."""
    return from_dict(Config, read_manifest(root)["config"], source=str(Path(root) / MANIFEST))


def check_manifest(cfg: Config, root: Path, cells: list[Cell], finished: list[Cell], *, write: bool = True) -> None:
    """Write or confirm ``root/manifest.json``; a changed training config is a :class:`StudyConfigError` naming
    the changed keys and the finished cells it would be mixed with. ``write=False`` (a dry run) only checks."""
    path = Path(root) / MANIFEST
    new = build_manifest(cfg, [c.name for c in cells])
    if path.is_file():
        old = read_manifest(root)
        changes = config_changes(old.get("training_config", {}), new["training_config"])
        affected = affected_cells(changes, finished) if changes else []
        # a change no finished cell was trained under (their runs deleted, or only stage-1 keys changed before any
        # stage-1 cell finished) mixes nothing: the study goes on under the new config, and a stale stage-1
        # checkpoint is refused on its own (grid.stage_one_finished)
        if affected:
            raise StudyConfigError(
                f"{path}: the config changed since this study ran ({'; '.join(changes)}); "
                f"{len(affected)} finished cell(s) were trained with the old one ({', '.join(affected[:6])}"
                f"{', ...' if len(affected) > 6 else ''}): set a new study.name (or study.out_dir), or delete "
                f"{Path(root) / 'runs'} to start the study over")
        if not changes and old.get("cells") == new["cells"]:
            return  # (a grid that grew or shrank under the same training config is this study's new grid)
    if write:
        atomic_write_json(path, new)


def affected_cells(changes: list[str], finished: list[Cell]) -> list[str]:
    """The finished cells a change touches: stage-1 keys only touch cells initialised from a pretrained method."""
    if all(c.startswith("pretrain.") for c in changes):
        return [c.name for c in finished if c.init.startswith("pretrain:")]
    return [c.name for c in finished]

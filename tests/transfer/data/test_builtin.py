"""Built-in datasets: found by name wherever the package is installed, with no data folder beside it."""
from __future__ import annotations

from pathlib import Path

import pytest

from transfer.api import TASKS
from transfer.config import Config, load_config
from transfer.data.builtin import BUILTIN_DATASETS, builtin_path
from transfer.errors import DatasetError

QUICKSTART = Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml"


def test_every_builtin_dataset_ships_with_its_licence():
    for name, file in BUILTIN_DATASETS.items():
        path = builtin_path(name)
        assert path.name == file and path.stat().st_size > 0
        assert (path.parent / f"{name.upper()}_LICENSE.md").is_file()


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(DatasetError, match="builtin:pneumoniamnist"):
        builtin_path("chestmnist")


def test_quickstart_data_loads_without_a_data_root(tmp_path):
    cfg = load_config(Config, QUICKSTART, [f"data.root={tmp_path / 'nothing-here'}"])
    task = TASKS.get(cfg.task.name)(cfg)
    val = task.load_split(cfg.data.val, "val")
    assert len(val) == 524 and tuple(val.images.shape[1:]) == (1, *cfg.data.image_size)
    assert sorted(set(val.target_array("label").tolist())) == [0, 1]

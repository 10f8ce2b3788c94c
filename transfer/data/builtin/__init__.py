"""Datasets that ship with the package, named ``builtin:<name>`` in configs (e.g. ``builtin:pneumoniamnist#train``).

Only small, openly licensed sets live here, so the quickstart runs on a machine with nothing but the install;
each comes with its attribution and licence beside it (``<NAME>_LICENSE.md``).
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from transfer.errors import DatasetError

PREFIX = "builtin:"

#: name -> file in this package
BUILTIN_DATASETS = {
    "pneumoniamnist": "pneumoniamnist.npz",  # MedMNIST v2 PneumoniaMNIST, 28x28, CC BY 4.0
}


def builtin_path(name: str) -> Path:
    """The file of built-in dataset ``name`` (installed with the package)."""
    if name not in BUILTIN_DATASETS:
        raise DatasetError(f"unknown built-in dataset {PREFIX}{name}; built-in: "
                           f"{', '.join(PREFIX + n for n in sorted(BUILTIN_DATASETS))}")
    path = Path(str(files(__package__) / BUILTIN_DATASETS[name]))
    if not path.is_file():
        raise DatasetError(f"{path}: the built-in dataset {PREFIX}{name} is missing from this installation "
                           f"(reinstall medtransfer)")
    return path

"""The file a command writes its table to (``predict --out``, ``evaluate --out``), checked before any work."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from transfer.errors import MedTransferError
from transfer.tracking import atomic_write_text


def output_file(out: Path, option: str = "--out") -> Path:
    """``out``, refused when it names a folder: pandas would find out at the very end, as an IsADirectoryError
    traceback after all the predictions were made."""
    if out.is_dir():
        raise MedTransferError(f"'{out}': {option} names a folder; name a file, e.g. '{out / 'predictions.csv'}'")
    return out


def write_table(df: pd.DataFrame, out: Path) -> None:
    """``df`` as CSV at ``out``, atomically (a full disk or read-only folder is one line naming it)."""
    atomic_write_text(out, df.to_csv(index=False))

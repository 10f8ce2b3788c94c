"""Reading a listing CSV (image paths and their labels or landmarks) with one-line errors naming the file."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from transfer.errors import DatasetError

__all__ = ["read_listing", "show_cell"]


def show_cell(value: object) -> str:
    """A CSV cell as the user wrote it: ``'0.1mm'`` for text, ``0`` for a number (numpy's repr, ``np.int64(0)``,
    is not what the file says)."""
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    return repr(value) if isinstance(value, str) else str(value)


def read_listing(path: Path, what: str = "CSV") -> pd.DataFrame:
    """The rows of ``path``; absent, empty (0 bytes), unparsable and header-only files are a DatasetError."""
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: {what} is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: {what} cannot be parsed ({type(e).__name__}: {str(e).strip()})") from None
    if df.empty:
        raise DatasetError(f"{path}: {what} has a header ({', '.join(map(str, df.columns))}) but no rows")
    return df

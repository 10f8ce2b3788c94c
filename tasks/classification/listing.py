"""Row checks of a classification CSV (``path,label[,group]``), before any image is read: one line each, naming
the file and its lines."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from transfer.errors import DatasetError


def check_label_rows(df: pd.DataFrame, csv: Path) -> None:
    """Every row has a label, and no row repeats the header.

    An empty or NaN label would otherwise become the class 'nan' (or fail deep in a sort); a second header row
    (two CSVs pasted together) would be reported as a missing image called 'path'.
    """
    header = [str(c) for c in df.columns]
    for i, row in enumerate(df.itertuples(index=False)):
        if [str(v).strip() for v in row] == header:
            raise DatasetError(f"'{csv}', line {i + 2}: repeats the header row ({', '.join(header)}); "
                               "remove it (were two CSVs pasted together?)")
    labels = df["label"]
    missing = labels.isna() | (labels.astype(str).str.strip() == "")
    if missing.any():
        rows = [str(i + 2) for i in missing[missing].index[:5]]
        more = f" and {int(missing.sum()) - 5} more" if missing.sum() > 5 else ""
        raise DatasetError(f"'{csv}', line{'s' if len(rows) > 1 else ''} {', '.join(rows)}{more}: the label is "
                           "empty or missing (NaN, NA, null); every image needs its class")


def check_listed_once(paths: list[Path], labels: list[str], csv: Path) -> None:
    """Each image on one row: listed twice it would weigh twice (and could land in training and validation);
    listed with two labels it would be trained as both classes."""
    resolved = pd.Series([str(p.resolve()) for p in paths])
    repeated = resolved[resolved.duplicated(keep=False)]
    if repeated.empty:
        return
    rows = [i for i, r in enumerate(resolved) if r == repeated.iloc[0]]
    found = sorted({labels[i] for i in rows})
    what = (f"with the same label {found[0]!r} (a duplicate row)" if len(found) == 1
            else f"with different labels {', '.join(map(repr, found))}")
    raise DatasetError(f"'{csv}', lines {', '.join(str(i + 2) for i in rows)}: image '{paths[rows[0]].name}' is "
                       f"listed {len(rows)} times, {what}; list each image once")

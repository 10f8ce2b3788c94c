"""One naming of images in every output table (predict, evaluate, ``predictions_*.csv``), so the tables join.

``image`` is the bare file name everywhere (the tasks' split datasets name most images that way, and predict's
inputs may be given by any path); ``path``, the second column, keeps where the file was read when the input named
it by a path (predict's command line as given, classification folders and CSVs), so nothing is lost.
"""
from __future__ import annotations

from pathlib import PurePath

import pandas as pd


def with_image_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``image`` as the bare file name and, when any image was named by a path, ``path`` beside it."""
    if "image" not in df.columns or df.empty:
        return df
    given = df["image"].astype(str)
    names = given.map(lambda s: PurePath(s).name)
    out = df.copy()
    out["image"] = names
    if (names != given).any():
        out.insert(list(out.columns).index("image") + 1, "path", given)
    return out

"""A fixed K-fold cross-validation assignment of labelled images, kept in a small file (``image,fold``).

Cross-validation over a dataset's labelled images (ISBI 2015: 001-300, the challenge's training set and Test1
together) needs the same folds in every run, on every machine and in every later version of the code, so the
assignment is made once, written down and committed, not drawn again in each run. It is scikit-learn's
``KFold(shuffle=True, random_state=seed)`` over the *sorted* image names, so the same names and seed give the same
file whatever order the listings come in. Images are named by their bare file name, as in every output table
(:mod:`transfer.runs.image_columns`).

A run uses it through ``data.folds`` + ``data.fold``: fold ``k`` is its test split, the other folds its training
split (validation carved from those as usual).
"""
from __future__ import annotations

from pathlib import Path, PurePath
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from transfer.data.tables import read_listing, show_cell
from transfer.errors import DatasetError

__all__ = ["FOLD_COLUMNS", "LISTING_IMAGE_COLUMNS", "fold_split", "image_key", "listing_images", "make_folds",
           "read_folds"]

FOLD_COLUMNS = ("image", "fold")
#: the image column of a listing CSV, first found wins (landmark CSVs: ``image_path``; classification: ``path``)
LISTING_IMAGE_COLUMNS = ("image_path", "image", "path", "file")


def image_key(image_id: str) -> str:
    """The name an image has in a folds file: its bare file name (a dataset's ids may be paths)."""
    return PurePath(str(image_id).replace("\\", "/")).name


def make_folds(images: Sequence[str], k: int, seed: int) -> pd.DataFrame:
    """``image, fold`` (fold in 0..k-1, the images sorted) from KFold(shuffle=True, random_state=seed) on the sorted
    names: deterministic, disjoint, covering, and fold sizes differing by at most one."""
    names = sorted(image_key(i) for i in images)
    repeated = pd.Series(names)[pd.Series(names).duplicated()]
    if len(repeated):
        raise DatasetError(f"image {repeated.iloc[0]!r} is listed more than once (images are named by their file "
                           "name in a folds file, so two files of that name in different folders are ambiguous)")
    if k < 2:
        raise DatasetError(f"--k must be >= 2 folds, got {k}")
    if len(names) < k:
        raise DatasetError(f"{len(names)} images cannot make {k} folds")
    fold = np.empty(len(names), dtype=np.int64)
    for f, (_, test) in enumerate(KFold(n_splits=k, shuffle=True, random_state=seed).split(names)):
        fold[test] = f
    return pd.DataFrame({"image": names, "fold": fold})


def listing_images(csv: Path, column: str | None = None) -> list[str]:
    """The image names of a listing CSV: ``column``, else the first of :data:`LISTING_IMAGE_COLUMNS` it has."""
    df = read_listing(csv, "listing CSV")
    col = column or next((c for c in LISTING_IMAGE_COLUMNS if c in df.columns), None)
    if col is None or col not in df.columns:
        wanted = repr(column) if column else f"one of {list(LISTING_IMAGE_COLUMNS)}"
        raise DatasetError(f"{csv}: no image column {wanted}; columns: {list(df.columns)[:6]}")
    empty = df[col].isna()
    if empty.any():
        raise DatasetError(f"{csv}, line {int(np.flatnonzero(empty)[0]) + 2}: column {col} is empty")
    return [image_key(v) for v in df[col].astype(str)]


def read_folds(path: Path) -> pd.Series:
    """The fold of each image (a Series indexed by image name) of a folds file, checked: columns ``image, fold``,
    each image once, folds the integers 0..K-1 with none empty."""
    df = read_listing(path, "folds file")
    if list(df.columns) != list(FOLD_COLUMNS):
        raise DatasetError(f"{path}: a folds file has the columns {', '.join(FOLD_COLUMNS)}, got "
                           f"{', '.join(map(str, df.columns))} (write one with `medtransfer folds make`)")
    fold = pd.to_numeric(df["fold"], errors="coerce")
    bad = np.flatnonzero(~(fold.notna() & (fold == fold.round()) & (fold >= 0)).to_numpy())
    if len(bad):
        r = int(bad[0])
        raise DatasetError(f"{path}, line {r + 2} ({df['image'].iloc[r]}): fold {show_cell(df['fold'].iloc[r])} "
                           "is not an integer >= 0")
    names = df["image"].astype(str).map(image_key)
    repeated = np.flatnonzero(names.duplicated(keep=False).to_numpy())
    if len(repeated):
        raise DatasetError(f"{path}, lines {', '.join(str(r + 2) for r in repeated[:4])}: image "
                           f"{names.iloc[repeated[0]]} is listed more than once")
    fold = fold.astype(np.int64)
    missing = sorted(set(range(int(fold.max()) + 1)) - set(fold))
    if missing:
        raise DatasetError(f"{path}: folds are 0..{int(fold.max())} but fold {missing[0]} has no image")
    return pd.Series(fold.to_numpy(), index=names.to_numpy(), name="fold")


def fold_split(ids: Sequence[str], folds: pd.Series, fold: int, source: str,
               skipped: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of a dataset's ``ids``: test = the images of ``fold``, train = those of every other fold.

    The images and the file must match (``source`` names the file in the errors): an image without a fold would go
    to neither split, and an image of the file missing from the listings (other than ``skipped``: unreadable files
    the run skips and reports) means the folds were made from other listings, so fold k is not what it says.
    """
    k = int(folds.max()) + 1
    if not 0 <= fold < k:
        raise DatasetError(f"data.fold: {fold} is out of range: {source} has folds 0..{k - 1}")
    keys = [image_key(i) for i in ids]
    absent = [i for i in keys if i not in folds.index]
    if absent:
        raise DatasetError(f"{source}: image {absent[0]} (of the training listings) has no fold"
                           + (f", nor {len(absent) - 1} more" if len(absent) > 1 else "")
                           + "; make the folds file from every listing in data.train")
    repeated = pd.Series(keys)[pd.Series(keys).duplicated()]
    if len(repeated):
        raise DatasetError(f"{source}: two images of the training listings are named {repeated.iloc[0]} (a folds "
                           "file names images by their file name)")
    unlisted = sorted(set(folds.index) - set(keys) - {image_key(p) for p in skipped})
    if unlisted:
        raise DatasetError(f"{source}: {len(unlisted)} image(s) of the folds file are in no listing of data.train "
                           f"(e.g. {unlisted[0]}); list every CSV the folds were made from")
    assigned = folds.loc[keys].to_numpy()
    return np.flatnonzero(assigned != fold), np.flatnonzero(assigned == fold)

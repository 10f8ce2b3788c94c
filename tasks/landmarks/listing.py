"""A landmark CSV, read and checked row by row before any image is decoded or any epoch trained.

Columns: an image column, ``<k>_x, <k>_y`` for k = 1..L in original pixels,
optional ``spacing`` (mm per pixel). Every check names the file, the line (the
header is line 1) and the column, so every split fails before training, not
after it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.data.tables import read_listing, show_cell
from transfer.errors import DatasetError

_COL = re.compile(r"^(\d+)_([xy])$")
#: a name that reads as a coordinate but is not ``<k>_x`` / ``<k>_y``: upper case, other separators, prefixes
_COORD_LIKE = re.compile(r"^\s*(?:l|lm|landmark|p|pt|point)?[ _-]?(?:\d+[ _-]?[xy]|[xy][ _-]?\d+)\s*$", re.IGNORECASE)
#: pandas renames a repeated header ``a`` to ``a.1``
_REPEATED = re.compile(r"^(.+)\.(\d+)$")
IMAGE_COLUMNS = ("image_path", "image", "path", "file")
_MASK_HINT = "; task.landmarks.missing=mask leaves landmarks an annotator could not place out of the loss and metrics"


def _check_header(df: pd.DataFrame, csv: Path) -> None:
    """No repeated column, and no coordinate-like column the landmark set would silently ignore."""
    names = [str(c) for c in df.columns]
    for c in names:
        m = _REPEATED.match(c)
        if m and m.group(1) in names:
            raise DatasetError(f"{csv}: column {m.group(1)!r} appears more than once in the header")
        if not _COL.match(c) and _COORD_LIKE.match(c):
            raise DatasetError(f"{csv}: column {c!r} looks like a landmark coordinate but is not named <k>_x / <k>_y "
                               f"(lower case, k = 1..L); rename or remove it")


def read_landmark_csv(csv: Path) -> tuple[pd.DataFrame, str, list[tuple[str, str]]]:
    """The CSV, its image column, and the (x, y) column names of landmarks 1..L; checks the header."""
    df = read_listing(csv, "landmark CSV")
    image_col = next((c for c in IMAGE_COLUMNS if c in df.columns), None)
    if image_col is None:
        raise DatasetError(f"{csv}: no image column (one of {list(IMAGE_COLUMNS)}); columns: {list(df.columns)[:6]}...")
    _check_header(df, csv)
    idx: dict[int, dict[str, str]] = {}
    for c in df.columns:
        m = _COL.match(str(c))
        if m:
            idx.setdefault(int(m.group(1)), {})[m.group(2)] = c
    if not idx:
        raise DatasetError(f"{csv}: no landmark columns named <k>_x, <k>_y")
    ks = sorted(idx)
    if ks != list(range(1, len(ks) + 1)):
        raise DatasetError(f"{csv}: landmark numbers {ks} are not 1..{len(ks)}")
    for k in ks:
        for axis in "xy":
            if axis not in idx[k]:
                raise DatasetError(f"{csv}: missing column {k}_{axis}")
    return df, image_col, [(idx[k]["x"], idx[k]["y"]) for k in ks]


def _column_values(df: pd.DataFrame, image_col: str, c: str, csv: Path, missing: str) -> np.ndarray:
    """Column ``c`` as floats: text or infinity is an error; an empty cell is NaN under ``missing="mask"``."""
    raw = df[c]
    vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    empty = raw.isna().to_numpy()
    bad = np.flatnonzero(~np.isfinite(vals) & (~empty | (missing != "mask")))
    if len(bad):
        r = int(bad[0])
        value, hint = ("(empty)", _MASK_HINT) if empty[r] else (show_cell(raw.iloc[r]), "")
        raise DatasetError(f"{csv}, line {r + 2} ({df[image_col].iloc[r]}): column {c} has "
                           f"non-numeric or missing value {value}{hint}")
    return vals


def landmark_coordinates(df: pd.DataFrame, image_col: str, columns: list[tuple[str, str]], csv: Path,
                         missing: str = "error") -> tuple[np.ndarray, np.ndarray]:
    """(N, L, 2) original pixel (x, y) of every row (NaN where masked) and (N, L) ``visible``.

    An empty cell is an error unless ``missing="mask"``; a landmark with x but no y (or y but no x) always is.
    """
    coords = np.zeros((len(df), len(columns), 2))
    for k, pair in enumerate(columns):
        for axis, c in enumerate(pair):
            coords[:, k, axis] = _column_values(df, image_col, c, csv, missing)
    finite = np.isfinite(coords)
    half = np.argwhere(finite[..., 0] != finite[..., 1])
    if len(half):
        r, k = (int(v) for v in half[0])
        raise DatasetError(f"{csv}, line {r + 2} ({df[image_col].iloc[r]}): landmark {k + 1} has one coordinate "
                           f"but not the other ({columns[k][0]}={show_cell(df[columns[k][0]].iloc[r])}, "
                           f"{columns[k][1]}={show_cell(df[columns[k][1]].iloc[r])})")
    return coords, finite.all(-1)


def image_paths(images: pd.Series, csv: Path, base: Path) -> list[Path]:
    """The image of every row, relative to ``base`` unless absolute; each must exist."""
    paths = []
    for r, p in enumerate(images.astype(str)):
        full = Path(p) if Path(p).is_absolute() else base / p
        if not full.is_file():
            # the path quoted: a trailing space (a CSV typo) would be invisible
            raise DatasetError(f"{csv}, line {r + 2}: image '{full}' does not exist")
        paths.append(full)
    return paths


def check_images_once(paths: list[Path], coords: np.ndarray, csv: Path) -> None:
    """Each image on one row: a repeated image would weigh twice, and could land in training and validation."""
    resolved = pd.Series([str(p.resolve()) for p in paths])
    repeated = resolved[resolved.duplicated(keep=False)]
    if repeated.empty:
        return
    rows = np.flatnonzero(resolved == repeated.iloc[0])
    same = all(np.array_equal(coords[rows[0]], coords[r], equal_nan=True) for r in rows[1:])
    what = "the same coordinates (a duplicate row)" if same else "different coordinates"
    raise DatasetError(f"{csv}, lines {', '.join(str(r + 2) for r in rows)}: image {paths[rows[0]].name} is listed "
                       f"{len(rows)} times, with {what}; list each image once")


def spacing_column(df: pd.DataFrame, image_col: str, csv: Path) -> np.ndarray | None:
    """The ``spacing`` column (mm per pixel, > 0) of every row, or None without one."""
    if "spacing" not in df.columns:
        return None
    vals = pd.to_numeric(df["spacing"], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~(np.isfinite(vals) & (vals > 0)))
    if len(bad):
        r = int(bad[0])
        raise DatasetError(f"{csv}, line {r + 2} ({df[image_col].iloc[r]}): column spacing has "
                           f"{show_cell(df['spacing'].iloc[r])}, not a positive number of mm per pixel")
    return vals


def check_inside_images(coords: np.ndarray, sizes_hw: np.ndarray, kept: np.ndarray, paths: list[Path],
                        csv: Path) -> None:
    """Every landmark (N, L, 2) of the kept rows lies inside its original (H, W) image (masked NaN ones pass)."""
    for i, r in enumerate(kept):
        h, w = sizes_hw[i]
        x, y = coords[i, :, 0], coords[i, :, 1]
        out = np.flatnonzero((x < 0) | (x >= w) | (y < 0) | (y >= h))
        if len(out):
            k = int(out[0])
            raise DatasetError(f"{csv}, line {int(r) + 2} ({paths[r].name}): landmark {k + 1} at "
                               f"({coords[i, k, 0]:g}, {coords[i, k, 1]:g}) lies outside the {w}x{h} image")


@dataclass
class LandmarkRows:
    """The checked rows of one landmark CSV, before any image is decoded."""

    csv: Path
    paths: list[Path]  #: the image of every row
    coords: np.ndarray  #: (N, L, 2) original pixel (x, y), NaN where masked
    visible: np.ndarray  #: (N, L) bool
    spacing: np.ndarray | None  #: (N,) the ``spacing`` column (mm per pixel), None without one


def read_landmark_rows(csv: Path, base: Path, missing: str) -> LandmarkRows:
    """Every check of one CSV that needs no image: header, values, image files present, each image once."""
    df, image_col, columns = read_landmark_csv(csv)
    coords, visible = landmark_coordinates(df, image_col, columns, csv, missing)
    spacing = spacing_column(df, image_col, csv)
    paths = image_paths(df[image_col], csv, base)
    check_images_once(paths, coords, csv)
    return LandmarkRows(csv, paths, coords, visible, spacing)


def check_in_one_listing(parts: list[LandmarkRows]) -> None:
    """Listings read as one split share no image: it would weigh twice, and could land in training and test."""
    seen: dict[str, Path] = {}
    for part in parts:
        for r, p in enumerate(part.paths):
            key = str(p.resolve())
            if key in seen and seen[key] != part.csv:
                raise DatasetError(f"{part.csv}, line {r + 2}: image {p.name} is also listed in {seen[key]}; the "
                                   "listings of one split must not share an image")
            seen[key] = part.csv

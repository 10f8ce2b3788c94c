"""A second observer's masks scored against the reference with the task's own metrics (the human bar).

    python -m tasks.segmentation.observer ../shared/data/drive/test \
        --truth 1st_manual --other 2nd_manual --fov mask --values 0 255 --other-values 0 1

Files of the three folders are paired by the id that ``--id-pattern`` (a regex,
first group) finds in their names (DRIVE: ``01_manual1.gif``, ``01_manual2.gif``,
``01_test_mask.gif`` -> id ``01``). Prints per-image rows and the means as JSON.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from tasks.segmentation.metrics import dataset_means, image_metrics
from tasks.segmentation.task import read_mask, to_class_index
from transfer.errors import DatasetError


def _by_id(folder: Path, pattern: re.Pattern[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        m = pattern.search(f.name)
        if f.is_file() and m:
            if m.group(1) in out:
                raise DatasetError(f"{folder}: two files with id {m.group(1)} ({out[m.group(1)].name}, {f.name})")
            out[m.group(1)] = f
    return out


def observer_agreement(root: Path, truth: str, other: str, fov: str | None, values: list[int],
                       id_pattern: str = r"^(\d+)_", spacing_mm: float | None = None,
                       other_values: list[int] | None = None) -> dict[str, Any]:
    """Per-image and mean metrics of ``other`` against ``truth`` (inside ``fov``), as for a model's prediction."""
    rx = re.compile(id_pattern)
    t, o = _by_id(root / truth, rx), _by_id(root / other, rx)
    f = _by_id(root / fov, rx) if fov else {}
    if set(t) != set(o):
        raise DatasetError(f"{root}: ids differ between {truth} and {other}: {sorted(set(t) ^ set(o))}")
    rows = []
    for k in sorted(t):
        tm = to_class_index(read_mask(t[k]), values, t[k])
        om = to_class_index(read_mask(o[k]), other_values or values, o[k])
        if tm.shape != om.shape:
            raise DatasetError(f"{o[k]}: size {om.shape} differs from {t[k]} {tm.shape}")
        valid = read_mask(f[k]) > 0 if fov else None
        rows.append({"id": k, **image_metrics(om, tm, valid, len(values), None, spacing_mm)})
    means = dataset_means([{kk: v for kk, v in r.items() if kk != "id"} for r in rows])
    return {"n_images": len(rows), "means": means, "images": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--truth", required=True)
    p.add_argument("--other", required=True)
    p.add_argument("--fov")
    p.add_argument("--values", type=int, nargs="+", default=[0, 255])
    p.add_argument("--other-values", type=int, nargs="+", help="class values of --other (default: --values); "
                   "DRIVE's 2nd_manual GIFs are palette indices 0/1")
    p.add_argument("--id-pattern", default=r"^(\d+)_")
    p.add_argument("--spacing-mm", type=float)
    a = p.parse_args(argv)
    try:
        res = observer_agreement(a.root, a.truth, a.other, a.fov, a.values, a.id_pattern, a.spacing_mm, a.other_values)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

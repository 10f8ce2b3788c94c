"""Predictions of a trained model for new, unlabelled images (files or folders)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from transfer.data.datasets import ImageDataset, Skipped, load_images
from transfer.data.inventory import describe_skipped, scan_folder
from transfer.data.readers import supported_suffixes
from transfer.engine import resolve_device
from transfer.errors import MedTransferError
from transfer.precision import Precision
from transfer.runs.image_columns import with_image_columns
from transfer.runs.model_io import load_model
from transfer.runs.output_file import output_file, write_table
from transfer.tracking import atomic_write_text


def skipped_csv(out: Path) -> Path:
    """The sidecar of ``out`` listing the inputs ``--on-bad skip`` left out: ``<out>.skipped.csv`` (path, reason)."""
    return out.with_name(f"{out.name}.skipped.csv")


def image_paths(items: list[str], unused: list[Skipped] | None = None) -> list[Path]:
    """Files as given, folders expanded to the images under them; their other files are added to ``unused``."""
    paths: list[Path] = []
    others: list[Skipped] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            scan = scan_folder(p)
            paths += scan.images
            others += scan.unused
        elif p.is_file():
            paths.append(p)
        else:
            raise MedTransferError(f"'{p}': no such file or folder")
    if not paths:
        found = f"; found only other files, e.g. {others[0].path} ({others[0].reason})" if others else ""
        raise MedTransferError(f"no image ({', '.join(supported_suffixes())}) found in {items}{found}")
    if unused is not None:
        unused += others
    return paths


def predict_images(run: str | Path, items: list[str], out: Path, *, device: str = "auto",
                   on_bad: str = "error", cache_dir: str | None = None,
                   overrides: Sequence[str] = ()) -> tuple[pd.DataFrame, list[Skipped]]:
    """Write one row per readable image to ``out`` (CSV); return it and the skipped files.

    Skipped files (``on_bad="skip"``) are written to :func:`skipped_csv` as well as stderr, so the record of what
    was left out stays with the predictions; a stale sidecar of an earlier call is removed.
    """
    output_file(out)
    dev = resolve_device(device)
    cfg, task, model = load_model(run, dev, cache_dir, overrides)
    task.precision = Precision.resolve(dev, cfg.runtime.amp, cfg.runtime.channels_last)  # as it was trained
    task.precision.model(model)
    unused: list[Skipped] = []  # files of a folder that are not images: counted in the sidecar, never silent
    paths = image_paths(items, unused)
    loaded = load_images(paths, **cfg.data.decode_options(), gray=cfg.backbone.in_chans == 1,
                         on_bad=on_bad, progress=False)
    for s in loaded.skipped:
        print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    skipped = unused + loaded.skipped
    if unused:
        print(describe_skipped(unused, where=str(skipped_csv(out))), file=sys.stderr)
    sidecar = skipped_csv(out)
    if skipped:
        atomic_write_text(sidecar, pd.DataFrame([vars(s) for s in skipped]).to_csv(index=False))
    else:
        sidecar.unlink(missing_ok=True)
    ds = ImageDataset(loaded.images, {"orig_size": torch.from_numpy(loaded.original_sizes.astype("float32"))},
                      [str(paths[i]) for i in loaded.kept], sources=[paths[i] for i in loaded.kept])
    task.output_dir = out.with_name(f"{out.stem}_files")  # files a task writes beside the CSV (masks)
    df = with_image_columns(task.predict(model, ds, dev))
    write_table(df, out)
    return df, skipped

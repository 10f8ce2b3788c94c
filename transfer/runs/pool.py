"""Stage 1's unlabelled pool: a folder tree, a CSV of paths, or a labelled dataset's images (labels unused)."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from transfer.api import TASKS
from transfer.config import Config
from transfer.data.cache import content_hash
from transfer.data.datasets import load_images
from transfer.data.readers import list_images, read_file_bytes, supported_suffixes
from transfer.errors import DatasetError

PATH_COLUMNS = ("path", "image_path", "image", "file")


@dataclasses.dataclass
class Pool:
    images: torch.Tensor  #: (N, C, H, W) in [0, 1]
    ids: list[str]
    fingerprint: str  #: hash of the pool's image contents, order-independent
    skipped: list[dict[str, str]]
    source: str


def load_pool(cfg: Config) -> Pool:
    """The unlabelled images named by ``pretrain.pool`` / ``pretrain.pool_format``."""
    p = cfg.pretrain
    if p.pool_format == "labelled":
        return _labelled_pool(cfg)
    if not p.pool:
        raise DatasetError("pretrain.pool is empty: name a folder or CSV of unlabelled images")
    root = cfg.data.resolve(p.pool)
    paths = _folder_paths(root) if p.pool_format == "folder" else _csv_paths(root, cfg)
    if not paths:
        raise DatasetError(f"{root}: the pretrain pool holds no image ({', '.join(supported_suffixes())})")
    loaded = load_images(paths, cfg.data.image_size, cfg.data.cache_dir, gray=cfg.backbone.in_chans == 1,
                         on_bad=p.on_bad, progress=cfg.tracking.progress, desc="decoding pool")
    digests = sorted(content_hash(read_file_bytes(paths[i])) for i in loaded.kept)
    fp = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    skipped = [vars(s) for s in loaded.skipped]
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable pool images, e.g. {skipped[0]['path']}: {skipped[0]['reason']}")
    return Pool(loaded.images, [str(paths[i]) for i in loaded.kept], fp, skipped, str(root))


def _labelled_pool(cfg: Config) -> Pool:
    p = cfg.pretrain
    task = TASKS.get(cfg.task.name)(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, on_bad=p.on_bad)))
    ds = task.load_split(p.pool or cfg.data.train, "pool")
    h = hashlib.sha256()
    for i in np.argsort(ds.ids):
        h.update(ds.images[int(i)].numpy().tobytes())
    return Pool(ds.images, list(ds.ids), h.hexdigest()[:16], [vars(s) for s in task.skipped],
                f"images of {p.pool or cfg.data.train} (labels ignored)")


def _folder_paths(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: pretrain pool folder does not exist")
    return list_images(root)


def _csv_paths(root: Path, cfg: Config) -> list[Path]:
    if not root.is_file():
        raise DatasetError(f"{root}: pretrain pool CSV does not exist")
    df = pd.read_csv(root)
    col = next((c for c in PATH_COLUMNS if c in df.columns), None)
    if col is None:
        raise DatasetError(f"{root}: no path column ({', '.join(PATH_COLUMNS)}); columns: {list(df.columns)[:6]}")
    base = cfg.data.image_base(root)
    return [Path(x) if Path(x).is_absolute() else base / x for x in df[col].astype(str)]

"""Stage 1's unlabelled pool: a folder tree, a CSV of paths, or a labelled dataset's images (labels unused)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from transfer.api import TASKS
from transfer.config import Config
from transfer.data.cache import content_hash
from transfer.data.datasets import Skipped, load_images
from transfer.data.fingerprint import DataFingerprint, item_digests
from transfer.data.inventory import describe_skipped, scan_folder
from transfer.data.readers import read_file_bytes, supported_suffixes
from transfer.data.tables import read_listing
from transfer.errors import DatasetError

PATH_COLUMNS = ("path", "image_path", "image", "file")


@dataclasses.dataclass
class Pool:
    images: torch.Tensor  #: (N, C, H, W) in [0, 1]
    ids: list[str]
    fingerprint: str  #: hash of the pool's image contents, order-independent
    skipped: list[dict[str, str]]
    source: str

    @functools.cached_property
    def digests(self) -> DataFingerprint:
        """One digest per image, stored with the resume state: a resume on a changed pool is refused."""
        return {"pool": item_digests(self.images, self.ids)}


def load_pool(cfg: Config) -> Pool:
    """The unlabelled images named by ``pretrain.pool`` / ``pretrain.pool_format``."""
    p = cfg.pretrain
    if p.pool_format == "labelled":
        return _labelled_pool(cfg)
    if not p.pool:
        raise DatasetError("pretrain.pool is empty: name a folder or CSV of unlabelled images")
    root = cfg.data.resolve(p.pool)
    unused: list[Skipped] = []  # files of the pool folder that are not images: reported, never silent
    paths = _folder_paths(root, unused) if p.pool_format == "folder" else _csv_paths(root, cfg)
    if not paths:
        raise DatasetError(f"{root}: the pretrain pool holds no image ({', '.join(supported_suffixes())})")
    loaded = load_images(paths, **cfg.data.decode_options(), gray=cfg.backbone.in_chans == 1,
                         on_bad=p.on_bad, progress=cfg.tracking.progress, desc="decoding pool")
    digests = sorted(content_hash(read_file_bytes(paths[i])) for i in loaded.kept)
    fp = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    skipped = [vars(s) for s in unused + loaded.skipped]
    if skipped:
        print(describe_skipped(unused + loaded.skipped), file=sys.stderr)
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


def _folder_paths(root: Path, unused: list[Skipped]) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: pretrain pool folder does not exist")
    scan = scan_folder(root)
    unused += scan.unused
    return scan.images


def _csv_paths(root: Path, cfg: Config) -> list[Path]:
    df = read_listing(root, "pretrain pool CSV")
    col = next((c for c in PATH_COLUMNS if c in df.columns), None)
    if col is None:
        raise DatasetError(f"{root}: no path column ({', '.join(PATH_COLUMNS)}); columns: {list(df.columns)[:6]}")
    base = cfg.data.image_base(root)
    return [Path(x) if Path(x).is_absolute() else base / x for x in df[col].astype(str)]

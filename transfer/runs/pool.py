"""Stage 1's unlabelled pool: a folder tree, a CSV of paths, or a labelled dataset's images (labels unused).

A folder or CSV pool is held in memory while small (``data.in_memory``) and streamed from a packed uint16 file
(:mod:`transfer.data.packed`) when large; a labelled dataset's images are always in memory (the task loads them).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from transfer.api import TASKS
from transfer.config import Config, ConfigError
from torch.utils.data import Dataset

from transfer.data.datasets import ImageDataset, Skipped, load_images
from transfer.data.fingerprint import DataFingerprint, item_digests
from transfer.data.inventory import describe_skipped, scan_folder
from transfer.data.packed import PackedImageDataset, PackedImages, pack_images
from transfer.data.readers import supported_suffixes
from transfer.data.tables import read_listing
from transfer.errors import DatasetError
from transfer.runs.splits import load_listed

PATH_COLUMNS = ("path", "image_path", "image", "file")


@dataclasses.dataclass
class Pool:
    """The pool, in memory (``images``) or streamed from a packed file (``packed``; ``images`` is then None)."""

    images: torch.Tensor | None  #: (N, C, H, W) in [0, 1]; None when streamed
    ids: list[str]
    fingerprint: str  #: hash of the pool's image contents (its files' bytes), order-independent
    skipped: list[dict[str, str]]
    source: str
    packed: PackedImages | None = None

    def __len__(self) -> int:
        return len(self.packed) if self.packed is not None else len(self.images)  # type: ignore[arg-type]

    @property
    def streamed(self) -> bool:
        return self.packed is not None

    def dataset(self) -> Dataset:
        """Items ``{"image", "index"}``: float tensors from memory, or uint16 rows read on demand (converted to float
        on the device by the engine)."""
        if self.packed is not None:
            return PackedImageDataset(self.packed)
        assert self.images is not None
        return ImageDataset(self.images, ids=self.ids)

    def sample(self, k: int = 8) -> torch.Tensor:
        """The first ``k`` images as float32 (C, H, W) in [0, 1] (media)."""
        k = min(k, len(self))
        if self.packed is not None:
            return self.packed.floats(range(k))
        assert self.images is not None
        return self.images[:k]

    @functools.cached_property
    def digests(self) -> DataFingerprint:
        """One digest per image, stored with the resume state: a resume on a changed pool is refused. The same
        digests in memory and streamed (those of the float32 pixels; a streamed pool's were taken when packed)."""
        if self.packed is not None:
            return {"pool": [[i, d] for i, d in zip(self.packed.ids, self.packed.pixel_digests)]}
        assert self.images is not None
        return {"pool": item_digests(self.images, self.ids)}


def pool_in_memory(cfg: Config, n: int) -> bool:
    """``data.in_memory`` resolved for a pool of ``n`` files: ``auto`` keeps it in memory while its float32 tensor
    fits ``data.in_memory_max_gib``."""
    if cfg.data.in_memory != "auto":
        return bool(cfg.data.in_memory)
    h, w = cfg.data.image_size
    channels = 1 if cfg.backbone.in_chans == 1 else 3
    return n * channels * h * w * 4 <= cfg.data.in_memory_max_gib * 2**30


def load_pool(cfg: Config) -> Pool:
    """The unlabelled images named by ``pretrain.pool`` / ``pretrain.pool_format``, in memory or streamed
    (``data.in_memory``). Each file is read and hashed once: the decode cache's hashes are the fingerprint's."""
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
    options = {**cfg.data.decode_options(), "gray": cfg.backbone.in_chans == 1, "on_bad": p.on_bad,
               "progress": cfg.tracking.progress}
    images: torch.Tensor | None = None
    packed: PackedImages | None = None
    if pool_in_memory(cfg, len(paths)):
        loaded = load_images(paths, **options, desc="decoding pool")
        images, ids, digests, bad = loaded.images, [str(paths[i]) for i in loaded.kept], loaded.digests, loaded.skipped
    else:
        packed = pack_images(paths, **options, source=str(root), desc="packing pool")
        ids, digests, bad = packed.ids, packed.file_digests, packed.skipped
    fp = hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]
    skipped = [vars(s) for s in unused + bad]
    if skipped:
        print(describe_skipped(unused + bad), file=sys.stderr)
    return Pool(images, ids, fp, skipped, str(root), packed)


def _labelled_pool(cfg: Config) -> Pool:
    p = cfg.pretrain
    if not p.pool and cfg.data.fold is not None:
        # with folds data.train lists the held-out fold too: stage 1 would adapt to the test images
        raise ConfigError("pretrain.pool: a labelled pool taken from data.train would hold every fold of data.folds, "
                          f"the held-out fold {cfg.data.fold} too; name the pool's listing in pretrain.pool")
    task = TASKS.get(cfg.task.name)(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, on_bad=p.on_bad)))
    ds = load_listed(task, p.pool or cfg.data.train, "pool", "pretrain.pool" if p.pool else "data.train")
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

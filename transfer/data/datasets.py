"""In-memory image datasets decoded once through the decode cache.

Working-size images are small (a 256x208 cephalogram is 53k pixels), so a
dataset holds its images as one (N, C, H, W) tensor and an epoch never waits
on decoding; the decode cache makes the one-off load fast on later runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from transfer.errors import ImageReadError, MedTransferError


class ImageTooSmallError(ImageReadError):
    """An image below ``data.min_image_size``."""


@dataclass
class Skipped:
    path: str
    reason: str
    #: "unreadable" (an image file that cannot be decoded), "too small" (below data.min_image_size), "not used"
    #: (not an image the readers know), "invalid" (any other item a task skips, e.g. a box or an annotation)
    kind: str = "invalid"


def check_min_size(path: str | Path, original_size: tuple[int, int], min_size: int) -> None:
    """A file smaller than ``min_size`` px on a side would be upscaled into a made-up image: refuse it."""
    h, w = original_size
    if min(h, w) < min_size:
        raise ImageTooSmallError(f"{path}: image is {w}x{h} px, smaller than data.min_image_size={min_size} "
                                 f"(it would be upscaled to the working size)")


@dataclass
class LoadedImages:
    images: torch.Tensor  #: (N, C, H, W) float32 in [0, 1]
    original_sizes: np.ndarray  #: (N, 2) (H, W) of the source files
    spacings: list[tuple[float, float] | None]
    kept: np.ndarray  #: indices into the requested paths that loaded
    skipped: list[Skipped] = field(default_factory=list)
    #: the decode cache's content hash of each kept file's bytes (computed while reading it: no second read)
    digests: list[str] = field(default_factory=list)


def load_images(paths: Sequence[str | Path], size: tuple[int, int], cache_dir: str | Path, *, gray: bool = True,
                on_bad: str = "error", progress: bool = True, desc: str = "decoding", min_size: int = 1,
                window: tuple[float, float] | None = None) -> LoadedImages:
    """Decode (or read from the cache) every path at ``size``; bad files raise or are skipped and reported.

    ``min_size``: smallest accepted side of the file in px; ``window``: DICOM (center, width), other files ignore it.
    Each file is read once; the pixels go straight into one preallocated (N, C, H, W) tensor (no list of per-image
    arrays beside it, which doubled the peak).
    """
    from transfer.data.cache import DecodeCache

    cache = DecodeCache(cache_dir)
    out: torch.Tensor | None = None
    sizes, spacings, kept, skipped, digests = [], [], [], [], []
    it: Any = paths
    if progress and len(paths) > 20:
        from tqdm.auto import tqdm

        it = tqdm(paths, desc=desc, leave=False)
    for i, p in enumerate(it):
        try:
            q, original_size, spacing, digest = cache.get_quantized(p, size, gray=gray, window=window)
            check_min_size(p, original_size, min_size)
        except MedTransferError as e:
            if on_bad == "skip":
                skipped.append(Skipped(str(p), str(e), "too small" if isinstance(e, ImageTooSmallError) else "unreadable"))
                continue
            raise
        if out is None:
            out = torch.empty((len(paths) - i, *q.shape), dtype=torch.float32)
        # the cache's dequantisation (float32 / 65535), row by row
        np.divide(q, np.float32(65535.0), out=out[len(kept)].numpy(), dtype=np.float32)
        sizes.append(original_size)
        spacings.append(spacing)
        kept.append(i)
        digests.append(digest)
    if out is None:
        example = f"e.g. {skipped[0].reason}" if skipped else "no path given"
        raise MedTransferError(f"no image could be read ({len(skipped)} skipped, {example})")
    images = out if len(kept) == len(out) else out[: len(kept)].clone()
    return LoadedImages(images, np.asarray(sizes, dtype=np.int64), spacings, np.asarray(kept), skipped, digests)


class ImageDataset(Dataset):
    """Items ``{"image": (C, H, W) float, "index": int, **targets}`` from in-memory tensors.

    ``sources``: the file each row was decoded from, for a task that reads a row's file again (the landmark
    refinement's full-resolution crops); kept row-aligned by :meth:`subset`. ``meta``: whole-split facts, shared by
    subsets as they are.
    """

    def __init__(self, images: torch.Tensor, targets: dict[str, np.ndarray | torch.Tensor] | None = None,
                 ids: Sequence[str] | None = None, meta: dict[str, Any] | None = None,
                 sources: Sequence[Path] | None = None) -> None:
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
        self.images = images
        self.targets = {k: torch.as_tensor(v) for k, v in (targets or {}).items()}
        for k, v in self.targets.items():
            if len(v) != len(images):
                raise ValueError(f"target {k!r} has {len(v)} rows for {len(images)} images")
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
        self.meta = dict(meta or {})
        self.sources = [Path(p) for p in sources] if sources is not None else None
        if self.sources is not None and len(self.sources) != len(images):
            raise ValueError(f"{len(self.sources)} sources for {len(images)} images")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"image": self.images[i], "index": i}
        for k, v in self.targets.items():
            item[k] = v[i]
        return item

    def subset(self, idx: np.ndarray | Sequence[int]) -> "ImageDataset":
        idx_t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return ImageDataset(self.images[idx_t], {k: v[idx_t] for k, v in self.targets.items()},
                            [self.ids[int(i)] for i in idx_t], self.meta,
                            None if self.sources is None else [self.sources[int(i)] for i in idx_t])

    def with_targets(self, **more: torch.Tensor) -> "ImageDataset":
        """This dataset (the same tensors, not copies) with ``more`` targets beside its own."""
        return ImageDataset(self.images, {**self.targets, **more}, self.ids, self.meta, self.sources)

    def target_array(self, key: str) -> np.ndarray:
        return self.targets[key].numpy()

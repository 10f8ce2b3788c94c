"""What a run trained on: one content digest per image (its working-size pixels and its targets), per split.

A run that resumes must continue on the data it started with: images added to the training folder between a kill
and the rerun change ``n_train`` and the carved validation split, and the resumed run would mix two datasets
without a word. The digests are stored with every resume state (beside the config) and compared on resume;
:func:`data_changes` says what changed, by split, naming a few files.

The digest is taken of the decoded, resized pixels the run actually uses (the same for every file format,
``.npz`` rows included) with the decode cache's hash (xxh3-128), plus the item's targets (a relabelled image is
changed data too).
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch

from transfer.data.cache import content_hash
from transfer.data.datasets import ImageDataset

__all__ = ["DataFingerprint", "data_fingerprint", "data_changes", "item_digests"]

#: {split name: [[image id, digest], ...]} (lists, so that it round-trips through any serialisation)
DataFingerprint = dict[str, list[list[str]]]

_SHOWN = 3  #: file names named per kind of change


def item_digests(images: torch.Tensor, ids: Sequence[str], targets: dict[str, torch.Tensor] | None = None
                 ) -> list[list[str]]:
    """``[[id, digest], ...]``, one per image of ``images`` (N, C, H, W)."""
    targets = targets or {}
    out = []
    for i in range(len(images)):
        parts = [images[i].numpy().tobytes()]
        parts += [k.encode() + np.ascontiguousarray(targets[k][i].numpy()).tobytes() for k in sorted(targets)]
        out.append([str(ids[i]), content_hash(b"\0".join(parts))])
    return out


def data_fingerprint(splits: dict[str, ImageDataset | None]) -> DataFingerprint:
    """The digests of every split given (None: the split is absent, e.g. no test set)."""
    return {name: item_digests(ds.images, ds.ids, ds.targets) for name, ds in splits.items() if ds is not None}


def _names(pairs: list[list[str]]) -> str:
    shown = ", ".join(_short(p[0]) for p in pairs[:_SHOWN])
    return shown + (f" and {len(pairs) - _SHOWN} more" if len(pairs) > _SHOWN else "")


def _short(image_id: str) -> str:
    """The file name of an id that is a path (a message names files, not folders)."""
    return image_id.replace("\\", "/").rsplit("/", 1)[-1]


def data_changes(old: DataFingerprint, new: DataFingerprint) -> list[str]:
    """``["train: 12 -> 20 images (added: a.png, b.png, c.png and 5 more)", ...]``; [] when nothing changed."""
    out = []
    for split in sorted(set(old) | set(new), key=lambda s: (s not in ("train", "val", "test"), s)):
        was, now = old.get(split), new.get(split)
        if was is None or now is None:
            out.append(f"{split}: {'none' if was is None else len(was)} -> {'none' if now is None else len(now)} "
                       "images")
            continue
        a, b = Counter(map(tuple, was)), Counter(map(tuple, now))
        if a == b:
            continue
        removed = [list(k) for k in (a - b).elements()]
        added = [list(k) for k in (b - a).elements()]
        # the same id on both sides: an image whose pixels or labels changed
        changed_ids = {p[0] for p in removed} & {p[0] for p in added}
        changed = [p for p in added if p[0] in changed_ids]
        added = [p for p in added if p[0] not in changed_ids]
        removed = [p for p in removed if p[0] not in changed_ids]
        what = [f"{k}: {_names(v)}" for k, v in (("added", added), ("removed", removed),
                                                 ("changed pixels or labels", changed)) if v]
        out.append(f"{split}: {len(was)} -> {len(now)} images ({'; '.join(what)})")
    return out

"""Reproducible splits: a validation split carved from training, nested label fractions."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit

from transfer.errors import DatasetError


def validation_split(
    n: int, fraction: float, seed: int, labels: np.ndarray | None = None, groups: Sequence | None = None,
    class_names: Sequence[str] | None = None, source: str = "training set",
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): stratified by ``labels`` when given, group-aware when ``groups`` given."""
    if n < 2:
        raise DatasetError(f"{source}: cannot carve a validation split from {n} training sample(s)")
    idx = np.arange(n)
    if groups is not None:
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        tr, va = next(splitter.split(idx, groups=np.asarray(groups)))
    elif labels is not None and labels.ndim == 1:
        values, counts = np.unique(labels, return_counts=True)
        if counts.min() < 2:
            c = int(values[counts.argmin()])
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            raise DatasetError(f"{source}: class {name!r} has {counts.min()} sample(s); a validation split carved "
                               f"from training needs 2 or more per class (a label typo? or give data.val)")
        n_val = int(np.ceil(fraction * n))  # sklearn's rounding: validation ceil, training the rest
        if min(n_val, n - n_val) < len(values):
            raise DatasetError(f"{source}: {fraction:g} of {n} samples is {n_val} for validation and {n - n_val} for "
                               f"training, fewer than the {len(values)} classes; give data.val, more samples, or "
                               f"another data.val_fraction")
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        tr, va = next(splitter.split(idx, labels))
    else:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        n_val = max(1, int(round(fraction * n)))
        va, tr = perm[:n_val], perm[n_val:]
    return np.sort(tr), np.sort(va)


def nested_fraction(
    n: int, fraction: float, seed: int, labels: np.ndarray | None = None, class_names: Sequence[str] | None = None,
    source: str = "training set",
) -> np.ndarray:
    """Indices of a label fraction; for one seed, smaller fractions are subsets of larger ones.

    Each class is ordered by one seeded permutation and the first
    ``round(fraction * n_class)`` members are kept, so 1% lies within 10%
    within 100% and the class balance is preserved.
    """
    if not 0 < fraction <= 1:
        raise DatasetError(f"label fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed + 7919)  # independent of the validation split's stream
    order = rng.permutation(n)
    if fraction == 1:
        return np.arange(n)
    if labels is None or labels.ndim != 1:
        k = max(1, int(round(fraction * n)))
        return np.sort(order[:k])
    keep = []
    for c in np.unique(labels):
        members = order[labels[order] == c]
        k = int(round(fraction * len(members)))
        if k == 0:
            name = class_names[int(c)] if class_names is not None and int(c) < len(class_names) else str(c)
            raise DatasetError(
                f"label fraction {fraction} leaves class {name!r} with no example in the {source} "
                f"({len(members)} available); use a larger fraction"
            )
        keep.append(members[:k])
    return np.sort(np.concatenate(keep))

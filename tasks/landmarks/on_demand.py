"""Images read when a batch needs them: the refinement stage's full-resolution copies of a split that is only scored.

A full-resolution cephalogram is 4.6 MB as uint8; holding every validation, test or predict image at once is what
made scoring the largest memory cost of a two-stage run (and predict on thousands of images impossible). Scoring
reads images in order, a batch at a time, so slicing is all this needs to offer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

__all__ = ["ImagesOnDemand"]


class ImagesOnDemand:
    """``images[i:j]`` decodes ``paths[i:j]`` with ``load`` (paths -> (n, C, H, W) tensor), nothing before."""

    def __init__(self, paths: Sequence[Path], load: Callable[[list[Path]], torch.Tensor]) -> None:
        self.paths = list(paths)
        self._load = load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        if not isinstance(rows, slice):
            raise TypeError(f"ImagesOnDemand is read by batches (slices), got {type(rows).__name__}")
        return self._load(self.paths[rows])

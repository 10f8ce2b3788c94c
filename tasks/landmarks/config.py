"""``task.landmarks``: the landmark task's options (head, loss, spacing, names, flips, SDR radii)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class LandmarkConfig:
    """``task.landmarks``."""

    head: Literal["regression", "heatmap"] = "regression"
    hidden: int = 512  #: width of the fully connected layer of the regression head
    dropout: float = 0.0
    heatmap_stage: str | None = None  #: feature map used by the heatmap head (default: stride-8 stage)
    heatmap_weight: float = 0.0  #: optional heatmap term beside the Euclidean loss
    heatmap_sigma: float = 2.0  #: in heatmap pixels
    pixel_spacing: float = 0.1  #: mm per original pixel, when the file has none
    names: list[str] = field(default_factory=list)
    #: left-right landmark pairs (1-based) swapped by a horizontal flip
    flip_pairs: list[tuple[int, int]] = field(default_factory=list)
    sdr_radii: list[float] = field(default_factory=lambda: [2.0, 2.5, 3.0, 4.0])

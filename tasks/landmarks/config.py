"""``task.landmarks``: the landmark task's options (head, loss, spacing, names, flips, SDR radii)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class LandmarkConfig:
    """``task.landmarks``."""

    #: "regression": pooled features + FC (the dental seed); "heatmap": soft-argmax on one stride-16 map;
    #: "decoder": heatmaps at ``heatmap_stride`` on the dense decoder, local soft-argmax (the global stage)
    head: Literal["regression", "heatmap", "decoder"] = "regression"
    hidden: int = 512  #: width of the fully connected layer of the regression head
    dropout: float = 0.0
    heatmap_stage: str | None = None  #: feature map used by the heatmap head (default: stride-8 stage)
    heatmap_weight: float = 0.0  #: optional heatmap term beside the Euclidean loss
    heatmap_sigma: float = 2.0  #: in heatmap pixels ("heatmap" head)
    heatmap_stride: int = 4  #: input pixels per heatmap pixel ("decoder" head): 1, 2 or 4
    sigma_mm: float = 2.0  #: width of the target Gaussians in mm ("decoder" head)
    decode_radius: int = 3  #: half-width of the local soft-argmax window, heatmap pixels ("decoder" head)
    decoder_width: int = 32  #: channels of the decoder's finest level ("decoder" head)
    #: predict flags an image "low_confidence" when its landmarks' mean peak mass is below this
    low_confidence: float = 0.5
    #: predict flags an image "mirrored?" when its left-right flip is decoded this many times more confidently
    mirror_ratio: float = 1.5
    pixel_spacing: float = 0.1  #: mm per original pixel, when the file has none
    names: list[str] = field(default_factory=list)
    #: left-right landmark pairs (1-based) swapped by a horizontal flip
    flip_pairs: list[tuple[int, int]] = field(default_factory=list)
    sdr_radii: list[float] = field(default_factory=lambda: [2.0, 2.5, 3.0, 4.0])

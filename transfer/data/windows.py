"""``data.dicom_window``: a DICOM display window (center, width) given as two numbers or a preset name.

Presets are the usual CT windows in Hounsfield units (Radiopaedia, "Windowing (CT)"),
after the modality LUT (rescale slope/intercept). They replace the file's own VOI
window, so every image of a run gets the same intensity mapping.
"""
from __future__ import annotations

import math
from typing import Sequence

#: name -> (center, width) in HU
DICOM_WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


def dicom_window(spec: str | Sequence[float] | None) -> tuple[float, float] | None:
    """``None``, a preset name, or ``[center, width]`` -> (center, width); ValueError says what is wrong."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in DICOM_WINDOW_PRESETS:
            raise ValueError(f"unknown preset {spec!r}; presets: {', '.join(DICOM_WINDOW_PRESETS)}, "
                             f"or [center, width]")
        return DICOM_WINDOW_PRESETS[spec]
    if len(spec) != 2:
        raise ValueError(f"expected [center, width] or a preset name, got {list(spec)}")
    center, width = float(spec[0]), float(spec[1])
    if not (math.isfinite(center) and math.isfinite(width) and width >= 1):
        raise ValueError(f"width must be >= 1 and both finite (DICOM LINEAR window), got {list(spec)}")
    return center, width

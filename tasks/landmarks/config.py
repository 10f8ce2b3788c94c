"""``task.landmarks``: the landmark task's options (head, loss, spacing, names, flips, SDR radii)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transfer.config.io import ConfigError


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
    #: the refinement stage (see tasks/landmarks/refine.py): a second backbone + decoder on crops of the
    #: image at ``refine_image_size`` around each first estimate, trained jointly with the global stage
    refine: bool = False
    refine_image_size: list[int] | None = None  #: (H, W) the crops come from, e.g. the original size
    refine_crop: int = 128  #: crop side, pixels of the refinement image
    refine_stride: int = 2  #: heatmap stride on the crop: 1, 2 or 4
    refine_sigma_mm: float = 0.5  #: width of the refinement stage's target Gaussians in mm
    refine_jitter_mm: float = 2.0  #: SD of the training crops' offset from the truth (about the global error)
    refine_per_image: int = 4  #: landmarks cropped per training image and step
    refine_weight: float = 1.0  #: weight of the refinement losses beside the global stage's
    #: a coarse refinement stage between the global and the refinement stage (0: none): the same model on windows
    #: ``refine_coarse_zoom`` times wider than ``refine_crop``, shrunk to it (e.g. 3: 384 px of a 0.1-mm image, +-19 mm
    #: at 0.3 mm per pixel). The fine crops (+-6.4 mm at the defaults) cannot pull back a global estimate more than
    #: ~2 mm off; the coarse stage's wider view can, and the fine stage then crops around its estimate. Its target
    #: Gaussians are ``refine_sigma_mm`` x zoom wide (the fine stage's width in heatmap cells); same depth as the fine
    refine_coarse_zoom: float = 0.0
    refine_coarse_jitter_mm: float = 4.0  #: SD of the coarse stage's training crops' offset from the truth, mm
    #: the refinement backbone's own fine-tuning depth (``head``, ``<stage>-head`` or ``all``), e.g. ``all`` beside a
    #: frozen global backbone: its inputs are small crops at a resolution ImageNet never saw, and cheap to train on;
    #: None: ``train.depth`` for both backbones (an ``auto`` depth search then varies the global one only)
    refine_depth: str | None = None
    #: test-time crops of the refinement stage: 0 = one crop centred on each first estimate; s > 0 = also four crops
    #: shifted by s x refine_crop left, right, up and down, their decoded positions averaged (5x the refinement's
    #: inference cost). Prediction-time: ``evaluate --split val --set task.landmarks.refine_tta_shift=0.1`` measures
    #: it on a trained run's validation split, ``predict --set`` uses it
    refine_tta_shift: float = 0.0
    #: test-time refinement passes: 2 = crop again around the first pass's estimate (2x the refinement's inference
    #: cost); prediction-time like ``refine_tta_shift``
    refine_passes: int = 1
    #: test-time averaging of the global stage ("decoder" head; tasks/landmarks/shift_averaging.py): 0 = one pass;
    #: k > 0 = also four copies of the input shifted by k heatmap cells (k x heatmap_stride pixels) left, right, up
    #: and down, their heatmaps moved back and averaged as probabilities (5x the global stage's inference cost).
    #: Prediction-time like ``refine_tta_shift``
    global_tta_shift: int = 0
    #: predict flags an image "low_confidence" when its landmarks' mean peak mass is below this
    low_confidence: float = 0.5
    #: predict flags an image "mirrored?" when its left-right flip is decoded this many times more confidently
    mirror_ratio: float = 1.5
    #: predict: an image flagged "mirrored?" is predicted on its left-right flip and the coordinates are mapped back
    #: to the image as stored (column ``mirror_fixed``; the flag stays). On by default: the stored image's own
    #: prediction is the one a mirrored cephalogram gets wrong (53 mm off on one held-out image). Landmark identities
    #: are kept (a lateral cephalogram has no left/right pairs)
    fix_mirrored: bool = True
    #: the shape step of the global stage (tasks/landmarks/shape_prior.py; "decoder" head): a landmark whose decoded
    #: peak is far from where a statistical shape model of the training landmarks puts it, given the others, moves
    #: to the mode of its heatmap that best agrees with both (the refinement then crops around it). The shape model is
    #: fitted and saved with every decoder-head model (3+ landmarks, 5+ complete training shapes), so this switch and
    #: the three below also work at predict time (``predict --set task.landmarks.shape_prior=true``); ``shape_variance``
    #: is fixed by training. Column ``shape_moved``: landmarks moved per image
    shape_prior: bool = False
    shape_modes: int = 3  #: modes of each heatmap considered, the arg-max's included (>= 2)
    shape_threshold: float = 3.0  #: Mahalanobis distance from the shape's prediction beyond which a landmark is judged
    shape_min_mass: float = 0.05  #: least softmax mass (in its decoding window) of a mode that may replace the arg-max
    shape_variance: float = 0.95  #: share of the aligned training shapes' variance the shape model's PCA keeps
    pixel_spacing: float = 0.1  #: mm per original pixel, when the file has none
    names: list[str] = field(default_factory=list)
    #: left-right landmark pairs (1-based) swapped by a horizontal flip
    flip_pairs: list[tuple[int, int]] = field(default_factory=list)
    sdr_radii: list[float] = field(default_factory=lambda: [2.0, 2.5, 3.0, 4.0])

    def __post_init__(self) -> None:
        for key, ok, what in (
            ("heatmap_stride", self.heatmap_stride in (1, 2, 4), "must be 1, 2 or 4"),
            ("refine_stride", self.refine_stride in (1, 2, 4), "must be 1, 2 or 4"),
            ("sigma_mm", self.sigma_mm > 0, "must be > 0"),
            ("refine_sigma_mm", self.refine_sigma_mm > 0, "must be > 0"),
            ("refine_jitter_mm", self.refine_jitter_mm >= 0, "must be >= 0"),
            ("refine_image_size", not self.refine or (self.refine_image_size is not None
                                                      and len(self.refine_image_size) == 2
                                                      and min(self.refine_image_size) >= 16),
             "refine: true needs the (H, W) the crops come from, each >= 16, e.g. the original size"),
            ("refine_crop", self.refine_crop >= 16, "must be >= 16 pixels"),
            ("refine_depth", self.refine_depth is None or self.refine, "needs refine: true (it is the refinement "
             "backbone's depth)"),
            ("refine_depth", self.refine_depth != "auto", "must be a fixed depth (head, <stage>-head or all); "
             "train.depth: auto searches the global backbone's"),
            ("refine_coarse_zoom", self.refine_coarse_zoom == 0 or self.refine_coarse_zoom > 1,
             f"must be 0 (no coarse stage) or > 1 (its window's width in refine_crops), got {self.refine_coarse_zoom}"),
            ("refine_coarse_zoom", self.refine_coarse_zoom == 0 or self.refine, "needs refine: true (the coarse stage "
             "crops the refinement image, and the fine stage refines its estimate)"),
            ("refine_coarse_jitter_mm", self.refine_coarse_jitter_mm >= 0, "must be >= 0"),
            ("refine_tta_shift", 0 <= self.refine_tta_shift < 0.5, "must be in [0, 0.5) (a share of refine_crop)"),
            ("refine_passes", self.refine_passes >= 1, f"must be >= 1, got {self.refine_passes}"),
            ("global_tta_shift", self.global_tta_shift >= 0,
             f"must be >= 0 heatmap cells, got {self.global_tta_shift}"),
            ("global_tta_shift", self.global_tta_shift == 0 or self.head == "decoder",
             f"needs head: decoder (it averages heatmaps), got head: {self.head}"),
            ("shape_prior", not self.shape_prior or self.head == "decoder",
             f"needs head: decoder (the step picks among the modes of its heatmaps), got head: {self.head}"),
            ("shape_modes", self.shape_modes >= 2,
             f"must be >= 2 (the arg-max and another mode), got {self.shape_modes}"),
            ("shape_threshold", self.shape_threshold > 0,
             f"must be > 0 (a Mahalanobis distance), got {self.shape_threshold}"),
            ("shape_min_mass", 0 < self.shape_min_mass < 1, f"must be in (0, 1), got {self.shape_min_mass}"),
            ("shape_variance", 0 < self.shape_variance < 1, f"must be in (0, 1), got {self.shape_variance}"),
        ):
            if not ok:
                raise ConfigError(f"task.landmarks.{key}: {what}")
    #: an empty coordinate cell (a landmark the annotator could not place): "error", or "mask" it out of the
    #: loss and every metric (counted in summary.json as landmarks_masked)
    missing: Literal["error", "mask"] = "error"

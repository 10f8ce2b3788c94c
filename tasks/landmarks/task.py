"""Landmark regression with a Euclidean loss: direct coordinate regression or a soft-argmax heatmap head.

Coordinates convention: a landmark at original pixel (x, y) (integer pixel
index, origin top-left, as in the ISBI 2015 CSVs) is normalised to
u = (x + 0.5) / W, v = (y + 0.5) / H, so pixel centres map consistently at
every image size. Every metric is computed back in original pixels and mm.
"""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from tasks.landmarks.config import LandmarkConfig
from tasks.landmarks.on_demand import ImagesOnDemand
from tasks.landmarks.listing import LandmarkRows, check_in_one_listing, check_inside_images, read_landmark_rows
from transfer.data.augment import BatchAugment
from transfer.backbones import StagedBackbone
from transfer.data.datasets import ImageDataset, LoadedImages, load_images
from transfer.config.io import ConfigError
from transfer.errors import DatasetError, UnknownNameError
from transfer.finetune import trainable_stages
from transfer.api import EvalResult, ExtraStage, Task, TaskModel


def to_normalised(px: np.ndarray, sizes_hw: np.ndarray) -> np.ndarray:
    """(N, L, 2) original pixel (x, y) -> normalised (u, v); sizes (N, 2) as (H, W)."""
    wh = sizes_hw[:, None, ::-1].astype(np.float64)
    return (px + 0.5) / wh


def to_pixels(norm: np.ndarray, sizes_hw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_normalised`."""
    wh = sizes_hw[:, None, ::-1].astype(np.float64)
    return norm * wh - 0.5


def training_shapes_mm(train: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """The complete landmark sets of ``train`` in mm from each image's top-left corner (N, L, 2), and the median field
    of view (W, H) in mm (2,): the normalised coordinates' scale for a shape model."""
    norm = train.target_array("landmarks").astype(np.float64)
    view = train.target_array("orig_size")[:, ::-1].astype(np.float64) * train.target_array("spacing")  # (N, 2) mm
    complete = np.isfinite(norm).all(axis=(1, 2))
    return norm[complete] * view[complete, None, :], np.median(view, axis=0)


#: the success radius (mm) the per-landmark report table shows beside each mean: the clinical 2 mm
_SDR_SHOWN = "2.0"


def _inference_batch(batch_size: int, images: torch.Tensor) -> int:
    """At most 1 M input pixels per inference batch (19 images at 256x208, 4 at 512x416): the decoder keeps every
    stage's map, and each image brings its full-resolution copy for the refinement stage (measured: 64 images at
    256x208 added 1.4 GB to a two-stage run's peak). On a CPU a larger batch is not faster per image."""
    return max(1, min(batch_size, (1 << 20) // (images.shape[-1] * images.shape[-2])))


class LandmarkModel(TaskModel):
    """Backbone + regression head (pooled features) or heatmap head (one feature map)."""

    def __init__(self, backbone: StagedBackbone, num_landmarks: int, *, head: str, hidden: int, dropout: float,
                 heatmap_stage: str | None, heatmap_weight: float, heatmap_sigma: float,
                 augment: BatchAugment | None, heatmap_stride: int = 4, sigma_mm: float = 2.0,
                 decode_radius: int = 3, decoder_width: int = 32, refine: nn.Module | None = None,
                 refine_weight: float = 1.0, refine_depth: str | None = None, shape_prior: nn.Module | None = None,
                 use_shape_prior: bool = False, global_tta_shift: int = 0, coarse: nn.Module | None = None) -> None:
        super().__init__()
        from tasks.landmarks.dense_head import DecoderHeatmapHead
        from tasks.landmarks.heads import HeatmapHead, RegressionHead

        self.backbone = backbone
        self.kind = head
        self.augment = augment
        self.heatmap_weight = heatmap_weight
        self.heatmap_sigma = heatmap_sigma
        self.sigma_mm = sigma_mm
        self.refine_stage = refine  #: a :class:`~tasks.landmarks.refine.RefinementStage`, or None
        self.refine_weight = refine_weight
        self.refine_depth = refine_depth  #: the refinement backbone's own depth (None: the run's)
        #: a coarse :class:`~tasks.landmarks.refine.RefinementStage` (wider windows) between the two, or None
        if coarse is not None and refine is None:
            raise ValueError("a coarse refinement stage needs the refinement stage (it refines the coarse estimate)")
        self.coarse_stage = coarse
        #: a :class:`~tasks.landmarks.shape_prior.ShapePrior` (its shape model saved with the model whether used or
        #: not), applied in inference when ``use_shape_prior``
        self.shape_prior = shape_prior
        self.use_shape_prior = use_shape_prior
        if use_shape_prior and shape_prior is None:
            raise ValueError("use_shape_prior needs a shape_prior module")
        if global_tta_shift and head != "decoder":
            raise ValueError(f"global_tta_shift needs the decoder head (it averages heatmaps), got head {head!r}")
        #: inference: the global stage averaged over copies shifted by this many heatmap cells (0: one pass; see
        #: tasks/landmarks/shift_averaging.py)
        self.global_tta_shift = global_tta_shift
        self.unused_stages: list[str] = []
        self.reads_stage_outputs = head != "regression"  # the heatmap heads read stage outputs, not pooled features
        if head == "decoder":
            self.head = DecoderHeatmapHead(backbone.feature_info, num_landmarks, out_stride=heatmap_stride,
                                           radius=decode_radius, width=decoder_width, top_stage=heatmap_stage)
            self.stage = self.head.top_stage
            names = list(backbone.stage_names)
            self.unused_stages = names[names.index(self.stage) + 1 :]
        elif head == "regression":
            self.head = RegressionHead(backbone.num_features, num_landmarks, hidden=hidden, dropout=dropout)
            self.stage = None
        else:
            info = {f.stage: f for f in backbone.feature_info}
            if heatmap_stage is None:
                # the deepest stage at stride <= 16 keeps enough resolution for soft-argmax
                cands = [f for f in backbone.feature_info if f.stride <= 16]
                heatmap_stage = cands[-1].stage
            if heatmap_stage not in info:
                raise ValueError(f"task.landmarks.heatmap_stage {heatmap_stage!r} is not a spatial stage of "
                                 f"{backbone.name}: {list(info)}")
            f = info[heatmap_stage]
            self.head = HeatmapHead(f.channels, num_landmarks, stride=f.stride)
            self.stage = heatmap_stage
            names = list(backbone.stage_names)
            self.unused_stages = names[names.index(heatmap_stage) + 1 :]

    def extra_stages(self) -> dict[str, ExtraStage]:
        stages = {}
        for name, r in (("refine", self.refine_stage), ("refine_coarse", self.coarse_stage)):
            if r is None:
                continue
            names = list(r.backbone.stage_names)
            # the refinement decoder reads stages up to its top stage only: those above get no gradient
            stages[name] = ExtraStage(r.backbone, r.head, tuple(names[names.index(r.head.top_stage) + 1 :]),
                                      depth=self.refine_depth)
        return stages

    def forward_all(self, images: torch.Tensor, refine_images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every output of the global stage; with ``refine_images`` and a refinement stage, "coords" and
        "confidence" are the refined ones, "global_coords" the first estimates and, with a coarse stage,
        "coarse_coords" its estimates (the fine stage crops around them). In inference with the shape step,
        the global stage's coordinates are those after it (the refinement crops around them) and "shape_moved"
        (B, L) says which landmarks it moved; training never uses it (the losses are on the arg-max decoding)."""
        out = self._forward_global(images) if self.training or not self.global_tta_shift \
            else self._shift_averaged_global(images)
        if self.use_shape_prior and not self.training:
            coords, moved = self.shape_prior(out["heatmaps"], out["coords"], out["confidence"])
            out = {**out, "coords": coords, "shape_moved": moved}
        if self.refine_stage is not None and refine_images is not None:
            start = out["coords"]
            if self.coarse_stage is not None:
                start, _ = self.coarse_stage.refine(refine_images, start)
                out = {**out, "coarse_coords": start}
            coords, confidence = self.refine_stage.refine(refine_images, start)
            out = {**out, "global_coords": out["coords"], "coords": coords, "confidence": confidence,
                   "global_confidence": out.get("confidence", torch.full_like(confidence, float("nan")))}
        return out

    def _forward_global(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.stage is None:
            return {"coords": self.head(self.backbone(images))}
        feats = self.backbone.forward_stages(images, upto=self.stage)
        if self.kind == "decoder":
            return self.head(feats, (int(images.shape[-2]), int(images.shape[-1])))
        return self.head(feats[self.stage])

    def _shift_averaged_global(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        from tasks.landmarks.decoding import decode_heatmaps
        from tasks.landmarks.shift_averaging import shift_averaged_logits

        logits = shift_averaged_logits(lambda x: self._forward_global(x)["heatmaps"], images, self.global_tta_shift,
                                       self.head.heatmap_stride)
        coords, confidence = decode_heatmaps(logits, self.head.radius)
        return {"heatmaps": logits, "coords": coords, "confidence": confidence}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> normalised landmarks (B, L, 2) as (u, v)."""
        return self.forward_all(images)["coords"]

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        from tasks.landmarks.heads import euclidean_loss, heatmap_loss

        images, target = batch["image"], batch["landmarks"].float()
        if self.augment is not None and self.augment.active:
            h, w = images.shape[-2:]
            scale = torch.tensor([w, h], device=images.device, dtype=target.dtype)
            images, kp = self.augment(images, target * scale - 0.5)
            target = (kp + 0.5) / scale
        out = self.forward_all(images)
        # isotropic units (mm, or normalised coordinates rescaled by the original aspect ratio),
        # so an error along the long axis is not under-weighted
        size_wh = batch["orig_size"].float().flip(-1)
        if self.kind == "decoder":
            # in mm, so the Euclidean term and the heatmap term (nats) have comparable sizes
            units = (size_wh * batch["spacing"].float())[:, None, :]
        else:
            units = (size_wh / size_wh.max(dim=1, keepdim=True).values)[:, None, :]
        # NaN marks a landmark masked by task.landmarks.missing=mask: it counts in no loss term
        visible = torch.isfinite(target).all(-1)
        target = torch.nan_to_num(target, nan=0.5)
        loss = euclidean_loss(out["coords"].float() * units, target * units, visible)
        logs = {"euclidean": loss.detach()}
        if self.heatmap_weight > 0 and "heatmaps" in out:
            hl = heatmap_loss(out["heatmaps"].float(), target, self._target_sigma(batch, out["heatmaps"]), visible)
            loss = loss + self.heatmap_weight * hl
            logs["heatmap"] = hl.detach()
        for prefix, stage in (("refine", self.refine_stage), ("coarse", self.coarse_stage)):
            if stage is not None:
                part = self._refinement_loss(batch, stage)
                loss = loss + self.refine_weight * (part["euclidean"] + self.heatmap_weight * part["heatmap"])
                logs.update({f"{prefix}_{k}": v.detach() for k, v in part.items()})
        return {"loss": loss, **logs}

    def _refinement_loss(self, batch: dict[str, Any], stage: nn.Module) -> dict[str, torch.Tensor]:
        """A refinement stage's (fine or coarse) losses on the un-augmented refinement images (the crops' jitter is
        their augmentation)."""
        images, true = batch["refine_image"], batch["landmarks"].float()
        refine_wh = torch.tensor(images.shape[-1:-3:-1], dtype=true.dtype, device=true.device)
        mm_per_pixel = batch["spacing"].float() * batch["orig_size"].float().flip(-1) / refine_wh
        visible = torch.isfinite(true).all(-1)
        return stage.training_loss(images, torch.nan_to_num(true, nan=0.5), mm_per_pixel, visible)

    def _target_sigma(self, batch: dict[str, Any], heatmaps: torch.Tensor) -> float | torch.Tensor:
        """The target Gaussians' SD in heatmap pixels: fixed for the coarse head, from mm for the decoder head."""
        if self.kind != "decoder":
            return self.heatmap_sigma
        from tasks.landmarks.dense_head import sigma_in_heatmap_pixels

        return sigma_in_heatmap_pixels(self.sigma_mm, batch["orig_size"].float(), batch["spacing"].float(),
                                       tuple(heatmaps.shape[-2:]))


class LandmarkTask(Task):
    name = "landmarks"
    options_class = LandmarkConfig
    formats = ("landmark_csv",)
    monitor = "mre_mm"
    mode = "min"
    reads_listing_lists = True  # data.train: [train.csv, test.csv] (cross-validation folds over both)
    stratify_key = None
    report_metrics = ("mre_mm", "sd_mm", "sdr_2.0mm", "sdr_2.5mm", "sdr_3.0mm", "sdr_4.0mm", "over_4.0mm",
                      "over_10.0mm")
    # SDR and the gross-failure shares (errors above 4 / 10 mm) in percent
    metric_ranges = {"mre_mm": (0.0, math.inf), "sd_mm": (0.0, math.inf), "sdr_*": (0.0, 100.0),
                     "over_*": (0.0, 100.0)}
    report_digits = 2  # millimetres and percentages

    def load_split(self, spec: str | list[str], which: str) -> ImageDataset:
        """A landmark CSV (an image column, ``<k>_x, <k>_y`` for k = 1..L in original pixels, optional
        ``spacing`` in mm) and its images, decoded at the working size; a list of CSVs is read as one split (a
        dataset's labelled listings together, e.g. for cross-validation folds), each checked with its own lines."""
        parts = []
        for s in [spec] if isinstance(spec, str) else spec:
            csv = self.resolve(s)
            part = read_landmark_rows(csv, self.data.image_base(csv), self.options.missing)
            self._set_landmarks(part.coords.shape[1], csv)
            parts.append(part)
        check_in_one_listing(parts)
        paths = [p for part in parts for p in part.paths]
        coords, visible = (np.concatenate([getattr(part, k) for part in parts]) for k in ("coords", "visible"))
        loaded = self._load_images(paths, which)
        self._check_inside(parts, loaded)
        coords, visible = coords[loaded.kept], visible[loaded.kept]
        self._report_masked(visible, ", ".join(str(part.csv) for part in parts), which)
        spacing = self._spacing(self._csv_spacing(parts), loaded)
        targets = {  # a masked landmark stays NaN: it rides through augmentation (flips swap it too)
            "landmarks": torch.from_numpy(to_normalised(coords, loaded.original_sizes)).float(),
            "orig_size": torch.from_numpy(loaded.original_sizes.astype(np.float32)),
            "spacing": torch.from_numpy(spacing.astype(np.float32)),
        }
        kept = [paths[r] for r in loaded.kept]
        # the refinement's full-resolution copies are read later: for the final training rows only (for_training),
        # and for a scored split a batch at a time (_refine_source)
        return ImageDataset(loaded.images, targets, [p.name for p in kept], sources=kept)

    def for_training(self, train: ImageDataset) -> ImageDataset:
        """With the refinement stage: the training rows' full-resolution copies, cropped in every training step, so
        held in memory (uint8). Decoded here, once the split is final, and only for its rows: decoded in
        ``load_split``, every subset (fold, validation carve, label fraction) copied them, and validation and test
        rows, which scoring reads a batch at a time, were held too (a cross-validation fold peaked at 4.0 GiB, 2.2
        after loading)."""
        if not self.options.refine:
            return train
        if train.sources is None:
            raise RuntimeError("landmark training split without the source path of each row (the refinement stage "
                               "crops from the files)")
        return train.with_targets(refine_image=self._refine_images(train.sources))

    @staticmethod
    def _check_inside(parts: list[LandmarkRows], loaded: LoadedImages) -> None:
        """Every landmark of the loaded rows inside its image, an error naming the row's own CSV and line."""
        start = 0
        for part in parts:
            rows = (loaded.kept >= start) & (loaded.kept < start + len(part.paths))
            check_inside_images(part.coords[loaded.kept[rows] - start], loaded.original_sizes[rows],
                                loaded.kept[rows] - start, part.paths, part.csv)
            start += len(part.paths)

    @staticmethod
    def _csv_spacing(parts: list[LandmarkRows]) -> np.ndarray | None:
        """(N,) the ``spacing`` column of every row (NaN for a CSV without one), None when no CSV has one."""
        if all(part.spacing is None for part in parts):
            return None
        return np.concatenate([part.spacing if part.spacing is not None else np.full(len(part.paths), np.nan)
                               for part in parts])

    def _set_landmarks(self, n_landmarks: int, csv: Path) -> None:
        """Record the number of landmarks and their names; every split must have as many as the first."""
        if "num_landmarks" in self.info and self.info["num_landmarks"] != n_landmarks:
            raise DatasetError(f"{csv}: {n_landmarks} landmarks, the training split has {self.info['num_landmarks']}")
        self.info["num_landmarks"] = n_landmarks
        names = self.options.names
        if names and len(names) != n_landmarks:
            raise DatasetError(f"task.landmarks.names lists {len(names)} names for {n_landmarks} landmarks in {csv}")
        self.info["landmark_names"] = list(names) or [str(k) for k in range(1, n_landmarks + 1)]

    def _load_images(self, paths: list[Path], which: str) -> LoadedImages:
        """Decode (or read from the cache) at the working size; skipped files are recorded in ``self.skipped``."""
        data, setup = self.data, self.setup
        loaded = load_images(paths, **data.decode_options(), gray=setup.gray,
                             on_bad=data.on_bad, progress=setup.progress, desc=f"decoding {which}")
        self.skipped += loaded.skipped
        return loaded

    def _report_masked(self, visible: np.ndarray, csv: Path, which: str) -> None:
        """Count the landmarks ``missing=mask`` leaves out (console line, and ``summary.json`` via ``data_report``)."""
        n = int((~visible).sum())
        if n:
            self.data_report.setdefault("landmarks_masked", {})[which] = n
            print(f"warning: {csv}: {n} missing landmarks in {int((~visible).any(1).sum())} images masked out of "
                  f"the loss and metrics (task.landmarks.missing=mask)")

    def _spacing(self, csv_spacing: np.ndarray | None, loaded: LoadedImages) -> np.ndarray:
        """(N, 2) mm per pixel as (x, y) of the kept images: the CSV's column, else the file's, else the option."""
        spacing = np.full((len(loaded.kept), 2), self.options.pixel_spacing, dtype=np.float64)
        from_csv = (np.zeros(len(loaded.kept), dtype=bool) if csv_spacing is None
                    else np.isfinite(csv_spacing[loaded.kept]))  # NaN: a row of a listing without the column
        for i, s in enumerate(loaded.spacings):
            if from_csv[i]:
                spacing[i] = csv_spacing[loaded.kept[i]]
            elif s is not None:
                spacing[i] = (s[1], s[0])  # file spacing is (row, col) = (y, x)
        return spacing

    def build_model(self, backbone: StagedBackbone, train: ImageDataset | None = None) -> LandmarkModel:
        c = self.options
        aug = BatchAugment(self.data.augment, flip_pairs=[tuple(p) for p in c.flip_pairs], landmarks=True)
        return LandmarkModel(backbone, self.info["num_landmarks"], head=c.head, hidden=c.hidden, dropout=c.dropout,
                             heatmap_stage=c.heatmap_stage, heatmap_weight=c.heatmap_weight,
                             heatmap_sigma=c.heatmap_sigma, augment=aug, heatmap_stride=c.heatmap_stride,
                             sigma_mm=c.sigma_mm, decode_radius=c.decode_radius, decoder_width=c.decoder_width,
                             refine=self._refinement_stage(backbone), refine_weight=c.refine_weight,
                             refine_depth=c.refine_depth,
                             shape_prior=self._shape_prior(train), use_shape_prior=c.shape_prior,
                             global_tta_shift=c.global_tta_shift, coarse=self._refinement_stage(backbone, coarse=True))

    def _shape_prior(self, train: ImageDataset | None) -> nn.Module | None:
        """The shape step of a decoder head, its shape model fitted on ``train``'s landmarks when training (left to
        the state dict when rebuilding a saved model). Fitted whether ``shape_prior`` is on or not (a PCA of the
        training shapes, no random number drawn), so that it can be switched on at predict time."""
        c, n = self.options, self.info["num_landmarks"]
        if c.head != "decoder" or n < 3:
            if c.shape_prior:
                raise ConfigError(f"task.landmarks.shape_prior: needs 3 or more landmarks (a shape), got {n}")
            return None
        from tasks.landmarks.shape_model import MIN_SHAPES
        from tasks.landmarks.shape_prior import ShapePrior

        prior = ShapePrior(n, radius=c.decode_radius, modes=c.shape_modes, threshold=c.shape_threshold,
                           min_mass=c.shape_min_mass)
        if train is None:
            return prior
        shapes, frame = training_shapes_mm(train)
        if len(shapes) >= MIN_SHAPES:
            self.info["shape_model"] = prior.shape.fit(shapes, frame, c.shape_variance)
        elif c.shape_prior:
            raise DatasetError(f"task.landmarks.shape_prior: the training split has {len(shapes)} complete shapes "
                               f"(images with every landmark placed); the shape model needs {MIN_SHAPES} or more")
        return prior

    def _refinement_stage(self, backbone: StagedBackbone, *, coarse: bool = False) -> nn.Module | None:
        """The second stage, on a copy of ``backbone`` as initialised (the same ``init`` for both stages); with
        ``coarse``, the coarse stage between the two (``refine_coarse_zoom``), on a copy of its own."""
        c = self.options
        if not c.refine or (coarse and not c.refine_coarse_zoom):
            return None
        if c.refine_depth is not None:
            try:
                trainable_stages(c.refine_depth, backbone.stage_names)
            except UnknownNameError as e:
                raise ConfigError(f"task.landmarks.refine_depth: {e}") from None
        depth = c.refine_depth or self.setup.depth
        if self.setup.init == "scratch" and depth != "all":
            # frozen random stages get BatchNorm statistics from whole training images (recalibrate_batchnorm),
            # which are not what the refinement backbone sees
            raise ConfigError("task.landmarks.refine with init: scratch needs the refinement backbone trained whole "
                              "(train.depth: all, or task.landmarks.refine_depth: all): frozen random stages of it "
                              f"would have no BatchNorm statistics; got {depth!r}")
        from tasks.landmarks.refine import RefinementStage

        # the coarse stage's target Gaussians are as many heatmap cells wide as the fine stage's (its cells are zoom
        # times wider); the test-time crops and passes are the fine stage's options
        zoom = c.refine_coarse_zoom if coarse else 1.0
        return RefinementStage(copy.deepcopy(backbone), self.info["num_landmarks"], crop=c.refine_crop,
                               out_stride=c.refine_stride, radius=c.decode_radius, width=c.decoder_width,
                               sigma_mm=c.refine_sigma_mm * zoom,
                               jitter_mm=c.refine_coarse_jitter_mm if coarse else c.refine_jitter_mm,
                               per_image=c.refine_per_image, tta_shift=0.0 if coarse else c.refine_tta_shift,
                               passes=1 if coarse else c.refine_passes, zoom=zoom)

    def _refine_images(self, paths: list[Path]) -> torch.Tensor:
        """The images the refinement stage crops from, at ``refine_image_size``, as uint8: a full-resolution
        cephalogram is 4.6 MB so, 18.6 MB as float (8-bit sources lose nothing; 16-bit ones keep 8 bits)."""
        data, setup = self.data, self.setup
        size = tuple(self.options.refine_image_size)
        options = {**data.decode_options(), "size": size}
        out: torch.Tensor | None = None
        for i in range(0, len(paths), 8):  # 8 at a time: never the whole split as float
            loaded = load_images(paths[i : i + 8], **options, gray=setup.gray, on_bad="error",
                                 progress=False)
            if out is None:  # filled in place: a list of chunks and their concatenation would be twice the split
                out = torch.empty((len(paths), *loaded.images.shape[1:]), dtype=torch.uint8)
            out[i : i + len(loaded.images)] = (loaded.images * 255).round()
        return out if out is not None else torch.empty((0, 1, *size), dtype=torch.uint8)

    def _refine_source(self, dataset: ImageDataset) -> torch.Tensor | ImagesOnDemand | None:
        """What the refinement stage of a scoring pass crops from: the split's images in memory (training), else
        read a batch at a time from the files this dataset was loaded from."""
        if not self.options.refine:
            return None
        if "refine_image" in dataset.targets:
            return dataset.targets["refine_image"]
        if dataset.sources is None:
            raise RuntimeError("landmark dataset without the source path of each row (the refinement stage crops "
                               "from the files)")
        return ImagesOnDemand(dataset.sources, self._refine_images)

    def _pixels(self, model: TaskModel, dataset: ImageDataset, device: torch.device,
                batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Final and global-stage predictions (the same without refinement), original pixels (N, L, 2), the
        landmarks the shape step moved (N, L) (None without it) and the coarse stage's predictions (None without
        one)."""
        from tasks.landmarks.inference import landmark_outputs

        out = landmark_outputs(model, dataset.images, device, _inference_batch(batch_size, dataset.images),
                               refine_images=self._refine_source(dataset), precision=self.precision)
        sizes = dataset.target_array("orig_size")
        coarse = None if out.coarse_coords is None else to_pixels(out.coarse_coords, sizes)
        return to_pixels(out.coords, sizes), to_pixels(out.global_coords, sizes), out.shape_moved, coarse

    def evaluate(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 64,
                 *, with_ci: bool = False) -> EvalResult:
        from tasks.landmarks.metrics import landmark_metrics, radial_errors_mm

        pred, global_pred, moved, coarse_pred = self._pixels(model, dataset, device, batch_size)
        sizes = dataset.target_array("orig_size")
        true = to_pixels(dataset.target_array("landmarks").astype(np.float64), sizes)
        true = np.round(true, 3)
        spacing = dataset.target_array("spacing").astype(np.float64)
        visible = np.isfinite(true).all(-1)  # NaN: masked (task.landmarks.missing=mask)
        m = landmark_metrics(pred, true, spacing, radii=tuple(self.options.sdr_radii),
                             names=self.info["landmark_names"], visible=visible)
        err = radial_errors_mm(pred, true, spacing, visible)
        if getattr(model, "refine_stage", None) is not None:  # what the refinement stage adds, on the same images
            stages = {"global": radial_errors_mm(global_pred, true, spacing, visible)}
            if coarse_pred is not None:
                stages["coarse"] = radial_errors_mm(coarse_pred, true, spacing, visible)
            if with_ci:  # a final scoring, not every epoch's validation: one more refinement pass
                stages["refine_from_truth"] = self._refine_from_truth(model, dataset, device, batch_size,
                                                                      global_pred, true, spacing, visible)
            for key, errors in stages.items():  # overall and per landmark, beside the refined mean_mm
                m[f"{key}_mre_mm"] = float(np.nanmean(errors))
                for entry in m["per_landmark"]:  # NaN for a landmark masked on every image, as its mean_mm
                    column = errors[:, entry["index"] - 1]
                    entry[f"{key}_mean_mm"] = float(column[np.isfinite(column)].mean()) if np.isfinite(column).any() \
                        else float("nan")
        if moved is not None:  # landmarks the shape step moved, over the split
            m["shape_moved"] = int(moved.sum())
        df = self._frame(dataset, pred, moved)
        for k in range(pred.shape[1]):
            df[f"{k + 1}_x_true"] = true[:, k, 0]
            df[f"{k + 1}_y_true"] = true[:, k, 1]
            df[f"{k + 1}_err_mm"] = err[:, k]
        return EvalResult(m, df, {"pred": pred, "true": true, "err": err, "spacing": spacing})

    def _refine_from_truth(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int,
                           global_pred: np.ndarray, true: np.ndarray, spacing: np.ndarray, visible: np.ndarray
                           ) -> np.ndarray:
        """(N, L) radial errors (mm) of the refinement stage with each crop centred on the true landmark (a masked
        one: on the global estimate, its error NaN): the refinement's own error, against which ``global_mre_mm`` and
        ``mre_mm`` say how much of the refined error comes from the global stage's estimates."""
        from tasks.landmarks.inference import refined_from
        from tasks.landmarks.metrics import radial_errors_mm

        sizes = dataset.target_array("orig_size")
        start = np.where(visible[..., None], true, global_pred)
        refined = refined_from(model, self._refine_source(dataset), to_normalised(start, sizes), device,
                               _inference_batch(batch_size, dataset.images), self.precision)
        return radial_errors_mm(to_pixels(refined, sizes), true, spacing, visible)

    def _frame(self, dataset: ImageDataset, pred: np.ndarray, shape_moved: np.ndarray | None = None) -> pd.DataFrame:
        """Image and coordinates, and with the shape step ``shape_moved``: how many landmarks of the image it moved."""
        df = pd.DataFrame({"image": dataset.ids})
        for k in range(pred.shape[1]):
            df[f"{k + 1}_x"] = pred[:, k, 0]
            df[f"{k + 1}_y"] = pred[:, k, 1]
        if shape_moved is not None:
            df["shape_moved"] = shape_moved.sum(1).astype(int)
        return df

    def predict(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 64) -> pd.DataFrame:
        """Coordinates in original pixels, a confidence per landmark, and a per-image flag (see
        :mod:`tasks.landmarks.inference`); flagged images are also named on stderr."""
        from tasks.landmarks.inference import image_flags, landmark_outputs

        batch_size = _inference_batch(batch_size, dataset.images)
        out = landmark_outputs(model, dataset.images, device, batch_size, refine_images=self._refine_source(dataset),
                               precision=self.precision)
        # the mirror check compares the global stage's confidences: the flipped pass needs no refinement
        flipped = landmark_outputs(model, dataset.images, device, batch_size, flip=True, precision=self.precision)
        c = self.options
        flags = image_flags(out.global_confidence, flipped.confidence, low=c.low_confidence, mirror_ratio=c.mirror_ratio)
        fixed = np.array([c.fix_mirrored and f == "mirrored?" for f in flags], dtype=bool)
        if fixed.any():
            self._predict_on_flip(model, dataset, np.flatnonzero(fixed), out, device, batch_size)
        df = self._frame(dataset, to_pixels(out.coords, dataset.target_array("orig_size")), out.shape_moved)
        for k in range(out.confidence.shape[1]):
            df[f"{k + 1}_confidence"] = out.confidence[:, k]
        df["mean_confidence"] = out.confidence.mean(1)
        df["flipped_confidence"] = flipped.confidence.mean(1)
        df["flag"] = flags
        df["mirror_fixed"] = fixed
        flagged = df[df["flag"] != ""]
        if len(flagged):
            listed = ", ".join(f"{i} ({f})" for i, f in zip(flagged["image"][:5], flagged["flag"][:5]))
            print(f"warning: {len(flagged)} of {len(df)} images flagged (column 'flag'): {listed}"
                  f"{' ...' if len(flagged) > 5 else ''}", file=sys.stderr)
        return df

    def _predict_on_flip(self, model: TaskModel, dataset: ImageDataset, rows: np.ndarray, out: Any,
                         device: torch.device, batch_size: int) -> None:
        """Replace the coordinates and confidences of ``rows`` (images flagged mirrored) in ``out`` by those of their
        left-right flip, mapped back to the image as stored: normalised x -> 1 - x (pixel centres map onto pixel
        centres, see the module's coordinate convention)."""
        from tasks.landmarks.inference import landmark_outputs

        sub = dataset.subset(rows)
        flip = landmark_outputs(model, sub.images, device, batch_size, flip=True, refine_images=self._refine_source(sub),
                                precision=self.precision)
        coords = flip.coords.copy()
        coords[..., 0] = 1.0 - coords[..., 0]
        out.coords[rows], out.confidence[rows] = coords, flip.confidence
        out.global_coords[rows] = flip.global_coords
        out.global_coords[rows, :, 0] = 1.0 - flip.global_coords[..., 0]
        out.global_confidence[rows] = flip.global_confidence
        if out.shape_moved is not None:
            out.shape_moved[rows] = flip.shape_moved

    def plots(self, result: EvalResult, dataset: ImageDataset, out_dir: Path, prefix: str) -> list[Path]:
        from tasks.landmarks.metrics import plot_landmark_overlay

        out = []
        err = np.nanmean(result.outputs["err"], 1)  # masked landmarks are NaN
        # the best, the median and the worst image
        order = np.argsort(err)
        for tag, i in (("best", order[0]), ("median", order[len(order) // 2]), ("worst", order[-1])):
            img = dataset.images[i, 0].numpy()
            h, w = dataset.target_array("orig_size")[i]
            sx, sy = img.shape[1] / w, img.shape[0] / h
            scale = np.array([sx, sy])
            pred = (result.outputs["pred"][i] + 0.5) * scale - 0.5
            true = (result.outputs["true"][i] + 0.5) * scale - 0.5
            out.append(plot_landmark_overlay(img, pred, true, out_dir / f"{prefix}_overlay_{tag}.png",
                                             title=f"{dataset.ids[i]}: MRE {err[i]:.2f} mm ({tag})"))
        return out

    def paired_comparison(self, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
        from transfer.stats import paired_errors

        if list(a["image"]) != list(b["image"]):
            raise DatasetError("paired comparison needs predictions on the same images in the same order")
        cols = [c for c in a.columns if c.endswith("_err_mm")]
        return paired_errors(a[cols].mean(1).to_numpy(), b[cols].mean(1).to_numpy(), metric="mre_mm",
                             seed=self.seed)

    def pooled_test_metrics(self, predictions: list[pd.DataFrame]) -> dict[str, Any] | None:
        """MRE, SDR, the gross-failure shares and the per-landmark table over the radial errors (the ``<k>_err_mm``
        columns) of every fold's test images together: each image counts once, as in one test split of them all."""
        from tasks.landmarks.metrics import error_metrics

        frames = [df[sorted((c for c in df.columns if c.endswith("_err_mm")), key=lambda c: int(c.split("_")[0]))]
                  for df in predictions]
        widths = {f.shape[1] for f in frames}
        if len(widths) != 1 or not widths.pop():
            raise DatasetError("pooled landmark metrics need every run's predictions with the same landmarks "
                               f"(<k>_err_mm columns: {[f.shape[1] for f in frames]})")
        err = np.concatenate([f.to_numpy(np.float64) for f in frames])
        names = self.options.names if len(self.options.names) == err.shape[1] else None
        return error_metrics(err, tuple(self.options.sdr_radii), names)

    def summary_metrics(self, metrics: dict[str, Any]) -> dict[str, float]:
        out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating))}
        for r, v in (metrics.get("sdr") or {}).items():
            out[f"sdr_{r}mm"] = float(v)
        for r, v in (metrics.get("over") or {}).items():  # absent from runs scored before it was added
            out[f"over_{r}mm"] = float(v)
        return out

    def report_sections(self, runs: dict[str, dict[str, Any]], table: Callable[[pd.DataFrame], str]) -> list[str]:
        """Per-landmark mean and SD (mm) on the test split, one column per run (the dental seed's Table I).

        None when any run's summary lacks per-landmark test metrics.
        """
        from tasks.landmarks.metrics import per_landmark_table

        cols: dict[str, list[str]] = {}
        names: list[str] = []
        with_sdr = False
        for run, summary in runs.items():
            test = summary.get("test") or {}
            if not test.get("per_landmark"):
                return []
            per = per_landmark_table(test, include_sdr=True)
            names = list(per["landmark"])
            sdr = per.get(f"sdr_{_SDR_SHOWN}")  # absent when task.landmarks.sdr_radii leaves out 2 mm
            cols[run] = [f"{m:.2f} ± {sd:.2f}" + ("" if sdr is None else f" ({sdr[k]:.0f}%)")
                         for k, m, sd in zip(per.index, per["mean"], per["sd"])]
            with_sdr = with_sdr or sdr is not None
        if not cols:
            return []
        sdr_note = f"; SDR at {_SDR_SHOWN} mm in parentheses" if with_sdr else ""
        return [f"## Per-landmark radial error on the test split (mm, mean ± SD{sdr_note})",
                "", table(pd.DataFrame({"landmark": names, **cols})), "", *self._gross_section(runs, names, table)]

    @staticmethod
    def _gross_section(runs: dict[str, dict[str, Any]], names: list[str],
                       table: Callable[[pd.DataFrame], str]) -> list[str]:
        """Per landmark, the share of test errors above 4 and above 10 mm: where a detector fails grossly (the
        peak on a wrong structure), which the mean hides. Only for runs whose metrics have it."""
        from tasks.landmarks.metrics import GROSS_RADII_MM, per_landmark_table

        keys = [f"over_{float(r)}" for r in GROSS_RADII_MM]
        cols: dict[str, list[str]] = {}
        for run, summary in runs.items():
            per = per_landmark_table(summary["test"], include_over=True)
            if all(k in per for k in keys):
                cols[run] = [" / ".join(f"{per[k][i]:.1f}" for k in keys) for i in per.index]
        if not cols:
            return []
        radii = " / ".join(f"> {r:g} mm" for r in GROSS_RADII_MM)
        return [f"### Per-landmark gross failures on the test split (% of errors {radii})", "",
                table(pd.DataFrame({"landmark": names, **cols})), ""]


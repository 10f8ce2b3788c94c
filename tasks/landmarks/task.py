"""Landmark regression with a Euclidean loss: direct coordinate regression or a soft-argmax heatmap head.

Coordinates convention: a landmark at original pixel (x, y) (integer pixel
index, origin top-left, as in the ISBI 2015 CSVs) is normalised to
u = (x + 0.5) / W, v = (y + 0.5) / H, so pixel centres map consistently at
every image size. Every metric is computed back in original pixels and mm.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from tasks.landmarks.config import LandmarkConfig
from transfer.data.augment import BatchAugment
from transfer.backbones import StagedBackbone
from transfer.data.datasets import ImageDataset, LoadedImages, load_images
from transfer.errors import DatasetError
from transfer.api import EvalResult, Task, TaskModel, batched_forward

_COL = re.compile(r"^(\d+)_([xy])$")
_IMAGE_COLUMNS = ("image_path", "image", "path", "file")


def to_normalised(px: np.ndarray, sizes_hw: np.ndarray) -> np.ndarray:
    """(N, L, 2) original pixel (x, y) -> normalised (u, v); sizes (N, 2) as (H, W)."""
    wh = sizes_hw[:, None, ::-1].astype(np.float64)
    return (px + 0.5) / wh


def to_pixels(norm: np.ndarray, sizes_hw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_normalised`."""
    wh = sizes_hw[:, None, ::-1].astype(np.float64)
    return norm * wh - 0.5


def read_landmark_csv(csv: Path) -> tuple[pd.DataFrame, str, list[tuple[str, str]]]:
    """The CSV, its image column, and the (x, y) column names of landmarks 1..L; checks the header."""
    if not csv.is_file():
        raise DatasetError(f"{csv}: landmark CSV not found")
    df = pd.read_csv(csv)
    image_col = next((c for c in _IMAGE_COLUMNS if c in df.columns), None)
    if image_col is None:
        raise DatasetError(f"{csv}: no image column (one of {list(_IMAGE_COLUMNS)}); columns: {list(df.columns)[:6]}...")
    idx: dict[int, dict[str, str]] = {}
    for c in df.columns:
        m = _COL.match(str(c))
        if m:
            idx.setdefault(int(m.group(1)), {})[m.group(2)] = c
    if not idx:
        raise DatasetError(f"{csv}: no landmark columns named <k>_x, <k>_y")
    ks = sorted(idx)
    if ks != list(range(1, len(ks) + 1)):
        raise DatasetError(f"{csv}: landmark numbers {ks} are not 1..{len(ks)}")
    for k in ks:
        for axis in "xy":
            if axis not in idx[k]:
                raise DatasetError(f"{csv}: missing column {k}_{axis}")
    return df, image_col, [(idx[k]["x"], idx[k]["y"]) for k in ks]


def landmark_coordinates(df: pd.DataFrame, image_col: str, columns: list[tuple[str, str]], csv: Path) -> np.ndarray:
    """(N, L, 2) original pixel (x, y) of every row; a missing or non-numeric value names its line and column."""
    coords = np.zeros((len(df), len(columns), 2))
    for k, pair in enumerate(columns):
        for axis, c in enumerate(pair):
            vals = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
            bad = np.flatnonzero(~np.isfinite(vals))
            if len(bad):
                r = int(bad[0])
                raise DatasetError(f"{csv}, line {r + 2} ({df[image_col].iloc[r]}): column {c} has "
                                   f"non-numeric or missing value {df[c].iloc[r]!r}")
            coords[:, k, axis] = vals
    return coords


def image_paths(images: pd.Series, csv: Path, base: Path) -> list[Path]:
    """The image of every row, relative to ``base`` unless absolute; each must exist."""
    paths = []
    for r, p in enumerate(images.astype(str)):
        full = Path(p) if Path(p).is_absolute() else base / p
        if not full.is_file():
            raise DatasetError(f"{csv}, line {r + 2}: image {full} does not exist")
        paths.append(full)
    return paths


def check_inside_images(coords: np.ndarray, sizes_hw: np.ndarray, kept: np.ndarray, paths: list[Path],
                        csv: Path) -> None:
    """Every landmark (N, L, 2) of the kept rows lies inside its original (H, W) image."""
    for i, r in enumerate(kept):
        h, w = sizes_hw[i]
        x, y = coords[i, :, 0], coords[i, :, 1]
        out = np.flatnonzero((x < 0) | (x >= w) | (y < 0) | (y >= h))
        if len(out):
            k = int(out[0])
            raise DatasetError(f"{csv}, line {int(r) + 2} ({paths[r].name}): landmark {k + 1} at "
                               f"({coords[i, k, 0]:g}, {coords[i, k, 1]:g}) lies outside the {w}x{h} image")


class LandmarkModel(TaskModel):
    """Backbone + regression head (pooled features) or heatmap head (one feature map)."""

    def __init__(self, backbone: StagedBackbone, num_landmarks: int, *, head: str, hidden: int, dropout: float,
                 heatmap_stage: str | None, heatmap_weight: float, heatmap_sigma: float,
                 augment: BatchAugment | None, heatmap_stride: int = 4, sigma_mm: float = 2.0,
                 decode_radius: int = 3, decoder_width: int = 32) -> None:
        super().__init__()
        from tasks.landmarks.dense_head import DecoderHeatmapHead
        from tasks.landmarks.heads import HeatmapHead, RegressionHead

        self.backbone = backbone
        self.kind = head
        self.augment = augment
        self.heatmap_weight = heatmap_weight
        self.heatmap_sigma = heatmap_sigma
        self.sigma_mm = sigma_mm
        self.unused_stages: list[str] = []
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

    def forward_all(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.stage is None:
            return {"coords": self.head(self.backbone(images))}
        feats = self.backbone.forward_stages(images, upto=self.stage)
        if self.kind == "decoder":
            return self.head(feats, (int(images.shape[-2]), int(images.shape[-1])))
        return self.head(feats[self.stage])

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
        loss = euclidean_loss(out["coords"].float() * units, target * units)
        logs = {"euclidean": loss.detach()}
        if self.heatmap_weight > 0 and "heatmaps" in out:
            hl = heatmap_loss(out["heatmaps"].float(), target, self._target_sigma(batch, out["heatmaps"]))
            loss = loss + self.heatmap_weight * hl
            logs["heatmap"] = hl.detach()
        return {"loss": loss, **logs}

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
    stratify_key = None
    report_metrics = ("mre_mm", "sd_mm", "sdr_2.0mm", "sdr_2.5mm", "sdr_3.0mm", "sdr_4.0mm")
    report_digits = 2  # millimetres and percentages

    def load_split(self, spec: str, which: str) -> ImageDataset:
        """A landmark CSV (an image column, ``<k>_x, <k>_y`` for k = 1..L in original pixels, optional
        ``spacing`` in mm) and its images, decoded at the working size."""
        csv = self.resolve(spec)
        df, image_col, columns = read_landmark_csv(csv)
        self._set_landmarks(len(columns), csv)
        coords = landmark_coordinates(df, image_col, columns, csv)
        paths = image_paths(df[image_col], csv, self.cfg.data.image_base(csv))
        loaded = self._load_images(paths, which)
        coords = coords[loaded.kept]
        check_inside_images(coords, loaded.original_sizes, loaded.kept, paths, csv)
        spacing = self._spacing(df, loaded)
        targets = {
            "landmarks": torch.from_numpy(to_normalised(coords, loaded.original_sizes)).float(),
            "orig_size": torch.from_numpy(loaded.original_sizes.astype(np.float32)),
            "spacing": torch.from_numpy(spacing.astype(np.float32)),
        }
        return ImageDataset(loaded.images, targets, [paths[r].name for r in loaded.kept])

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
        cfg = self.cfg
        loaded = load_images(paths, cfg.data.image_size, cfg.data.cache_dir, gray=cfg.backbone.in_chans == 1,
                             on_bad=cfg.data.on_bad, progress=cfg.tracking.progress, desc=f"decoding {which}")
        self.skipped += loaded.skipped
        return loaded

    def _spacing(self, df: pd.DataFrame, loaded: LoadedImages) -> np.ndarray:
        """(N, 2) mm per pixel as (x, y) of the kept images: the CSV's column, else the file's, else the option."""
        spacing = np.full((len(loaded.kept), 2), self.options.pixel_spacing, dtype=np.float64)
        if "spacing" in df.columns:
            spacing[:] = pd.to_numeric(df["spacing"], errors="coerce").to_numpy()[loaded.kept, None]
        else:
            for i, s in enumerate(loaded.spacings):
                if s is not None:
                    spacing[i] = (s[1], s[0])  # file spacing is (row, col) = (y, x)
        return spacing

    def build_model(self, backbone: StagedBackbone, train: ImageDataset | None = None) -> LandmarkModel:
        c = self.options
        aug = BatchAugment(self.cfg.data.augment, flip_pairs=[tuple(p) for p in c.flip_pairs], landmarks=True)
        return LandmarkModel(backbone, self.info["num_landmarks"], head=c.head, hidden=c.hidden, dropout=c.dropout,
                             heatmap_stage=c.heatmap_stage, heatmap_weight=c.heatmap_weight,
                             heatmap_sigma=c.heatmap_sigma, augment=aug, heatmap_stride=c.heatmap_stride,
                             sigma_mm=c.sigma_mm, decode_radius=c.decode_radius, decoder_width=c.decoder_width)

    def _pixels(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int) -> np.ndarray:
        norm = batched_forward(model, dataset.images, device, batch_size).numpy().astype(np.float64)
        return to_pixels(norm, dataset.target_array("orig_size"))

    def evaluate(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 64,
                 *, with_ci: bool = False) -> EvalResult:
        from tasks.landmarks.metrics import landmark_metrics, radial_errors_mm

        pred = self._pixels(model, dataset, device, batch_size)
        sizes = dataset.target_array("orig_size")
        true = to_pixels(dataset.target_array("landmarks").astype(np.float64), sizes)
        true = np.round(true, 3)
        spacing = dataset.target_array("spacing").astype(np.float64)
        m = landmark_metrics(pred, true, spacing, radii=tuple(self.options.sdr_radii),
                             names=self.info["landmark_names"])
        err = radial_errors_mm(pred, true, spacing)
        df = self._frame(dataset, pred)
        for k in range(pred.shape[1]):
            df[f"{k + 1}_x_true"] = true[:, k, 0]
            df[f"{k + 1}_y_true"] = true[:, k, 1]
            df[f"{k + 1}_err_mm"] = err[:, k]
        return EvalResult(m, df, {"pred": pred, "true": true, "err": err})

    def _frame(self, dataset: ImageDataset, pred: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame({"image": dataset.ids})
        for k in range(pred.shape[1]):
            df[f"{k + 1}_x"] = pred[:, k, 0]
            df[f"{k + 1}_y"] = pred[:, k, 1]
        return df

    def predict(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 64) -> pd.DataFrame:
        """Coordinates in original pixels, a confidence per landmark, and a per-image flag (see
        :mod:`tasks.landmarks.inference`); flagged images are also named on stderr."""
        from tasks.landmarks.inference import image_flags, landmark_outputs

        out = landmark_outputs(model, dataset.images, device, batch_size)
        flipped = landmark_outputs(model, dataset.images, device, batch_size, flip=True)
        df = self._frame(dataset, to_pixels(out.coords, dataset.target_array("orig_size")))
        for k in range(out.confidence.shape[1]):
            df[f"{k + 1}_confidence"] = out.confidence[:, k]
        df["mean_confidence"] = out.confidence.mean(1)
        df["flipped_confidence"] = flipped.confidence.mean(1)
        c = self.options
        df["flag"] = image_flags(out.confidence, flipped.confidence, low=c.low_confidence, mirror_ratio=c.mirror_ratio)
        flagged = df[df["flag"] != ""]
        if len(flagged):
            listed = ", ".join(f"{i} ({f})" for i, f in zip(flagged["image"][:5], flagged["flag"][:5]))
            print(f"warning: {len(flagged)} of {len(df)} images flagged (column 'flag'): {listed}"
                  f"{' ...' if len(flagged) > 5 else ''}", file=sys.stderr)
        return df

    def plots(self, result: EvalResult, dataset: ImageDataset, out_dir: Path, prefix: str) -> list[Path]:
        from tasks.landmarks.metrics import plot_landmark_overlay

        out = []
        err = result.outputs["err"].mean(1)
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
                             seed=self.cfg.seed)

    def summary_metrics(self, metrics: dict[str, Any]) -> dict[str, float]:
        out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating))}
        for r, v in (metrics.get("sdr") or {}).items():
            out[f"sdr_{r}mm"] = float(v)
        return out

    def report_sections(self, runs: dict[str, dict[str, Any]], table: Callable[[pd.DataFrame], str]) -> list[str]:
        """Per-landmark mean and SD (mm) on the test split, one column per run (the dental seed's Table I).

        None when any run's summary lacks per-landmark test metrics.
        """
        from tasks.landmarks.metrics import per_landmark_table

        cols: dict[str, list[str]] = {}
        names: list[str] = []
        for run, summary in runs.items():
            test = summary.get("test") or {}
            if not test.get("per_landmark"):
                return []
            per = per_landmark_table(test)
            names = list(per["landmark"])
            cols[run] = [f"{m:.2f} ± {sd:.2f}" for m, sd in zip(per["mean"], per["sd"])]
        if not cols:
            return []
        return ["## Per-landmark radial error on the test split (mm, mean ± SD)", "",
                table(pd.DataFrame({"landmark": names, **cols})), ""]


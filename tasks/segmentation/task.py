"""Semantic segmentation: image folder + mask folder (+ field of view), the dense decoder, Dice + CE.

Sizes: images go through the decode cache at ``data.image_size`` (stretched, as
for every task); masks and field-of-view masks are read at their native size,
checked against their image's size, then resized to the working size with
*nearest* neighbours (labels are never interpolated) for training. Scoring is
always at the files' resolution: the sliding-window probabilities are resized
(bilinear) back to each mask's size and compared with the mask as stored, so the
metrics do not depend on ``data.image_size`` (DRIVE at 584 x 565 resizes
nothing). Training draws random ``crop_size`` crops (image and mask cropped
identically); validation, test and predict run blended sliding windows over the
whole working-size image, so any size works. ``predict`` writes each mask back at
the image's original size (nearest).
"""
from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from tasks.segmentation.config import SegmentationConfig
from transfer.api import EvalResult, Task, TaskModel, inference_forward
from transfer.backbones import StagedBackbone
from transfer.config import AugmentConfig
from transfer.data.augment import BatchAugment
from transfer.data.datasets import ImageDataset, Skipped, load_images
from transfer.data.inventory import scan_folder
from transfer.errors import DatasetError, MedTransferError
from transfer.heads import DenseDecoder

_MASK_SUFFIXES = (".png", ".gif", ".tif", ".tiff", ".bmp")


def read_mask(path: Path) -> np.ndarray:
    """A label mask as stored: (H, W) integer array at native resolution.

    PNG / GIF / BMP through PIL: gray modes as stored; palette images by their
    gray level when the palette entries used are exactly gray (how PIL writes a
    gray image to GIF), else by palette index (label palettes, as in VOC; DRIVE's
    ``2nd_manual`` GIFs are 0/1 indices of a near-black / near-white palette);
    1-bit as 0/255. TIFF through tifffile. Colour masks are an error (declare
    gray values).
    """
    from PIL import Image

    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            a = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as im:
                im.seek(0)
                if im.mode == "P":
                    idx = np.asarray(im)
                    pal = np.asarray(im.getpalette() or [], np.int64).reshape(-1, 3)
                    used = pal[np.unique(idx)] if len(pal) > int(idx.max()) else None
                    # an exactly gray palette stands for gray levels (PIL writes an L image to GIF this way);
                    # any other palette is a label palette: the index is the label (VOC label PNGs)
                    a = pal[idx, 0] if used is not None and (used == used[:, :1]).all() else idx
                elif im.mode == "1":
                    a = np.asarray(im, dtype=np.uint8) * 255
                elif im.mode in ("RGB", "RGBA"):
                    rgb = np.asarray(im.convert("RGB"))
                    if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
                        raise DatasetError(f"{path}: colour mask; store class values as gray levels")
                    a = rgb[..., 0]
                elif im.mode == "LA":
                    a = np.asarray(im.convert("L"))
                else:
                    a = np.asarray(im)
    except MedTransferError:
        raise
    except Exception as e:  # noqa: BLE001 - a library boundary: name the file
        raise DatasetError(f"{path}: cannot read mask ({type(e).__name__}: {e})") from e
    if a.ndim == 3 and a.shape[-1] in (3, 4) and (a[..., :3] == a[..., :1]).all():
        a = a[..., 0]
    if a.ndim != 2:
        raise DatasetError(f"{path}: mask must be a 2-D gray image, got shape {a.shape}")
    return a.astype(np.int64)


def to_class_index(mask: np.ndarray, values: list[int], path: Path) -> np.ndarray:
    """Pixel values -> class indices (uint8); a value not declared is an error naming the file and the value."""
    lut = {v: i for i, v in enumerate(values)}
    found = np.unique(mask)
    bad = [int(v) for v in found if int(v) not in lut]
    if bad:
        raise DatasetError(f"{path}: mask value(s) {bad[:5]} not declared in task.segmentation.class_values "
                           f"{values}")
    out = np.zeros(mask.shape, np.uint8)
    for v in found:
        out[mask == v] = lut[int(v)]
    return out


def resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) labels -> ``size`` (h, w) by nearest neighbour (labels are never interpolated)."""
    if a.shape == tuple(size):
        return a
    t = torch.from_numpy(np.ascontiguousarray(a))[None, None].float()
    return F.interpolate(t, size=tuple(size), mode="nearest-exact")[0, 0].numpy().astype(a.dtype)


class SegmentationModel(TaskModel):
    """Backbone + :class:`~transfer.heads.DenseDecoder` (the head: decoder and its 1x1 classifier)."""

    reads_stage_outputs = True

    def __init__(self, backbone: StagedBackbone, num_classes: int, *, stride: int, width: int,
                 top_stage: str | None, image_skip: bool, crop_size: int, vflip: bool,
                 augment: AugmentConfig, dice_weight: float, ce_weight: float, foreground_ratio: float = 0.0) -> None:
        super().__init__()
        from tasks.segmentation.losses import DiceCELoss

        if augment.rotation or augment.scale or augment.translate:
            raise DatasetError("data.augment rotation/scale/translate are not supported for segmentation; "
                               "use hflip, task.segmentation.vflip, brightness, contrast")
        self.backbone = backbone
        self.head = DenseDecoder(backbone.feature_info, num_classes, out_stride=stride, width=width,
                                 top_stage=top_stage, image_channels=backbone.in_chans if image_skip else 0)
        names = list(backbone.stage_names)
        self.unused_stages = names[names.index(self.head.top_stage) + 1 :]
        self.num_classes = num_classes
        self.crop_size = crop_size
        self.foreground_ratio = foreground_ratio
        self.hflip, self.vflip = augment.hflip, vflip
        # the intensity ops only (the mask stays as it is): brightness, contrast and the acquisition ops
        intensity = dataclasses.replace(augment, rotation=0.0, scale=0.0, translate=0.0, hflip=False)
        aug = BatchAugment(intensity)
        self.intensity = aug if aug.active else None
        self.loss = DiceCELoss(dice_weight, ce_weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> class logits (B, K, H, W), any H and W."""
        size = (int(images.shape[-2]), int(images.shape[-1]))
        # forward_features: the dense-head protocol every backbone implements (generic timm models included)
        feats = self.backbone.forward_features(images)
        logits = self.head(feats, size, images if self.head.image_channels else None)
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def random_crops(self, images: torch.Tensor, masks: torch.Tensor, fov: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same ``crop_size`` window of image, mask and FOV, per sample (whole image if smaller): a share
        ``foreground_ratio`` of them centred on a foreground pixel, the rest uniform (:func:`crop_origins`)."""
        from tasks.segmentation.crops import crop_origins

        h, w = images.shape[-2:]
        ch, cw = min(self.crop_size, h), min(self.crop_size, w)
        if (ch, cw) == (h, w):
            return images, masks, fov
        ys, xs, _ = crop_origins(masks, fov, (ch, cw), self.foreground_ratio)
        sl = [(slice(y, y + ch), slice(x, x + cw)) for y, x in zip(ys, xs)]
        return (torch.stack([images[i, :, a, b] for i, (a, b) in enumerate(sl)]),
                torch.stack([masks[i, a, b] for i, (a, b) in enumerate(sl)]),
                torch.stack([fov[i, a, b] for i, (a, b) in enumerate(sl)]))

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images, masks, fov = self.random_crops(batch["image"], batch["mask"], batch["fov"])
        for flag, dim in ((self.hflip, -1), (self.vflip, -2)):
            if flag:
                flip = torch.rand(len(images), device=images.device) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(dim), images)
                masks = torch.where(flip[:, None, None], masks.flip(dim), masks)
                fov = torch.where(flip[:, None, None], fov.flip(dim), fov)
        if self.intensity is not None:
            images, _ = self.intensity(images)
        out = self.loss(self(images), masks, fov)
        # the share of crops holding foreground in their FOV: the engine averages it per epoch (train_foreground_crops)
        out["foreground_crops"] = ((masks > 0) & fov).flatten(1).any(1).float().mean()
        return out


#: epochs after which a validation Dice that has not left 0 is warned about (a model that never predicts foreground)
ZERO_DICE_EPOCHS = 3


def foreground_crop_share(history: list[dict[str, Any]]) -> float | None:
    """The share of a fit's training crops that held foreground in their FOV, from its epoch rows
    (``train_foreground_crops``, each epoch weighted by its steps); None when no row has it."""
    rows = [r for r in history if "train_foreground_crops" in r]
    steps = sum(int(r.get("steps", 1)) for r in rows)
    if not rows or steps == 0:
        return None
    return sum(float(r["train_foreground_crops"]) * int(r.get("steps", 1)) for r in rows) / steps


class SegmentationTask(Task):
    name = "segmentation"
    options_class = SegmentationConfig
    formats = ("mask_folder",)
    monitor = "dice"
    mode = "max"
    stratify_key = None
    report_metrics = ("dice", "iou", "sensitivity", "specificity", "auc", "hd95_px", "assd_px")
    metric_ranges = {**{m: (0.0, 1.0) for m in ("dice", "iou", "sensitivity", "specificity", "auc", "auc_pooled")},
                     **{m: (0.0, math.inf) for m in ("hd95_px", "assd_px", "hd95_mm", "assd_mm")}}

    # ------------------------------------------------------------------ data

    def _bad(self, path: Path | str, reason: str) -> None:
        """An invalid sample: an error naming the file, or a reported skip with ``data.on_bad: skip``."""
        if self.data.on_bad == "skip":
            self.skipped.append(Skipped(str(path), reason))
            print(f"warning: skipped {path}: {reason}", file=sys.stderr)
            return
        raise DatasetError(f"{path}: {reason}")

    def pair_files(self, split: Path) -> list[tuple[Path, Path, Path | None]]:
        """(image, mask, fov or None) triples of a split folder, by the configured pairing rule."""
        o = self.options
        img_dir, mask_dir = split / o.image_dir, split / o.mask_dir
        fov_dir = split / o.fov_dir if o.fov_dir else None
        for d in (img_dir, mask_dir, fov_dir):
            if d is not None and not d.is_dir():
                raise DatasetError(f"{d}: folder not found (split {split}, see task.segmentation.*_dir)")
        rx = re.compile(o.image_pattern)
        triples: list[tuple[Path, Path, Path | None]] = []
        claimed: set[Path] = set()
        scan = scan_folder(img_dir)
        self.skipped += scan.unused  # .txt, hidden files...: counted in the run's warning and summary, not silent
        images = scan.images
        if not images:
            raise DatasetError(f"{img_dir}: no image files")
        for img in images:
            m = rx.fullmatch(img.stem)
            if m is None:
                self._bad(img, f"file name does not match task.segmentation.image_pattern {o.image_pattern!r}")
                continue
            keys = {**{k: v for k, v in m.groupdict().items() if v is not None}, "stem": img.stem}
            mask = mask_dir / o.mask_template.format(**keys)
            claimed.add(mask.resolve())
            if not mask.is_file():
                self._bad(img, f"image has no mask (expected {mask})")
                continue
            fov = None
            if fov_dir is not None:
                fov = fov_dir / o.fov_template.format(**keys)
                if not fov.is_file():
                    self._bad(img, f"image has no field-of-view mask (expected {fov})")
                    continue
            triples.append((img, mask, fov))
        for f in sorted(mask_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in _MASK_SUFFIXES and f.resolve() not in claimed:
                self._bad(f, f"mask has no image in {img_dir} (pairing rule {o.image_pattern!r} -> {o.mask_template!r})")
        return triples

    def load_split(self, spec: str, which: str) -> ImageDataset:
        data, setup, o = self.data, self.setup, self.options
        split = self.resolve(spec)
        if not split.is_dir():
            raise DatasetError(f"{split}: split folder not found (data.{which} for format mask_folder)")
        triples = self.pair_files(split)
        if not triples:
            raise DatasetError(f"{split}: no image with a mask")
        loaded = load_images([t[0] for t in triples], **data.decode_options(),
                             gray=setup.gray, on_bad=data.on_bad, progress=setup.progress,
                             desc=f"decoding {which}")
        self.skipped += loaded.skipped
        size = tuple(int(s) for s in data.image_size)
        keep, masks, fovs, ids, empty, files = [], [], [], [], [], []
        for j, i in enumerate(loaded.kept):
            img, mpath, fpath = triples[int(i)]
            osz = tuple(int(s) for s in loaded.original_sizes[j])
            try:
                raw = read_mask(mpath)
                if raw.shape != osz:
                    raise DatasetError(f"{mpath}: mask is {raw.shape[1]}x{raw.shape[0]} (W x H), its image "
                                       f"{img.name} is {osz[1]}x{osz[0]}")
                cls = to_class_index(raw, list(o.class_values), mpath)
                if fpath is not None:
                    fraw = read_mask(fpath)
                    if fraw.shape != osz:
                        raise DatasetError(f"{fpath}: field-of-view mask is {fraw.shape[1]}x{fraw.shape[0]} "
                                           f"(W x H), its image {img.name} is {osz[1]}x{osz[0]}")
                    fov = fraw > 0
                else:
                    fov = np.ones(osz, bool)
            except DatasetError as e:
                if data.on_bad != "skip":
                    raise
                self.skipped.append(Skipped(str(mpath), str(e)))
                print(f"warning: skipped {mpath}: {e}", file=sys.stderr)
                continue
            if not (cls[fov] > 0).any():
                empty.append(img.name)  # allowed (a healthy image), counted in the run summary
            keep.append(j)
            masks.append(resize_nearest(cls, size))
            fovs.append(resize_nearest(fov.astype(np.uint8), size) > 0)
            ids.append(img.name)
            files.append((mpath, fpath))
        self.info.setdefault("n_masks_read", {})[which] = len(keep)
        if not keep:
            raise DatasetError(f"{split}: every image was skipped ({len(self.skipped)} skipped)")
        images = loaded.images[torch.as_tensor(keep)]
        self.info.update({"class_names": list(o.class_names), "class_values": list(o.class_values),
                          "num_classes": len(o.class_values)})
        self.info.setdefault("empty_masks", {})[which] = empty
        self.info.setdefault("n_empty_masks", {})[which] = len(empty)
        if empty:
            print(f"note: {len(empty)} empty mask(s) in {which} (no foreground in the field of view), "
                  f"e.g. {empty[0]}")
        targets = {"mask": torch.from_numpy(np.stack(masks)), "fov": torch.from_numpy(np.stack(fovs)),
                   "orig_size": torch.from_numpy(loaded.original_sizes[keep].astype(np.float32)),
                   "target_file": torch.arange(len(files))}
        # scoring reads the masks again at their native size (a batch at a time, not held in memory): the working-size
        # masks above are for training only
        return ImageDataset(images, targets, ids, meta={"target_files": files})

    def check_split(self, dataset: ImageDataset, which: str, source: str) -> None:
        """A training split without one foreground pixel inside its FOV teaches "never foreground": it would train to
        the end with validation Dice 0 in silence (wrong ``class_values``, mask folder, or a fraction of healthy
        images)."""
        if which != "train" or self.options.allow_no_foreground or len(dataset) == 0:
            return
        masks, fov = dataset.targets["mask"], dataset.targets["fov"]
        if not ((masks > 0) & fov).any():
            read = self.info.get("n_masks_read", {}).get("train", len(dataset))
            n = f"{len(dataset)} masks" + (f" of the {read} read" if read != len(dataset) else " read")
            raise DatasetError(f"{self.resolve(source)}: no foreground in the training split ({n}, every one empty "
                               f"inside its field of view); check task.segmentation.class_values "
                               f"{list(self.options.class_values)} and mask_dir, or set "
                               "task.segmentation.allow_no_foreground=true to train on it")

    def native_target(self, dataset: ImageDataset, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Image ``i``'s class-index mask and field of view at the files' own resolution; None for a dataset that was
        not read from mask files (built in memory), whose working-size targets are then the truth."""
        files = dataset.meta.get("target_files")
        if files is None or "target_file" not in dataset.targets:
            return None
        mpath, fpath = files[int(dataset.targets["target_file"][i])]
        cls = to_class_index(read_mask(mpath), list(self.options.class_values), mpath)
        fov = read_mask(fpath) > 0 if fpath is not None else np.ones(cls.shape, bool)
        return cls, fov

    # ------------------------------------------------------------------ model

    def build_model(self, backbone: StagedBackbone, train: ImageDataset | None = None) -> SegmentationModel:
        o = self.options
        return SegmentationModel(backbone, len(o.class_values), stride=o.decoder_stride, width=o.decoder_width,
                                 top_stage=o.decoder_top_stage, image_skip=o.image_skip, crop_size=o.crop_size,
                                 vflip=o.vflip, augment=self.data.augment, dice_weight=o.dice_weight,
                                 ce_weight=o.ce_weight, foreground_ratio=o.foreground_ratio)

    def probabilities(self, model: TaskModel, images: torch.Tensor, device: torch.device,
                      batch_size: int = 8) -> torch.Tensor:
        """(N, K, H, W) class probabilities by blended sliding windows (eval mode)."""
        from tasks.segmentation.inference import sliding_window_probs

        o = self.options
        was = model.training
        model.eval()
        try:
            return sliding_window_probs(inference_forward(model, self.precision), images, o.crop_size, o.overlap,
                                        o.blend, batch_size=max(1, min(batch_size, 8)), device=device)
        finally:
            model.train(was)

    # ------------------------------------------------------------------ training reports

    def epoch_warnings(self, history: list[dict[str, Any]]) -> list[str]:
        """A validation Dice still 0 after :data:`ZERO_DICE_EPOCHS` epochs: the model predicts no foreground where
        the masks hold it (a sparse target that uniform crops rarely show, or wrong masks)."""
        dice = [r.get("val_dice") for r in history[:ZERO_DICE_EPOCHS]]
        if len(dice) < ZERO_DICE_EPOCHS or any(d is None or not d == 0 for d in dice):
            return []
        share = foreground_crop_share(history[:ZERO_DICE_EPOCHS])
        held = f"{share:.1%} of the training crops held foreground" if share is not None else "no crop share logged"
        return [f"validation Dice is still 0 after {ZERO_DICE_EPOCHS} epochs: the model predicts no foreground where "
                f"the masks hold it ({held}; task.segmentation.foreground_ratio={self.options.foreground_ratio}); "
                f"for a sparse target raise foreground_ratio or crop_size, or check class_values and the masks"]

    def fit_report(self, history: list[dict[str, Any]], depth: str) -> str | None:
        """The share of training crops that held foreground (``task_info.train_foreground_crops``, by depth)."""
        share = foreground_crop_share(history)
        if share is None:
            return None
        self.info.setdefault("train_foreground_crops", {})[depth] = round(share, 4)
        return (f"training crops holding foreground: {share:.1%} (depth {depth}, "
                f"task.segmentation.foreground_ratio={self.options.foreground_ratio})")

    # ------------------------------------------------------------------ scoring

    def evaluate(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 64,
                 *, with_ci: bool = False) -> EvalResult:
        """Scores at the files' resolution: each image's class probabilities are resized (bilinear) from the working
        size to its mask's native size, where the prediction is taken and every metric computed, so
        ``spacing_mm`` is per original pixel and the numbers do not depend on ``data.image_size``.

        Left out of every mean, counted and named (console and summary): images with no pixel in their field of
        view (``n_unscorable``), and images whose truth and prediction are both empty inside it (``n_empty_agree``:
        Dice 1 there would say nothing about the model).
        """
        from tasks.segmentation.metrics import dataset_means, image_metrics, pooled_auc

        o = self.options
        k = len(o.class_values)
        probs = self.probabilities(model, dataset.images, device, batch_size)
        pred = probs.argmax(1).numpy().astype(np.uint8)
        true = dataset.target_array("mask")
        fov = dataset.target_array("fov").astype(bool)
        rows, fg_probs, fg_true, fg_fov = [], [], [], []
        unscorable, empty_agree = [], []
        n_empty_masks = 0
        for i in range(len(pred)):
            native = self.native_target(dataset, i)
            if native is None:
                t, v, pr = true[i], fov[i], probs[i]
            else:
                t, v = native
                pr = probs[i] if tuple(t.shape) == tuple(probs.shape[-2:]) else F.interpolate(
                    probs[i : i + 1], size=t.shape, mode="bilinear", align_corners=False)[0]
            p = pr.argmax(0).numpy().astype(np.uint8)
            if not v.any():
                unscorable.append(dataset.ids[i])
                rows.append({"dice": float("nan")})
                continue
            m = image_metrics(p, t, v, k, pr.numpy(), o.spacing_mm)
            m["true_pixels"] = float(((t > 0) & v).sum())
            m["pred_pixels"] = float(((p > 0) & v).sum())
            n_empty_masks += m["true_pixels"] == 0
            if m["true_pixels"] == 0 and m["pred_pixels"] == 0:
                empty_agree.append(dataset.ids[i])
                m = {key: float("nan") for key in m}
            rows.append(m)
            if k == 2:
                fg_probs.append(pr[1].numpy())
                fg_true.append(t)
                fg_fov.append(v)
        metrics = dataset_means(rows)
        metrics.pop("true_pixels", None)
        metrics.pop("pred_pixels", None)
        if k == 2 and fg_probs:
            metrics["auc_pooled"] = pooled_auc(fg_probs, fg_true, fg_fov)
        metrics["n_images"] = len(pred)
        metrics["n_scored"] = len(pred) - len(unscorable) - len(empty_agree)
        metrics["n_empty_masks"] = int(n_empty_masks)
        metrics["n_unscorable"], metrics["unscorable"] = len(unscorable), unscorable
        metrics["n_empty_agree"], metrics["empty_agree"] = len(empty_agree), empty_agree
        metrics["scored_at"] = "native" if dataset.meta.get("target_files") is not None else "working size"
        for what, names in (("no pixel in the field of view", unscorable),
                            ("empty truth and empty prediction", empty_agree)):
            if names:
                print(f"note: {len(names)} image(s) left out of the means ({what}): {', '.join(names[:5])}"
                      f"{', ...' if len(names) > 5 else ''}")
        if with_ci and len(rows) > 1:
            d = np.asarray([r["dice"] for r in rows], float)
            d = d[np.isfinite(d)]
            if len(d) > 1:
                rng = np.random.default_rng(self.seed)
                boots = d[rng.integers(0, len(d), (2000, len(d)))].mean(1)
                metrics["dice_ci95"] = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]
        df = pd.DataFrame({"image": dataset.ids})
        table = pd.DataFrame(rows)
        df = pd.concat([df, table], axis=1)
        return EvalResult(metrics, df, {"pred": pred, "true": true, "fov": fov,
                                        "dice": table["dice"].to_numpy()})

    def predict(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 64) -> pd.DataFrame:
        """One row per image; each mask written as a PNG (class values, original size) under :attr:`output_dir`.

        Pixels outside the field of view are set to background when the image's FOV
        mask is found (``fov_dir`` / ``fov_template`` beside the image's folder, as in
        the training data; column ``fov_applied``): training never scored them.
        """
        from PIL import Image

        o = self.options
        out_dir = Path(self.output_dir) if self.output_dir is not None else Path("predicted_masks")
        out_dir.mkdir(parents=True, exist_ok=True)
        probs = self.probabilities(model, dataset.images, device, batch_size)
        pred = probs.argmax(1).numpy()
        values = np.asarray(o.class_values)
        dtype = np.uint8 if values.max() < 256 else np.uint16
        sizes = dataset.target_array("orig_size").astype(int) if "orig_size" in dataset.targets else None
        rows = []
        for i, ident in enumerate(dataset.ids):
            cls = pred[i].astype(np.uint8)
            if sizes is not None:
                cls = resize_nearest(cls, (int(sizes[i][0]), int(sizes[i][1])))
            # the loss never saw pixels outside the field of view, so predictions there mean nothing:
            # zero them when the image's FOV mask is found by the config's pairing rule
            fov_path = self._fov_beside(Path(ident))
            fov_applied = False
            if fov_path is not None:
                fov = read_mask(fov_path) > 0
                if fov.shape == cls.shape:
                    cls[~fov] = 0
                    fov_applied = True
                else:
                    print(f"warning: {fov_path}: size {fov.shape} differs from its image {cls.shape}; not applied",
                          file=sys.stderr)
            path = out_dir / f"{Path(ident).stem}_mask.png"
            Image.fromarray(values[cls].astype(dtype)).save(path)
            row: dict[str, Any] = {"image": ident, "mask_path": str(path), "fov_applied": fov_applied}
            for c in range(1, len(values)):
                row[f"{o.class_names[c]}_pixels"] = int((cls == c).sum())
                row[f"{o.class_names[c]}_fraction"] = float((cls == c).mean())
            rows.append(row)
        print(f"wrote {len(rows)} masks to {out_dir}")
        return pd.DataFrame(rows)

    def _fov_beside(self, image: Path) -> Path | None:
        """The FOV mask of ``image`` by the pairing rule, when it sits in a split folder laid out like the data's."""
        o = self.options
        m = re.fullmatch(o.image_pattern, image.stem)
        depth = len(Path(o.image_dir).parts)
        if not o.fov_dir or m is None or len(image.parents) <= depth:
            return None
        split = image.parents[depth]
        keys = {**{k: v for k, v in m.groupdict().items() if v is not None}, "stem": image.stem}
        p = split / o.fov_dir / o.fov_template.format(**keys)
        return p if p.is_file() else None

    def plots(self, result: EvalResult, dataset: ImageDataset, out_dir: Path, prefix: str) -> list[Path]:
        from tasks.segmentation.metrics import plot_overlay

        n = self.options.plots
        if n == 0 or len(dataset) == 0:
            return []
        dice = np.nan_to_num(result.outputs["dice"], nan=-1.0)
        order = np.argsort(dice)
        picks = [("worst", order[0]), ("median", order[len(order) // 2]), ("best", order[-1])][: max(n, 1)]
        out = []
        for tag, i in picks:
            out.append(plot_overlay(dataset.images[i].numpy(), result.outputs["pred"][i], result.outputs["true"][i],
                                    result.outputs["fov"][i], out_dir / f"{prefix}_overlay_{tag}.png",
                                    f"{dataset.ids[i]}: Dice {dice[i]:.3f} ({tag})"))
        return out

    def paired_comparison(self, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
        """Per-image Dice of model a minus model b (positive: a better), bootstrap CI, Wilcoxon p."""
        from transfer.stats import paired_errors

        if list(a["image"]) != list(b["image"]):
            raise DatasetError("paired comparison needs predictions on the same images in the same order")
        return paired_errors(a["dice"].to_numpy(), b["dice"].to_numpy(), metric="dice", seed=self.seed)

"""Object detection: Pascal VOC / COCO boxes, a torchvision detector on the staged backbone, mAP and FROC.

Boxes are kept normalised by the original image size, (x1 / W, y1 / H, x2 / W,
y2 / H), padded per image to the largest box count (labels -1 mark padding),
so a split stays an :class:`~transfer.data.datasets.ImageDataset` of tensors
that the default collate, the engine's ``to_device`` and ``_batch_size``
handle unchanged. The model scales them to the working size for training;
detections are scaled back to original pixels for every metric and output.

``predictions_*.csv`` of ``evaluate`` (per image, then per box):
``image, kind, class, score, x1, y1, x2, y2, hit`` where ``kind`` is
``image`` (one row per image; ``score`` holds that image's F1 at
``task.detection.score_threshold``), ``true`` (a ground-truth box) or
``pred`` (a detection, ``hit``: matched at IoU >= 0.5, see metrics.py).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tasks.detection.config import DetectionConfig
from tasks.detection.formats import ParseResult, check_boxes, read_coco, read_voc
from tasks.detection.model import DetectionModel
from transfer.api import EvalResult, Task, TaskModel
from transfer.precision import inference_forward
from transfer.backbones import StagedBackbone
from transfer.config import ConfigError
from transfer.data.datasets import ImageDataset, load_images
from transfer.errors import DatasetError

_BOX_COLUMNS = ["x1", "y1", "x2", "y2"]


class DetectionTask(Task):
    name = "detection"
    options_class = DetectionConfig
    formats = ("voc", "coco")
    monitor = "map_50"
    mode = "max"
    stratify_key = None
    metric_ranges = {m: (0.0, 1.0) for m in ("map_50", "map", "map_75", "ap50_*", "ap_*", "froc_*", "f1", "precision",
                                              "recall")}

    @property  # type: ignore[override]
    def report_metrics(self) -> tuple[str, ...]:  # per-class columns depend on the declared classes
        return ("map_50", "map", *[f"ap50_{c}" for c in self.options.classes], "froc_mean", "f1")

    # -- data ----------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        classes = list(self.options.classes)
        if not classes:
            raise ConfigError("task.detection.classes: declare the object classes (e.g. [RBC, WBC, Platelets])")
        return classes

    def load_split(self, spec: str, which: str) -> ImageDataset:
        data, setup, classes = self.data, self.setup, self.classes
        path = self.resolve(spec)
        on_bad = data.on_bad
        if data.format == "voc":
            image_dir = self.resolve(data.image_dir) if data.image_dir else None
            parsed = read_voc(path, classes, image_dir, on_bad)
        else:
            parsed = read_coco(path, classes, data.image_base(path), on_bad)
        if not parsed.items:
            raise DatasetError(f"{path}: no annotated image to load ({len(parsed.skipped)} skipped)")
        loaded = load_images([it.image for it in parsed.items], **data.decode_options(),
                             gray=setup.gray, on_bad=on_bad, progress=setup.progress,
                             desc=f"decoding {which}")
        parsed.skipped += loaded.skipped
        counts = {"boxes_clipped": 0, "boxes_dropped": 0, **parsed.counts}
        items = []
        for i, r in enumerate(loaded.kept):
            h, w = (int(v) for v in loaded.original_sizes[i])
            items.append(check_boxes(parsed.items[int(r)], h, w, self.options.degenerate_boxes, parsed.skipped,
                                     counts))
        return self._dataset(parsed, items, loaded.images, loaded.original_sizes, counts, which)

    def _dataset(self, parsed: ParseResult, items: list, images: torch.Tensor, sizes: np.ndarray,
                 counts: dict[str, int], which: str) -> ImageDataset:
        n = len(items)
        m = max(1, max(len(it.labels) for it in items))
        boxes = np.zeros((n, m, 4), dtype=np.float32)
        labels = np.full((n, m), -1, dtype=np.int64)
        for i, it in enumerate(items):
            h, w = sizes[i]
            k = len(it.labels)
            boxes[i, :k] = it.boxes / np.array([w, h, w, h], dtype=np.float64)
            labels[i, :k] = it.labels
        counts = {**counts, "images": n, "boxes": int((labels >= 0).sum()),
                  "skipped_images_or_boxes": len(parsed.skipped)}
        self.skipped += parsed.skipped
        self.info["class_names"] = self.classes
        self.info.setdefault("data", {})[which] = counts
        if parsed.skipped or counts["boxes_clipped"]:
            first = parsed.skipped[0] if parsed.skipped else None
            print(f"warning: {which}: {counts['boxes_clipped']} boxes clipped to the image, "
                  f"{len(parsed.skipped)} images or boxes skipped" + (f", e.g. {first.path}: {first.reason}" if first else ""),
                  file=sys.stderr)
        targets = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                   "orig_size": torch.from_numpy(sizes.astype(np.float32))}
        return ImageDataset(images, targets, [it.image.name for it in items], meta={"issues": counts})

    def check_split(self, dataset: ImageDataset, which: str, source: str) -> None:
        """A training split with no box at all teaches the detector nothing but would train to the end in silence."""
        if which != "train" or self.options.allow_no_boxes:
            return
        if not (dataset.target_array("labels") >= 0).any():
            raise DatasetError(f"'{source}': the training split has no box ({len(dataset)} images, none annotated); "
                               "check the annotation file, or set task.detection.allow_no_boxes=true to train on "
                               "images without objects")

    # -- model ---------------------------------------------------------------
    def build_model(self, backbone: StagedBackbone, train: ImageDataset | None = None) -> DetectionModel:
        a = self.data.augment
        bad = [k for k in ("rotation", "scale", "translate", "brightness", "contrast", "gamma", "blur", "noise")
               if getattr(a, k)]
        if bad:
            raise ConfigError(f"data.augment.{bad[0]}: not supported by the detection task (it applies flips only: "
                              "boxes would not follow an affine); use data.augment.hflip and task.detection.vflip")
        return DetectionModel(backbone, len(self.classes), self.options, tuple(self.data.image_size),
                              hflip=a.hflip)

    @torch.no_grad()
    def detect(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 8
               ) -> list[dict[str, np.ndarray]]:
        """Detections per image in original pixels: boxes (K, 4), labels (K,) 0..C-1, scores (K,)."""
        was = model.training
        model.eval()
        sizes = dataset.target_array("orig_size")
        h, w = dataset.images.shape[-2:]
        out = []
        bs = max(1, min(batch_size, 16))  # region proposals per image make big inference batches costly
        forward = inference_forward(model, self.precision)  # the autocast and memory format it was trained with
        try:
            for i in range(0, len(dataset), bs):
                for j, d in enumerate(forward(dataset.images[i:i + bs].to(device))):
                    oh, ow = sizes[i + j]
                    scale = np.array([ow / w, oh / h, ow / w, oh / h])
                    out.append({"boxes": d["boxes"].float().cpu().numpy().astype(np.float64) * scale,
                                "labels": d["labels"].cpu().numpy().astype(np.int64),
                                "scores": d["scores"].float().cpu().numpy().astype(np.float64)})
        finally:
            model.train(was)
        return out

    def truths(self, dataset: ImageDataset) -> list[dict[str, np.ndarray]]:
        sizes = dataset.target_array("orig_size").astype(np.float64)
        boxes, labels = dataset.target_array("boxes").astype(np.float64), dataset.target_array("labels")
        out = []
        for i in range(len(dataset)):
            keep = labels[i] >= 0
            oh, ow = sizes[i]
            out.append({"boxes": boxes[i][keep] * np.array([ow, oh, ow, oh]), "labels": labels[i][keep]})
        return out

    # -- scoring -------------------------------------------------------------
    def evaluate(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 64,
                 *, with_ci: bool = False) -> EvalResult:
        from tasks.detection.metrics import froc, image_f1, match_detections, mean_average_precision

        o = self.options
        preds, truths = self.detect(model, dataset, device, batch_size), self.truths(dataset)
        m = mean_average_precision(preds, truths, self.classes)
        fr = froc(preds, truths, o.froc_fps)
        f1 = np.array([image_f1(p, t, o.score_threshold) for p, t in zip(preds, truths)])
        m.update({"froc": fr["sensitivity"], "froc_mean": fr["mean_sensitivity"], "f1": float(f1.mean()),
                  "score_threshold": o.score_threshold, "n_images": len(dataset),
                  "n_boxes": int(sum(len(t["labels"]) for t in truths)),
                  "data": dict(dataset.meta.get("issues", {}))})
        rows = []
        for i, (p, t) in enumerate(zip(preds, truths)):
            name = dataset.ids[i]
            rows.append({"image": name, "kind": "image", "class": "", "score": f1[i]})
            for k in range(len(t["labels"])):
                rows.append({"image": name, "kind": "true", "class": self.classes[t["labels"][k]], "score": np.nan,
                             **dict(zip(_BOX_COLUMNS, t["boxes"][k]))})
            hits = match_detections(p, t)
            for k in range(len(p["labels"])):
                rows.append({"image": name, "kind": "pred", "class": self.classes[p["labels"][k]],
                             "score": p["scores"][k], **dict(zip(_BOX_COLUMNS, p["boxes"][k])), "hit": bool(hits[k])})
        df = pd.DataFrame(rows, columns=["image", "kind", "class", "score", *_BOX_COLUMNS, "hit"])
        return EvalResult(m, df, {"preds": preds, "truths": truths, "f1": f1, "froc": fr})  # type: ignore[dict-item]

    def predict(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 64
                ) -> pd.DataFrame:
        """One row per detection scoring >= ``task.detection.score_threshold``: image, class, score, x1..y2 (original px)."""
        rows = []
        thr = self.options.score_threshold
        for name, p in zip(dataset.ids, self.detect(model, dataset, device, batch_size)):
            for k in np.flatnonzero(p["scores"] >= thr):
                rows.append({"image": name, "class": self.classes[p["labels"][k]], "score": p["scores"][k],
                             **dict(zip(_BOX_COLUMNS, p["boxes"][k]))})
        return pd.DataFrame(rows, columns=["image", "class", "score", *_BOX_COLUMNS])

    def plots(self, result: EvalResult, dataset: ImageDataset, out_dir: Path, prefix: str) -> list[Path]:
        from tasks.detection.metrics import plot_boxes, plot_froc

        out = [plot_froc(result.outputs["froc"], out_dir / f"{prefix}_froc.png",
                         f"{prefix} FROC (hit: IoU >= 0.5, same class)")]
        f1 = result.outputs["f1"]
        order = np.argsort(f1, kind="stable")
        h, w = dataset.images.shape[-2:]
        sizes = dataset.target_array("orig_size")
        thr = self.options.score_threshold
        for tag, i in (("best", order[-1]), ("median", order[len(order) // 2]), ("worst", order[0])):
            oh, ow = sizes[i]
            scale = np.array([w / ow, h / oh, w / ow, h / oh])
            p, t = result.outputs["preds"][i], result.outputs["truths"][i]
            keep = p["scores"] >= thr
            pw = {"boxes": p["boxes"][keep] * scale, "labels": p["labels"][keep], "scores": p["scores"][keep]}
            tw = {"boxes": t["boxes"] * scale, "labels": t["labels"]}
            img = dataset.images[i].numpy()
            img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            out.append(plot_boxes(img, pw, tw, self.classes, out_dir / f"{prefix}_boxes_{tag}.png",
                                  f"{dataset.ids[i]}: F1 {f1[i]:.2f} at score >= {thr:g} ({tag})"))
        return out

    def paired_comparison(self, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
        """Per-image F1 at the score threshold (the ``kind == "image"`` rows), a - b: mean, bootstrap CI, Wilcoxon.

        mAP is a pooled statistic with no per-image value; the per-image F1 at
        the operating point is the paired quantity a reader of one image sees.
        """
        from transfer.stats import paired_errors

        fa, fb = a[a["kind"] == "image"], b[b["kind"] == "image"]
        if list(fa["image"]) != list(fb["image"]):
            raise DatasetError("paired comparison needs predictions on the same images in the same order")
        return paired_errors(fa["score"].to_numpy(float), fb["score"].to_numpy(float), metric="f1_per_image",
                             seed=self.seed)

    def summary_metrics(self, metrics: dict[str, Any]) -> dict[str, float]:
        out = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}
        for name, d in (metrics.get("per_class") or {}).items():
            out[f"ap50_{name}"] = float(d["ap_50"])
            out[f"ap_{name}"] = float(d["ap"])
        for f, s in (metrics.get("froc") or {}).items():
            out[f"froc_{f}fp"] = float(s)
        return out

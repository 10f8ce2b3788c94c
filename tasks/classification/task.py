"""Image classification: class folders, CSV or MedMNIST ``.npz``; weighted cross-entropy; sklearn metrics."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from transfer.data.augment import BatchAugment
from transfer.backbones import StagedBackbone
from transfer.backbones.feature_memo import FrozenFeatureMemo
from transfer.data.datasets import ImageDataset, Skipped, load_images
from transfer.errors import DatasetError
from transfer.api import EvalResult, Task, TaskModel, batched_forward
from transfer.data.inventory import not_a_file, scan_folder
from transfer.data.readers import supported_suffixes
from transfer.data.tables import read_listing
from tasks.classification.listing import check_label_rows, check_listed_once



@dataclass
class ClassificationConfig:
    """``task.classification``."""

    #: ``none`` or ``balanced`` (inverse class frequency, as in the pneumonia seed)
    class_weights: Literal["none", "balanced"] = "none"
    dropout: float = 0.0
    bootstrap: int = 1000  #: resamples for the AUC confidence interval
    class_names: list[str] = field(default_factory=list)


class ClassificationHead(nn.Module):
    """Pooled features (B, D) -> logits (B, K): dropout + one linear layer (the new "fc8")."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1 or not 0 <= dropout < 1:
            raise ValueError(f"bad head arguments: in={in_features}, classes={num_classes}, dropout={dropout}")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


class ClassifierModel(TaskModel):
    def __init__(self, backbone: StagedBackbone, num_classes: int, *, dropout: float, class_weights: torch.Tensor | None,
                 augment: BatchAugment | None, feature_memo: FrozenFeatureMemo | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ClassificationHead(backbone.num_features, num_classes, dropout)
        self.augment = augment
        #: a frozen backbone's pooled features by image (head-only runs); steps aside while the backbone trains
        self.feature_memo = feature_memo
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> logits (B, K)."""
        features = self.feature_memo(self.backbone, images) if self.feature_memo is not None else self.backbone(images)
        return self.head(features)

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        if self.augment is not None and self.augment.active:
            images, _ = self.augment(images)
        logits = self(images)
        y = batch["label"]
        loss = F.cross_entropy(logits.float(), y, weight=self.class_weights)
        acc = (logits.argmax(1) == y).float().mean()
        return {"loss": loss, "acc": acc}


class ClassificationTask(Task):
    name = "classification"
    options_class = ClassificationConfig
    formats = ("npz", "folder", "csv")
    monitor = "roc_auc"
    mode = "max"
    stratify_key = "label"
    report_metrics = ("roc_auc", "accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "g_mean")
    metric_ranges = {m: (0.0, 1.0) for m in (*report_metrics, "roc_auc_ci95_*")}

    # -- data ----------------------------------------------------------------
    def load_split(self, spec: str, which: str) -> ImageDataset:
        data, setup = self.data, self.setup
        fmt = data.format
        gray = setup.gray
        if fmt == "npz":
            return self._load_npz(spec, which, gray)
        if fmt == "folder":
            paths, labels, groups, names = self._scan_folder(self.resolve(spec))
        else:
            paths, labels, groups, names = self._read_csv(self.resolve(spec))
        self._set_classes(names, str(spec))
        loaded = load_images(paths, **data.decode_options(), gray=gray, on_bad=data.on_bad,
                             progress=setup.progress, desc=f"decoding {which}")
        self.skipped += loaded.skipped
        targets = {"label": labels[loaded.kept]}
        ds = ImageDataset(loaded.images, targets, [str(paths[i]) for i in loaded.kept])
        if groups is not None:
            ds.meta["groups"] = [groups[i] for i in loaded.kept]
        return ds

    def _set_classes(self, names: list[str], source: str) -> None:
        given = self.options.class_names
        if given and len(given) != len(names):
            raise DatasetError(f"{source}: {len(names)} classes found, task.classification.class_names lists {len(given)}")
        names = list(given) or names
        if "class_names" in self.info and self.info["class_names"] != names:
            raise DatasetError(f"{source}: classes {names} differ from the training split's {self.info['class_names']}")
        self.info["class_names"] = names
        self.info["num_classes"] = len(names)

    def _load_npz(self, spec: str, which: str, gray: bool) -> ImageDataset:
        from transfer.data.readers import read_npz_split

        path = self.resolve(spec)
        file, _, key = str(path).partition("#")
        images, labels = read_npz_split(file, key or which)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        x = torch.from_numpy(images).float() / 255.0
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        if gray and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        elif not gray and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()
        h, w = self.data.image_size
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        source = f"{file}#{key or which}"
        self._set_classes(self._npz_classes(labels, source), source)
        return ImageDataset(x, {"label": labels.astype(np.int64)}, [f"{Path(file).name}#{key or which}:{i}" for i in range(len(x))])

    def _npz_classes(self, labels: np.ndarray, source: str) -> list[str]:
        """Class names of integer labels: 0..K-1 in the training split; later splits stay within them."""
        found = np.unique(labels)
        if "class_names" in self.info:
            names = self.info["class_names"]
            outside = found[(found < 0) | (found >= len(names))]
            if len(outside):
                raise DatasetError(f"{source}: labels {outside.tolist()} are not training classes 0..{len(names) - 1}")
            return names
        if labels.ndim == 1 and found.tolist() != list(range(len(found))):
            raise DatasetError(f"{source}: labels {found.tolist()} are not 0..K-1 (a class number with no image "
                               f"would be a class the model never sees)")
        return [str(i) for i in range(int(labels.max()) + 1)]

    def check_split(self, dataset: ImageDataset, which: str, source: str) -> None:
        """Two classes or more, and every class in every split: AUC and per-class metrics need them."""
        names = self.info["class_names"]
        if len(names) < 2:
            raise DatasetError(f"{source}: only one class {names}; classification needs two or more")
        y = dataset.target_array("label")
        if y.ndim != 1:
            return  # multi-label: each column is its own binary task
        counts = np.bincount(y, minlength=len(names))
        absent = [n for n, c in zip(names, counts) if c == 0]
        if absent:
            raise DatasetError(f"{source}: the {which} split has no image of class {', '.join(map(repr, absent))} "
                               f"(classes: {', '.join(f'{n}={c}' for n, c in zip(names, counts))})")

    def _scan_folder(self, root: Path) -> tuple[list[Path], np.ndarray, None, list[str]]:
        if not root.is_dir():
            raise DatasetError(f"{root}: class folder root does not exist")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        # files beside the class folders and hidden folders (.ipynb_checkpoints) belong to no class: reported, and
        # so are broken links and other entries that are neither (they would otherwise vanish from every count)
        for p in sorted(root.iterdir()):
            if p.is_file() or (p.is_dir() and p.name.startswith(".")):
                self.skipped.append(Skipped(str(p), "not in a class folder", kind="not used"))
            elif not p.is_dir():
                self.skipped.append(Skipped(str(p), not_a_file(p) or "not a regular file", kind="not used"))
        if not classes:
            raise DatasetError(f"{root}: no class sub-folders (expected one folder per class)")
        if "class_names" in self.info:
            known = self.info["class_names"]
            if sorted(known) != classes:
                raise DatasetError(f"{root}: class folders {classes} differ from the training split's {known}")
            classes = known
        paths, labels = [], []
        for ci, c in enumerate(classes):
            scan = scan_folder(root / c)
            self.skipped += scan.unused  # counted and named in the run's warning and summary, never dropped silently
            if not scan.images:
                raise DatasetError(f"{root / c}: class folder {c!r} holds no image ({', '.join(supported_suffixes())})"
                                   + (f"; {len(scan.unused)} other files, e.g. {scan.unused[0].path}: "
                                      f"{scan.unused[0].reason}" if scan.unused else ""))
            paths += scan.images
            labels += [ci] * len(scan.images)
        return paths, np.asarray(labels, dtype=np.int64), None, classes

    def _read_csv(self, path: Path) -> tuple[list[Path], np.ndarray, list[str] | None, list[str]]:
        df = read_listing(path)
        for col in ("path", "label"):
            if col not in df.columns:
                raise DatasetError(f"{path}: missing column {col!r} (columns: {list(df.columns)}; expected path, label[, group])")
        base = self.data.image_base(path)
        check_label_rows(df, path)
        raw = df["label"].astype(str).str.strip().tolist()
        names = self.info.get("class_names") or sorted(set(raw))
        unknown = sorted(set(raw) - set(names))
        if unknown:
            row = raw.index(unknown[0]) + 2
            raise DatasetError(f"{path}, line {row}: label {unknown[0]!r} is not a training class {names}")
        labels = np.asarray([names.index(r) for r in raw], dtype=np.int64)
        paths = []
        for i, p in enumerate(df["path"].astype(str)):
            full = Path(p) if Path(p).is_absolute() else base / p
            if not full.is_file():
                # the path quoted: a trailing space (a CSV typo) would be invisible
                raise DatasetError(f"{path}, line {i + 2}: image '{full}' does not exist")
            paths.append(full)
        check_listed_once(paths, raw, path)
        groups = df["group"].astype(str).tolist() if "group" in df.columns else None
        return paths, labels, groups, names

    # -- model -----------------------------------------------------------------
    def build_model(self, backbone: StagedBackbone, train: ImageDataset | None = None) -> ClassifierModel:
        c = self.options
        k = self.info["num_classes"]
        weights = None
        if c.class_weights == "balanced" and train is not None:
            counts = np.bincount(train.target_array("label"), minlength=k).astype(np.float64)
            weights = torch.tensor(counts.sum() / (k * np.maximum(counts, 1)), dtype=torch.float32)
            self.info["class_weights"] = weights.tolist()
        elif c.class_weights == "balanced" and "class_weights" in self.info:
            weights = torch.tensor(self.info["class_weights"], dtype=torch.float32)
        aug = BatchAugment(self.data.augment)
        return ClassifierModel(backbone, k, dropout=c.dropout, class_weights=weights, augment=aug,
                               feature_memo=FrozenFeatureMemo())

    # -- evaluation --------------------------------------------------------------
    def _probs(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int) -> np.ndarray:
        logits = batched_forward(model, dataset.images, device, batch_size, self.precision)
        return torch.softmax(logits, 1).numpy()

    def evaluate(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 64,
                 *, with_ci: bool = False) -> EvalResult:
        from tasks.classification.metrics import classification_metrics

        prob = self._probs(model, dataset, device, batch_size)
        y = dataset.target_array("label")
        m = classification_metrics(y, prob, bootstrap=self.options.bootstrap if with_ci else 0,
                                   seed=self.seed)
        m["loss"] = float(F.cross_entropy(torch.log(torch.from_numpy(prob).clamp_min(1e-12)), torch.from_numpy(y)))
        df = self._frame(dataset, prob)
        df.insert(1, "label", [self.info["class_names"][i] for i in y])
        return EvalResult(m, df, {"y": y, "prob": prob})

    def _frame(self, dataset: ImageDataset, prob: np.ndarray) -> pd.DataFrame:
        names = self.info["class_names"]
        df = pd.DataFrame({"image": dataset.ids, "predicted": [names[i] for i in prob.argmax(1)]})
        for i, n in enumerate(names):
            df[f"prob_{n}"] = prob[:, i]
        return df

    def predict(self, model: TaskModel, dataset: ImageDataset, device: torch.device, batch_size: int = 64) -> pd.DataFrame:
        return self._frame(dataset, self._probs(model, dataset, device, batch_size))

    def plots(self, result: EvalResult, dataset: ImageDataset, out_dir: Path, prefix: str) -> list[Path]:
        from tasks.classification.metrics import plot_confusion, plot_roc

        out = []
        y, prob = result.outputs["y"], result.outputs["prob"]
        if len(np.unique(y)) == 2 and prob.shape[1] == 2:
            out.append(plot_roc(y, prob, out_dir / f"{prefix}_roc.png"))
        out.append(plot_confusion(np.asarray(result.metrics["confusion_matrix"]), self.info["class_names"],
                                  out_dir / f"{prefix}_confusion.png"))
        return out

    def paired_comparison(self, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
        from transfer.stats import paired_bootstrap_auc

        if list(a["image"]) != list(b["image"]):
            raise DatasetError("paired comparison needs predictions on the same images in the same order")
        names = [c[len("prob_"):] for c in a.columns if c.startswith("prob_")]
        if len(names) != 2:
            raise DatasetError(f"paired AUC comparison is implemented for binary tasks, got classes {names}")
        y = np.asarray([names.index(v) for v in a["label"].astype(str)])
        col = f"prob_{names[1]}"
        # the configured resample count (task.classification.bootstrap), as for the CIs; 0 there only turns the CIs off
        n = self.options.bootstrap or 2000
        return paired_bootstrap_auc(y, a[col].to_numpy(), b[col].to_numpy(), n=n, seed=self.seed)

    def summary_metrics(self, metrics: dict[str, Any]) -> dict[str, float]:
        out = super().summary_metrics(metrics)
        if "roc_auc_ci95" in metrics and metrics["roc_auc_ci95"] is not None:
            lo, hi = metrics["roc_auc_ci95"]
            out["roc_auc_ci95_lo"], out["roc_auc_ci95_hi"] = float(lo), float(hi)
        return out

"""Stage 1's representation check: kNN and linear-probe accuracy of frozen features on labelled images."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from transfer.api import TASKS, batched_forward
from transfer.config import Config
from transfer.errors import DatasetError


def representation_probe(backbone: torch.nn.Module, images: torch.Tensor, labels: np.ndarray,
                         device: torch.device, folds: int = 5) -> dict[str, float]:
    """kNN and linear-probe scores of frozen features, by stratified cross-validation (scikit-learn)."""
    feats = batched_forward(backbone, images, device, 64).numpy()
    k = int(min(folds, np.bincount(labels).min()))
    if k < 2:
        return {}
    cv = StratifiedKFold(k, shuffle=True, random_state=0)
    knn = cross_val_score(make_pipeline(StandardScaler(), KNeighborsClassifier(5)), feats, labels, cv=cv).mean()
    lin = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), feats, labels, cv=cv).mean()
    return {"knn_acc": float(knn), "linear_probe_acc": float(lin)}


def probe_data(cfg: Config) -> tuple[torch.Tensor, np.ndarray]:
    """Images and integer class labels of ``pretrain.monitor_data``, read by the config's task.

    The task must have class labels (its ``stratify_key``); a task without them cannot score a probe.
    """
    task = TASKS.get(cfg.task.name)(cfg)
    if task.stratify_key is None:
        raise DatasetError(f"pretrain.monitor_data needs a task with class labels; task {task.name!r} has none "
                           f"(set task.name to a classification task and data.format to its format)")
    ds = task.load_split(cfg.pretrain.monitor_data or "", "monitor")
    labels = task.label_array(ds)
    assert labels is not None
    return ds.images, labels

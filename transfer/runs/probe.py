"""Stage 1's representation check: kNN and linear-probe accuracy of frozen features on labelled images."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from transfer.api import batched_forward, make_task
from transfer.config import Config
from transfer.errors import DatasetError


def representation_probe(backbone: torch.nn.Module, images: torch.Tensor, labels: np.ndarray,
                         device: torch.device, folds: int = 5) -> dict[str, float]:
    """kNN and linear-probe scores of frozen features, by stratified cross-validation (scikit-learn), and two
    collapse indicators of the same features (:func:`normalized_std`, :func:`effective_rank`)."""
    feats = batched_forward(backbone, images, device, 64).float().numpy()
    out = {"embedding_std": normalized_std(feats), "effective_rank": effective_rank(feats)}
    k = int(min(folds, np.bincount(labels).min()))
    if k < 2:
        return out
    cv = StratifiedKFold(k, shuffle=True, random_state=0)
    knn = cross_val_score(make_pipeline(StandardScaler(), KNeighborsClassifier(5)), feats, labels, cv=cv).mean()
    lin = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), feats, labels, cv=cv).mean()
    return {"knn_acc": float(knn), "linear_probe_acc": float(lin), **out}


def normalized_std(features: np.ndarray) -> float:
    """Collapse indicator: the mean over dimensions of the std of L2-normalised embeddings, times sqrt(d).

    ``features``: (N, d). Embeddings spread over the unit sphere (isotropic) give about 1, every embedding the same
    vector gives 0 (SimSiam, Chen & He 2021, sec. 4.1, who plot the std, whose isotropic value is 1/sqrt(d): the
    sqrt(d) makes widths comparable).
    """
    z = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return float(z.std(axis=0).mean() * np.sqrt(z.shape[1]))


def effective_rank(features: np.ndarray) -> float:
    """Collapse indicator: exp of the entropy of the normalised singular values of the centred embeddings (Roy &
    Vetterli 2007; RankMe, Garrido et al. 2023, without centring). 1 when every embedding lies on one line (complete
    or dimensional collapse), up to min(N, d) when variance spreads over every direction."""
    x = features - features.mean(axis=0, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    if s.sum() <= 1e-9 * max(float(np.linalg.norm(features)), 1e-30):  # identical embeddings, up to rounding
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def probe_data(cfg: Config) -> tuple[torch.Tensor, np.ndarray]:
    """Images and integer class labels of ``pretrain.monitor_data``, read by the config's task.

    The task must have class labels (its ``stratify_key``); a task without them cannot score a probe.
    """
    task = make_task(cfg)
    if task.stratify_key is None:
        raise DatasetError(f"pretrain.monitor_data needs a task with class labels; task {task.name!r} has none "
                           f"(set task.name to a classification task and data.format to its format)")
    ds = task.load_split(cfg.pretrain.monitor_data or "", "monitor")
    labels = task.label_array(ds)
    assert labels is not None
    return ds.images, labels

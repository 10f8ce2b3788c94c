"""Detection metrics: mAP (torchmetrics / pycocotools), FROC, per-image F1; FROC and box overlay plots.

Matching rule of FROC and F1 (ours, documented): detections are taken in
decreasing score; a detection is a hit (true positive) when its IoU with a
not-yet-matched ground-truth box *of the same class in the same image* is
>= ``iou`` (0.5), taking the unmatched truth box of highest IoU; otherwise it
is a false positive. This is the COCO / PASCAL greedy rule (not LUNA16's
centre-in-sphere rule, which suits point-like nodules, not boxes), so FROC and
mAP@0.5 count the same hits.

Inputs everywhere: per image, a dict of numpy arrays ``boxes`` (K, 4) xyxy,
``labels`` (K,) int and, for predictions, ``scores`` (K,).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

Boxes = dict[str, np.ndarray]


def mean_average_precision(preds: Sequence[Boxes], truths: Sequence[Boxes], class_names: Sequence[str]
                           ) -> dict[str, Any]:
    """mAP@0.5, mAP@0.5:0.95 (COCO's 10 thresholds) overall and per class, from torchmetrics.

    ``backend="pycocotools"`` (the reference COCO evaluation; a dependency).
    Up to 100 detections per image count (COCO's maxDets). A class with no
    truth box in ``truths`` gets NaN, and is left out of the overall means.
    """
    from torchmetrics.detection import MeanAveragePrecision

    def tv(d: Boxes, with_scores: bool) -> dict[str, torch.Tensor]:
        out = {"boxes": torch.as_tensor(d["boxes"], dtype=torch.float32).reshape(-1, 4),
               "labels": torch.as_tensor(d["labels"], dtype=torch.int64).reshape(-1)}
        if with_scores:
            out["scores"] = torch.as_tensor(d["scores"], dtype=torch.float32).reshape(-1)
        return out

    p = [tv(d, True) for d in preds]
    t = [tv(d, False) for d in truths]
    # sync_on_compute=False: under torchrun every rank scores the whole split itself (the engine's evaluation is not
    # sharded), so there is nothing to gather; torchmetrics' default all-gathers the CPU state, which NCCL cannot
    # send and which on gloo counts every image world-size times
    local = {"sync_on_compute": False}
    coco = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools", **local)
    coco.update(p, t)
    r = coco.compute()
    at50 = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[0.5], class_metrics=True,
                                backend="pycocotools", **local)
    at50.update(p, t)
    r50 = at50.compute()
    out: dict[str, Any] = {"map_50": _num(r["map_50"]), "map": _num(r["map"]), "map_75": _num(r["map_75"]),
                           "mar_100": _num(r["mar_100"])}
    classes = [int(c) for c in r["classes"].reshape(-1).tolist()]
    per = r["map_per_class"].reshape(-1).tolist()
    per50 = dict(zip([int(c) for c in r50["classes"].reshape(-1).tolist()], r50["map_per_class"].reshape(-1).tolist()))
    out["per_class"] = {}
    for k, name in enumerate(class_names):
        ap = per[classes.index(k)] if k in classes else float("nan")
        ap50 = per50.get(k, float("nan"))
        out["per_class"][name] = {"ap_50": _clean(ap50), "ap": _clean(ap)}
    return out


def _num(t: torch.Tensor) -> float:
    return _clean(float(t))


def _clean(v: float) -> float:
    return float("nan") if v < 0 else float(v)  # torchmetrics writes -1 for "no truth box"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K, 4) x (M, 4) xyxy -> (K, M) IoU (torchvision's)."""
    from torchvision.ops import box_iou as tv_iou

    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return tv_iou(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)).numpy()


def match_detections(pred: Boxes, truth: Boxes, iou: float = 0.5) -> np.ndarray:
    """Hit flags (K,) of one image's detections under the greedy rule of this module's docstring."""
    order = np.argsort(-np.asarray(pred["scores"], dtype=float), kind="stable")
    hits = np.zeros(len(order), dtype=bool)
    ious = box_iou(np.asarray(pred["boxes"]).reshape(-1, 4), np.asarray(truth["boxes"]).reshape(-1, 4))
    used = np.zeros(len(truth["labels"]), dtype=bool)
    tl = np.asarray(truth["labels"])
    for i in order:
        cand = np.flatnonzero((tl == pred["labels"][i]) & ~used)
        if len(cand) == 0:
            continue
        j = cand[np.argmax(ious[i, cand])]
        if ious[i, j] >= iou:
            hits[i], used[j] = True, True
    return hits


def froc(preds: Sequence[Boxes], truths: Sequence[Boxes], fps_per_image: Sequence[float] = (0.125, 0.25, 0.5, 1, 2, 4, 8),
         iou: float = 0.5) -> dict[str, Any]:
    """FROC: sensitivity at each number of false positives per image, and their mean (LUNA16's CPM).

    Detections of all images are pooled and swept by decreasing score (ties
    taken together); sensitivity at ``f`` FPs/image is the highest sensitivity
    reached with at most ``f`` false positives per image (0 if none). Returns
    ``{"sensitivity": {f: s}, "mean_sensitivity", "curve_fps", "curve_sens"}``.
    """
    n_img = len(truths)
    n_truth = int(sum(len(t["labels"]) for t in truths))
    scores, hits = [], []
    for p, t in zip(preds, truths):
        scores.append(np.asarray(p["scores"], dtype=float))
        hits.append(match_detections(p, t, iou))
    s = np.concatenate(scores) if scores else np.zeros(0)
    h = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
    order = np.argsort(-s, kind="stable")
    s, h = s[order], h[order]
    tp, fp = np.cumsum(h), np.cumsum(~h)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)  # one point per distinct score
    fps = np.r_[0.0, fp[last] / max(n_img, 1)]
    sens = np.r_[0.0, tp[last] / max(n_truth, 1)] if n_truth else np.r_[0.0, np.full(int(last.sum()), np.nan)]
    out = {}
    for f in fps_per_image:
        ok = fps <= f + 1e-12
        out[_key(f)] = float(np.max(sens[ok])) if n_truth else float("nan")
    return {"sensitivity": out, "mean_sensitivity": float(np.mean(list(out.values()))),
            "curve_fps": fps.tolist(), "curve_sens": sens.tolist()}


def _key(f: float) -> str:
    return f"{f:g}"


def image_f1(pred: Boxes, truth: Boxes, threshold: float, iou: float = 0.5) -> float:
    """F1 = 2 TP / (2 TP + FP + FN) of one image's detections scoring >= ``threshold`` (1.0 when both are empty)."""
    keep = np.asarray(pred["scores"]) >= threshold
    p = {k: np.asarray(v)[keep] for k, v in pred.items()}
    tp = int(match_detections(p, truth, iou).sum())
    fp, fn = int(keep.sum()) - tp, len(truth["labels"]) - tp
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def plot_froc(result: dict[str, Any], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    fps = np.asarray(result["curve_fps"])
    ax.plot(np.maximum(fps, 1e-3), result["curve_sens"], drawstyle="steps-post", label="FROC")
    pts = result["sensitivity"]
    ax.plot([float(k) for k in pts], list(pts.values()), "o", label=f"mean {result['mean_sensitivity']:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xlim(0.1, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity")
    ax.set_title(title or "FROC (hit: IoU >= 0.5, same class)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_boxes(image: np.ndarray, pred: Boxes, truth: Boxes, class_names: Sequence[str], path: Path,
               title: str = "") -> Path:
    """Overlay on an (H, W) or (H, W, 3) image in [0, 1]: truth dashed, predictions solid, colour by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colours = plt.get_cmap("tab10")
    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(6, 6 * h / w))
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
    for d, style in ((truth, "--"), (pred, "-")):
        for k, (x1, y1, x2, y2) in enumerate(np.asarray(d["boxes"]).reshape(-1, 4)):
            c = colours(int(d["labels"][k]) % 10)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=c, ls=style, lw=1.2))
            if "scores" in d:
                ax.text(x1, y1, f"{d['scores'][k]:.2f}", color=c, fontsize=6, va="bottom")
    handles = [Rectangle((0, 0), 1, 1, fill=False, ec=colours(k % 10)) for k in range(len(class_names))]
    ax.legend(handles, list(class_names), loc="upper right", fontsize=7, title="dashed: truth", title_fontsize=7)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

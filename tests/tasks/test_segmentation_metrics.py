"""Segmentation metrics against references: sklearn overlap scores, brute-force boundary distances, known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.metrics import f1_score, jaccard_score, recall_score, roc_auc_score

from tasks.segmentation.losses import DiceCELoss, soft_dice_loss
from tasks.segmentation.metrics import boundary_metrics, image_metrics, overlap_metrics, pooled_auc


def _boundary_points(m: np.ndarray) -> np.ndarray:
    """Reference boundary: mask pixels with a 4-neighbour outside the mask (or outside the image)."""
    p = np.pad(m, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return np.argwhere(m & ~inner).astype(float)


def _reference(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0)) -> tuple[float, float]:
    pa, pb = _boundary_points(a) * spacing, _boundary_points(b) * spacing
    d = cdist(pa, pb)
    ab, ba = d.min(1), d.min(0)
    return max(np.percentile(ab, 95), np.percentile(ba, 95)), (ab.sum() + ba.sum()) / (len(ab) + len(ba))


def test_overlap_matches_sklearn_inside_the_fov():
    rng = np.random.default_rng(0)
    t, p, v = rng.random((40, 50)) < 0.3, rng.random((40, 50)) < 0.35, rng.random((40, 50)) < 0.8
    m = overlap_metrics(p, t, v)
    assert m["dice"] == pytest.approx(f1_score(t[v], p[v]))
    assert m["iou"] == pytest.approx(jaccard_score(t[v], p[v]))
    assert m["sensitivity"] == pytest.approx(recall_score(t[v], p[v]))
    assert m["specificity"] == pytest.approx(recall_score(~t[v], ~p[v]))
    # pixels outside the FOV do not count at all
    p2 = p.copy()
    p2[~v] = ~p2[~v]
    assert overlap_metrics(p2, t, v) == m


def test_overlap_known_answer_and_empty_masks():
    t = np.zeros((10, 10), bool)
    t[:, :4] = True  # 40 px
    p = np.zeros((10, 10), bool)
    p[:, 2:6] = True  # 40 px, 20 shared
    m = overlap_metrics(p, t)
    assert m["dice"] == pytest.approx(0.5) and m["iou"] == pytest.approx(20 / 60)
    assert m["sensitivity"] == pytest.approx(0.5) and m["specificity"] == pytest.approx(40 / 60)
    e = overlap_metrics(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
    assert e["dice"] == 1.0 and e["iou"] == 1.0 and np.isnan(e["sensitivity"]) and e["specificity"] == 1.0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_parallel_lines_k_apart_known_answer(k):
    # every boundary pixel (every pixel of a 1-px line) is exactly k from the other line
    a = np.zeros((20, 30), bool)
    b = np.zeros((20, 30), bool)
    a[5, 4:26] = True
    b[5 + k, 4:26] = True
    m = boundary_metrics(a, b)
    assert m["hd95"] == pytest.approx(k) and m["assd"] == pytest.approx(k)
    mm = boundary_metrics(a, b, spacing=(0.5, 2.0))  # rows 0.5 mm apart
    assert mm["hd95"] == pytest.approx(0.5 * k) and mm["assd"] == pytest.approx(0.5 * k)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_offset_squares_against_brute_force(k):
    a = np.zeros((48, 48), bool)
    b = np.zeros((48, 48), bool)
    a[10:30, 10:30] = True
    b[10:30, 10 + k : 30 + k] = True
    m = boundary_metrics(a, b)
    hd95, assd = _reference(a, b)
    assert m["hd95"] == pytest.approx(hd95) and m["assd"] == pytest.approx(assd)
    assert m["hd95"] <= k + 1e-9  # no boundary pixel is farther than the shift
    mm = boundary_metrics(a, b, spacing=(0.7, 0.7))
    assert mm["hd95"] == pytest.approx(0.7 * hd95) and mm["assd"] == pytest.approx(0.7 * assd)


def test_random_blobs_against_brute_force():
    rng = np.random.default_rng(1)
    from scipy import ndimage

    for _ in range(3):
        a = ndimage.binary_opening(rng.random((40, 40)) < 0.5)
        b = ndimage.binary_opening(rng.random((40, 40)) < 0.5)
        m = boundary_metrics(a, b, spacing=(1.0, 1.5))
        hd95, assd = _reference(a, b, spacing=(1.0, 1.5))
        assert m["hd95"] == pytest.approx(hd95) and m["assd"] == pytest.approx(assd)


def test_boundary_of_empty_masks():
    z = np.zeros((8, 8), bool)
    one = z.copy()
    one[2:4, 2:4] = True
    assert boundary_metrics(z, z) == {"hd95": 0.0, "assd": 0.0}
    assert all(np.isnan(v) for v in boundary_metrics(one, z).values())


def test_image_metrics_auc_and_multiclass():
    rng = np.random.default_rng(2)
    true = rng.integers(0, 3, (30, 30))
    pred = np.where(rng.random((30, 30)) < 0.8, true, rng.integers(0, 3, (30, 30)))
    prob = rng.random((3, 30, 30))
    v = np.ones((30, 30), bool)
    m = image_metrics(pred, true, v, 3, prob, spacing_mm=0.5)
    for c in (1, 2):
        assert m[f"dice_{c}"] == pytest.approx(f1_score(true.ravel() == c, pred.ravel() == c))
        assert m[f"auc_{c}"] == pytest.approx(roc_auc_score(true.ravel() == c, prob[c].ravel()))
        assert m[f"hd95_mm_{c}"] == pytest.approx(0.5 * m[f"hd95_px_{c}"])
    assert m["dice"] == pytest.approx((m["dice_1"] + m["dice_2"]) / 2)


def test_pooled_auc_matches_sklearn():
    rng = np.random.default_rng(3)
    trues = [rng.random((10, 12)) < 0.2 for _ in range(3)]
    probs = [rng.random((10, 12)) + 0.3 * t for t in trues]
    valids = [rng.random((10, 12)) < 0.9 for _ in range(3)]
    y = np.concatenate([t[v] for t, v in zip(trues, valids)])
    s = np.concatenate([p[v] for p, v in zip(probs, valids)])
    assert pooled_auc(probs, trues, valids) == pytest.approx(roc_auc_score(y, s))


def test_dice_ce_loss_fov_and_perfect_prediction():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5] = 1
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40 - 20
    assert soft_dice_loss(perfect, target) < 1e-3
    # wrong logits outside the FOV do not count
    fov = torch.zeros(2, 8, 8, dtype=torch.bool)
    fov[:, 1:7, 1:7] = True
    noisy = perfect.clone()
    noisy[:, :, 0, :] = -noisy[:, :, 0, :]
    out = DiceCELoss(1.0, 1.0)(noisy, target, fov)
    assert out["loss"] < 1e-3 and out["ce"] < 1e-3
    assert DiceCELoss(1.0, 1.0)(noisy, target)["loss"] > 0.1
    with pytest.raises(ValueError):
        DiceCELoss(0.0, 0.0)

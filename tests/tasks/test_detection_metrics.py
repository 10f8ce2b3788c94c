"""Detection metrics on hand-made cases with known answers: mAP (torchmetrics + pycocotools), FROC, per-image F1."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.detection.metrics import froc, image_f1, match_detections, mean_average_precision


def _d(boxes, labels, scores=None):
    out = {"boxes": np.asarray(boxes, dtype=float).reshape(-1, 4), "labels": np.asarray(labels, dtype=np.int64)}
    if scores is not None:
        out["scores"] = np.asarray(scores, dtype=float)
    return out


T0 = [[10, 10, 30, 30], [50, 50, 80, 90]]


def test_map_perfect_predictions_is_one():
    truths = [_d(T0, [0, 1]), _d([[5, 5, 20, 25]], [1])]
    preds = [_d(T0, [0, 1], [0.9, 0.8]), _d([[5, 5, 20, 25]], [1], [0.7])]
    m = mean_average_precision(preds, truths, ["a", "b"])
    assert m["map_50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    assert m["per_class"]["a"]["ap_50"] == pytest.approx(1.0) and m["per_class"]["b"]["ap"] == pytest.approx(1.0)


def test_map_one_of_two_found_is_51_over_101():
    # one class, two truth boxes, one exact detection: recall reaches 0.5 at precision 1; COCO's 101-point
    # interpolated AP is then 51/101 (recall points 0, 0.01, ..., 0.50 have precision 1, the rest 0)
    truths = [_d(T0, [0, 0])]
    preds = [_d([T0[0]], [0], [0.9])]
    m = mean_average_precision(preds, truths, ["a"])
    assert m["map_50"] == pytest.approx(51 / 101, abs=1e-6)
    assert m["per_class"]["a"]["ap_50"] == pytest.approx(51 / 101, abs=1e-6)


def test_map_class_without_truth_is_nan():
    m = mean_average_precision([_d(T0[:1], [0], [0.9])], [_d(T0[:1], [0])], ["a", "b"])
    assert m["map_50"] == pytest.approx(1.0) and np.isnan(m["per_class"]["b"]["ap_50"])


def test_matching_is_greedy_by_score_and_class_aware():
    truth = _d(T0, [0, 1])
    # a duplicate of box 0 (lower score) is a false positive; the right box with the wrong class is too
    pred = _d([T0[0], [11, 11, 30, 30], T0[1]], [0, 0, 0], [0.6, 0.9, 0.8])
    assert match_detections(pred, truth).tolist() == [False, True, False]


def test_froc_points_on_hand_made_case():
    # image 0: truths A, B; image 1: truth C (one class). Detections by score:
    # .9 hit A, .8 FP, .7 FP (img 1), .6 hit C, .5 hit B -> operating points (FP/img, sens):
    # (0, 1/3), (0.5, 1/3), (1, 1/3), (1, 2/3), (1, 1)
    truths = [_d(T0, [0, 0]), _d([[0, 0, 10, 10]], [0])]
    preds = [_d([T0[0], [100, 100, 120, 120], T0[1]], [0, 0, 0], [0.9, 0.8, 0.5]),
             _d([[40, 40, 60, 60], [0, 0, 10, 10]], [0, 0], [0.7, 0.6])]
    r = froc(preds, truths)
    s = r["sensitivity"]
    assert [s[k] for k in ("0.125", "0.25", "0.5")] == pytest.approx([1 / 3] * 3)
    assert [s[k] for k in ("1", "2", "4", "8")] == pytest.approx([1.0] * 4)
    assert r["mean_sensitivity"] == pytest.approx(5 / 7)
    assert r["curve_fps"][-1] == pytest.approx(1.0) and r["curve_sens"][-1] == pytest.approx(1.0)


def test_froc_below_first_false_positive_rate():
    # 4 images, 1 truth each, each image has one FP scoring above its hit: 1 FP/image before any extra hit
    truths = [_d([[0, 0, 10, 10]], [0]) for _ in range(4)]
    preds = [_d([[50, 50, 60, 60], [0, 0, 10, 10]], [0, 0], [0.9 - 0.01 * i, 0.5 - 0.01 * i]) for i in range(4)]
    s = froc(preds, truths)["sensitivity"]
    assert s["0.125"] == 0.0 and s["0.5"] == 0.0 and s["1"] == 1.0


def test_image_f1():
    truth = _d(T0, [0, 1])
    pred = _d([T0[0], [100, 100, 120, 120], T0[1]], [0, 0, 1], [0.9, 0.8, 0.3])
    assert image_f1(pred, truth, 0.5) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # TP 1, FP 1, FN 1
    assert image_f1(pred, truth, 0.2) == pytest.approx(2 * 2 / (2 * 2 + 1))
    assert image_f1(_d([], [], []), _d([], []), 0.5) == 1.0


def _map_worker(rank: int, world: int, out: str) -> None:
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world)
    try:
        # rank 0 finds one of two boxes (51/101), rank 1 both (1.0): each rank scores its own data, as every rank
        # scores the whole validation split under torchrun; nothing may be gathered from the other
        truths = [_d(T0, [0, 0])]
        preds = [_d([T0[0]], [0], [0.9])] if rank == 0 else [_d(T0, [0, 0], [0.9, 0.8])]
        m = mean_average_precision(preds, truths, ["a"])
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(m["map_50"]))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_map_under_a_process_group_scores_each_ranks_own_images(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.start_processes(_map_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    assert json.loads((tmp_path / "rank0.json").read_text()) == pytest.approx(51 / 101, abs=1e-6)
    assert json.loads((tmp_path / "rank1.json").read_text()) == pytest.approx(1.0)

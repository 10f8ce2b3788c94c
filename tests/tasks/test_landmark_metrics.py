"""Radial error, MRE/SD/SDR, per-landmark table and overlay plot."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.landmarks.metrics import (
    ISBI2015_LANDMARKS,
    landmark_metrics,
    per_landmark_table,
    plot_landmark_overlay,
    radial_errors_mm,
)


def test_radial_error_345_triangle() -> None:
    true = np.zeros((1, 1, 2))
    pred = np.array([[[3.0, 4.0]]])  # 5 px away
    np.testing.assert_allclose(radial_errors_mm(pred, true, 0.1), [[0.5]])


def test_spacing_per_image_and_per_axis() -> None:
    true = np.zeros((2, 1, 2))
    pred = np.array([[[3.0, 4.0]], [[3.0, 4.0]]])
    np.testing.assert_allclose(radial_errors_mm(pred, true, np.array([0.1, 0.2])), [[0.5], [1.0]])
    # per axis (x, y): dx = 3 * 0.4 = 1.2, dy = 4 * 0.4 = 1.6 -> 2.0; image 2: 3 * 0.1, 4 * 0.2 -> sqrt(0.09 + 0.64)
    err = radial_errors_mm(pred, true, np.array([[0.4, 0.4], [0.1, 0.2]]))
    np.testing.assert_allclose(err, [[2.0], [np.sqrt(0.09 + 0.64)]])
    with pytest.raises(ValueError, match="spacing_mm"):
        radial_errors_mm(pred, true, np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="positive"):
        radial_errors_mm(pred, true, 0.0)


def test_sdr_is_inclusive_and_in_percent() -> None:
    # errors exactly 2.0, 2.5, 3.0, 4.0 mm and one at 4.0001 mm; spacing 1 mm/px
    errs = np.array([2.0, 2.5, 3.0, 4.0, 4.0001])
    pred = np.stack([errs, np.zeros_like(errs)], -1)[None]  # (1, 5, 2)
    m = landmark_metrics(pred, np.zeros_like(pred), 1.0)
    # an error equal to the radius counts as detected (<=)
    assert m["sdr"] == {"2.0": 20.0, "2.5": 40.0, "3.0": 60.0, "4.0": 80.0}
    assert m["mre_mm"] == pytest.approx(errs.mean())
    assert m["sd_mm"] == pytest.approx(np.std(errs, ddof=1))
    assert landmark_metrics(pred, np.zeros_like(pred), 1.0, ddof=0)["sd_mm"] == pytest.approx(np.std(errs))


def test_gross_failure_shares_count_errors_strictly_above_4_and_10_mm() -> None:
    # an error of exactly 4 mm is a detection at 4 mm, not a failure above it; 10.0 is not above 10
    errs = np.array([1.0, 4.0, 4.5, 10.0, 10.5, 30.0, 2.0, 3.0])
    pred = np.stack([errs, np.zeros_like(errs)], -1)[None]
    m = landmark_metrics(pred, np.zeros_like(pred), 1.0)
    assert m["over"] == {"4.0": pytest.approx(100 * 4 / 8), "10.0": pytest.approx(100 * 2 / 8)}
    assert m["over"]["4.0"] == pytest.approx(100.0 - m["sdr"]["4.0"])
    # per landmark: landmark 6 (30 mm) is the only one above 10 mm
    assert [e["over"]["10.0"] for e in m["per_landmark"]] == [0, 0, 0, 0, 100.0, 100.0, 0, 0]
    table = per_landmark_table(m, include_over=True)
    assert list(table.columns[-2:]) == ["over_4.0", "over_10.0"] and table.loc[6, "over_10.0"] == 100.0


def test_per_landmark_entries_and_table() -> None:
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 2000, size=(6, 19, 2))
    pred = true + rng.normal(scale=20, size=true.shape)
    m = landmark_metrics(pred, true, 0.1, names=ISBI2015_LANDMARKS)
    err = radial_errors_mm(pred, true, 0.1)
    assert m["n_images"] == 6 and m["n_landmarks"] == 19 and len(m["per_landmark"]) == 19
    first = m["per_landmark"][0]
    assert first["index"] == 1 and first["name"] == "sella"
    assert first["mean_mm"] == pytest.approx(err[:, 0].mean())
    assert first["sd_mm"] == pytest.approx(err[:, 0].std(ddof=1))
    assert set(first["sdr"]) == {"2.0", "2.5", "3.0", "4.0"}
    table = per_landmark_table(m)
    assert table.shape == (19, 3) and list(table.columns) == ["landmark", "mean", "sd"]
    assert table.index[0] == 1 and table.loc[19, "landmark"] == "articulare"
    assert per_landmark_table(m, include_sdr=True).shape == (19, 7)
    with pytest.raises(ValueError, match="names"):
        landmark_metrics(pred, true, 0.1, names=["a"])


def test_shape_checks() -> None:
    with pytest.raises(ValueError, match=r"\(N, L, 2\)"):
        radial_errors_mm(np.zeros((3, 2)), np.zeros((3, 2)), 0.1)
    with pytest.raises(ValueError, match="differs"):
        radial_errors_mm(np.zeros((1, 3, 2)), np.zeros((1, 4, 2)), 0.1)


def test_overlay_plot(tmp_path) -> None:
    img = np.random.default_rng(0).random((80, 60))
    true = np.array([[10.0, 10.0], [30.0, 50.0], [50.0, 70.0]])
    out = plot_landmark_overlay(img, true + 3, true, tmp_path / "o" / "overlay.png", title="test 001")
    assert out.exists() and out.stat().st_size > 1000

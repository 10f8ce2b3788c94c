"""Seed-level statistics against scipy (and hand-computed values) on fixed numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from transfer.studies.seed_stats import (holm, label_efficiency, min_attainable_p, paired_seed_test, seeds_needed,
                                         t_interval)

A = [0.81, 0.84, 0.79, 0.86, 0.83, 0.85]
B = [0.78, 0.80, 0.80, 0.81, 0.79, 0.82]


def test_t_interval_matches_scipy():
    r = t_interval(A)
    lo, hi = stats.t.interval(0.95, 5, loc=np.mean(A), scale=stats.sem(A))
    assert r["mean"] == pytest.approx(np.mean(A)) and r["sd"] == pytest.approx(np.std(A, ddof=1))
    assert (r["lo"], r["hi"]) == pytest.approx((lo, hi)) and r["n"] == 6
    one = t_interval([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["lo"]) and math.isnan(one["sd"])


def test_paired_tests_match_scipy():
    w = paired_seed_test(A, B, "wilcoxon")
    assert w["p_value"] == pytest.approx(stats.wilcoxon(A, B, method="exact").pvalue)
    t = paired_seed_test(A, B, "ttest")
    assert t["p_value"] == pytest.approx(stats.ttest_rel(A, B).pvalue)
    d = np.subtract(A, B)
    assert w["difference"] == pytest.approx(d.mean())
    assert w["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    lo, hi = stats.t.interval(0.95, 5, loc=d.mean(), scale=stats.sem(d))
    assert (w["ci95_lo"], w["ci95_hi"]) == pytest.approx((lo, hi))
    # rank-biserial: one negative difference (-0.01, the smallest |d|, rank 1) of six: (20 - 1) / 21
    assert w["rank_biserial"] == pytest.approx(19 / 21)


def test_exact_wilcoxon_floor_and_seeds_needed():
    # 5 pairs all in one direction: the smallest two-sided exact p is 2/32 = 0.0625 > 0.05
    p = paired_seed_test([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])["p_value"]
    assert p == pytest.approx(2 / 2 ** 5) == pytest.approx(min_attainable_p(5))
    assert seeds_needed(0.05) == 6 and seeds_needed(0.05, n_comparisons=4) == 8


def test_holm_matches_statsmodels_numbers():
    # statsmodels.stats.multitest.multipletests([0.01, 0.04, 0.03, 0.005], method="holm")[1]
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.2, float("nan"), 0.01])
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_label_efficiency_reads_the_grid():
    r = label_efficiency([0.1, 0.25, 0.5, 1.0], [0.70, 0.78, 0.82, 0.85], [0.65, 0.74, 0.79, 0.83],
                         [0.75, 0.81, 0.85, 0.87], reference=0.80)
    assert r == {"fraction": 0.5, "fraction_lo": 0.25, "fraction_hi": 1.0}
    never = label_efficiency([0.1, 1.0], [0.5, 0.6], [0.4, 0.5], [0.6, 0.7], reference=0.9)
    assert all(math.isnan(v) for v in never.values())
    lower_is_better = label_efficiency([0.1, 1.0], [3.0, 2.0], [2.5, 1.5], [3.5, 2.5], reference=2.6, mode="min")
    assert lower_is_better == {"fraction": 1.0, "fraction_lo": 0.1, "fraction_hi": 1.0}

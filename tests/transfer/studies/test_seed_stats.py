"""Seed-level statistics against scipy (and hand-computed values) on fixed numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from transfer.studies.seed_stats import (holm, label_efficiency, min_attainable_p, paired_seed_test, seed_interval,
                                         seeds_needed, signflip_p, t_interval)

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


def test_ttest_with_equal_differences_is_the_exact_signflip_p_not_zero():
    """Every seed 0.5 better: ttest_rel's statistic is infinite and scipy says p = 0; Holm would then call it
    significant whatever the number of seeds. The exact sign-flip p with 5 pairs is 2/32."""
    r = paired_seed_test([1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 1.5, 2.5, 3.5, 4.5], "ttest")
    assert r["p_value"] == pytest.approx(2 / 32)
    assert "sign-flip" in r["test"]


def test_signflip_is_exact_and_matches_scipy_permutation_test():
    d = np.array([0.03, 0.04, -0.01, 0.05, 0.02, 0.03, 0.01])
    ref = stats.permutation_test((d,), lambda x, axis=-1: np.sum(x, axis=axis), permutation_type="samples",
                                 n_resamples=np.inf, alternative="two-sided")
    assert signflip_p(d) == pytest.approx(ref.pvalue)
    assert signflip_p(np.full(10, 0.2)) == pytest.approx(2 / 2 ** 10)
    r = paired_seed_test(A, B, "signflip")
    assert r["p_value"] == pytest.approx(signflip_p(np.subtract(A, B))) and r["min_p"] == pytest.approx(2 / 64)
    many = signflip_p(np.full(30, 0.1))  # Monte Carlo above 16 pairs: (1 + k) / (1 + n), never 0
    assert 0 < many <= 2 / 100_001


def test_a_nan_seed_leaves_difference_interval_and_p_together():
    """One seed's metric is NaN in one run: the old code took the difference over the other seeds but let the test
    see the NaN (p = NaN). Now the pair is dropped from everything and counted."""
    a = [0.81, 0.84, float("nan"), 0.86, 0.83, 0.85]
    b = [0.78, 0.80, 0.80, 0.81, 0.79, 0.82]
    for test in ("wilcoxon", "ttest", "signflip"):
        r = paired_seed_test(a, b, test, (0.0, 1.0))
        kept = [0, 1, 3, 4, 5]
        d = np.subtract(a, b)[kept]
        assert r["n_pairs"] == 5 and r["n_dropped"] == 1
        assert r["difference"] == pytest.approx(d.mean()) and np.isfinite(r["p_value"])
    assert r["p_value"] == pytest.approx(signflip_p(d))


@pytest.mark.parametrize("values", [[0.99, 0.40, 0.98], [0.999, 0.2, 0.97, 0.995], [1.0, 1.0, 0.6]])
def test_interval_of_a_proportion_stays_in_its_range(values):
    old = t_interval(values)
    assert old["hi"] > 1 or old["lo"] < 0 or values[0] == 1.0  # the plain t-interval leaves [0, 1] here
    r = seed_interval(values, (0.0, 1.0))
    assert 0 <= r["lo"] <= r["hi"] <= 1 and r["interval"] == "logit"
    assert r["lo"] < np.mean(values) < r["hi"]


def test_interval_of_a_positive_error_stays_positive_and_of_a_percentage_below_100():
    r = seed_interval([0.2, 3.0, 0.4], (0.0, math.inf))
    assert r["lo"] > 0 and r["interval"] == "log" and t_interval([0.2, 3.0, 0.4])["lo"] < 0
    sdr = seed_interval([99.0, 60.0, 98.0], (0.0, 100.0))
    assert 0 <= sdr["lo"] and sdr["hi"] <= 100


def test_no_interval_below_three_seeds_and_the_reason_is_given():
    r = seed_interval([0.8, 0.9], (0.0, 1.0))
    assert math.isnan(r["lo"]) and math.isnan(r["hi"]) and r["n"] == 2 and "no interval below 3" in r["reason"]
    d = paired_seed_test([0.8, 0.9], [0.7, 0.7], "signflip", (0.0, 1.0))
    assert math.isnan(d["ci95_lo"]) and math.isnan(d["ci95_hi"])


def test_difference_interval_of_a_bounded_metric_is_truncated_to_what_a_difference_can_take():
    a, b = [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]
    r = paired_seed_test(a, b, "ttest", (0.0, 1.0))
    assert -1 <= r["ci95_lo"] and r["ci95_hi"] <= 1
    assert t_interval(np.subtract(a, b))["lo"] < -1  # what it was before

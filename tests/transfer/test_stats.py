"""Paired comparisons against direct reference computations (sklearn AUC, numpy loops, scipy Wilcoxon)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats as st
from sklearn.metrics import roc_auc_score

from transfer.stats import paired_bootstrap_auc, paired_errors, rank_auc


def _two_models(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two models' scores: negatives N(0, 1), positives N(1.5, 1) for a and N(0.5, 1) for b."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return y, y * 1.5 + rng.normal(0, 1, n), y * 0.5 + rng.normal(0, 1, n)


def test_rank_auc_matches_sklearn_with_ties_and_is_nan_for_one_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (50, 30)).astype(bool)
    s = np.round(rng.normal(0, 1, (50, 30)) + y, 1)  # rounding makes ties
    ours = rank_auc(y, s)
    assert ours.shape == (50,)
    assert ours == pytest.approx([roc_auc_score(yi, si) for yi, si in zip(y, s)], abs=1e-12)
    assert rank_auc(y.T, s.T, axis=0) == pytest.approx(ours, abs=1e-12)
    one_class = rank_auc(np.ones((2, 5), bool), rng.normal(0, 1, (2, 5)))
    assert np.isnan(one_class).all()


def _reference_auc(y, a, b, n, seed):
    """The same resampled images as scipy's paired bootstrap, each scored by sklearn; one-class resamples skipped."""
    def stat(idx, axis=-1):
        out = []
        for i in idx.reshape(-1, idx.shape[-1]):
            out.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]) if len(np.unique(y[i])) == 2 else np.nan)
        return np.asarray(out).reshape(idx.shape[:-1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.DegenerateDataWarning)
        res = st.bootstrap((np.arange(len(y)),), stat, n_resamples=n, vectorized=True, method="percentile",
                           rng=np.random.default_rng(seed))
    # sklearn's trapezoids leave ~1e-16 noise where two AUCs are equal; the p-value counts exact zeros
    d = np.round(res.bootstrap_distribution[~np.isnan(res.bootstrap_distribution)], 12)
    return np.percentile(d, [2.5, 97.5]), min(1.0, 2 * (1 + min((d <= 0).sum(), (d >= 0).sum())) / (1 + len(d))), len(d)


@pytest.mark.parametrize("n_images", [40, 9])  # 9 images, 2 positive: many one-class resamples
def test_paired_bootstrap_auc_matches_direct_reference(n_images):
    y, a, b = _two_models(n_images, seed=3)
    if n_images == 9:
        y = (np.arange(9) < 2).astype(int)
    r = paired_bootstrap_auc(y, a, b, n=300, seed=7)
    ci, p, valid = _reference_auc(y, a, b, 300, 7)
    assert r["difference"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert r["ci95"] == pytest.approx(list(ci), abs=1e-12)
    assert r["p_value"] == pytest.approx(p)
    assert r["test"] == f"paired bootstrap ({valid} resamples)"
    assert set(r) == {"metric", "difference", "baseline", "ci95", "p_value", "test"} and r["metric"] == "roc_auc"
    assert r["baseline"] == pytest.approx(roc_auc_score(y, b))


def test_paired_bootstrap_auc_ci_covers_the_true_difference():
    y, a, b = _two_models(4000)
    true = st.norm.cdf(1.5 / np.sqrt(2)) - st.norm.cdf(0.5 / np.sqrt(2))  # AUC of N(mu, 1) vs N(0, 1) is Phi(mu/sqrt 2)
    r = paired_bootstrap_auc(y, a, b, n=1000)
    lo, hi = r["ci95"]
    assert lo < true < hi and hi - lo < 0.06
    assert r["difference"] > 0 and lo > 0 and r["p_value"] < 0.05


def test_paired_bootstrap_auc_identical_models_and_seeding():
    y, a, b = _two_models(60)
    same = paired_bootstrap_auc(y, a, a, n=200)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_value"] == 1.0
    assert paired_bootstrap_auc(y, a, b, n=200, seed=1) == paired_bootstrap_auc(y, a, b, n=200, seed=1)
    assert paired_bootstrap_auc(y, a, b, n=200, seed=1)["ci95"] != paired_bootstrap_auc(y, a, b, n=200, seed=2)["ci95"]


def test_paired_bootstrap_auc_one_class_resamples_do_not_crash():
    y = np.array([0, 0, 0, 0, 0, 1])  # a resample misses the positive with probability (5/6)^6, about a third
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither scipy's degenerate-interval nor numpy's 0/0 warning leaks
        r = paired_bootstrap_auc(y, rng.random(6), rng.random(6), n=500)
    valid = int(r["test"].split("(")[1].split()[0])
    assert 200 < valid < 450
    assert all(np.isfinite(r["ci95"])) and -1 <= r["ci95"][0] <= r["ci95"][1] <= 1 and 0 <= r["p_value"] <= 1


def test_paired_bootstrap_auc_rejects_one_class_or_mismatched_input():
    with pytest.raises(ValueError, match="two classes"):
        paired_bootstrap_auc(np.ones(5), np.arange(5.0), np.arange(5.0))
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap_auc(np.arange(6) % 2, np.arange(6.0), np.arange(5.0))


def test_paired_errors_matches_direct_reference():
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, 1.0, 80)
    b = a + rng.normal(0.3, 0.5, 80)
    r = paired_errors(a, b, metric="mre_mm", n=1000, seed=4)
    d = a - b
    # pairing: the same draws over images as a one-sample bootstrap of the per-image differences
    ref = st.bootstrap((d,), np.mean, n_resamples=1000, method="percentile", rng=np.random.default_rng(4))
    assert r["ci95"] == pytest.approx([ref.confidence_interval.low, ref.confidence_interval.high], abs=1e-12)
    assert r["difference"] == pytest.approx(d.mean())
    assert r["p_value"] == pytest.approx(st.wilcoxon(d).pvalue)
    assert r["p_value"] < 0.05 and r["ci95"][1] < 0
    assert r["metric"] == "mre_mm" and r["test"] == "Wilcoxon signed-rank (per image)"


def test_paired_errors_ci_covers_the_true_mean_difference():
    rng = np.random.default_rng(1)
    a = rng.normal(2.0, 1.0, 3000)
    r = paired_errors(a, a + rng.normal(-0.2, 1.0, 3000), metric="mre_mm")
    assert r["ci95"][0] < 0.2 < r["ci95"][1]


def test_paired_errors_degenerate_cases():
    a = np.random.default_rng(2).normal(2, 1, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = paired_errors(a, a.copy(), metric="mre_mm")
        shifted = paired_errors(a, a + 1.0, metric="mre_mm")
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_value"] == 1.0
    assert shifted["difference"] == pytest.approx(-1.0) and shifted["ci95"] == pytest.approx([-1.0, -1.0])
    assert shifted["p_value"] < 1e-6
    with pytest.raises(ValueError, match="shape"):
        paired_errors(a, a[:-1], metric="mre_mm")
    with pytest.raises(ValueError, match="two or more"):
        paired_errors(a[:1], a[:1], metric="mre_mm")


def test_bootstrap_p_is_never_zero_and_agrees_with_the_interval():
    """Every resampled difference above 0 (a perfect model against noise): p is (1 + 0) / (1 + n) doubled, not 0."""
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    b = rng.normal(0, 1, 200)
    r = paired_bootstrap_auc(y, y + rng.normal(0, 0.01, 200), b, n=500, seed=1)
    assert r["ci95"][0] > 0
    assert r["p_value"] == pytest.approx(2 / 501)
    assert r["baseline"] == pytest.approx(roc_auc_score(y, b))


def test_paired_errors_report_the_baseline_of_their_own_quantity_and_skip_images_without_a_value():
    a = np.array([0.5, 0.6, np.nan, 0.9, 0.7])
    b = np.array([0.4, 0.5, 0.3, np.nan, 0.5])
    r = paired_errors(a, b, metric="dice", n=200)
    assert r["difference"] == pytest.approx(np.mean([0.1, 0.1, 0.2]))
    assert r["baseline"] == pytest.approx(np.mean([0.4, 0.5, 0.5]))
    assert "2 image(s) without a value" in r["test"] and np.isfinite(r["p_value"])


def test_wilcoxon_p_that_underflows_is_not_zero():
    a = np.linspace(10, 20, 3000)
    r = paired_errors(a, a - 1 - np.linspace(0, 1, 3000), metric="mre_mm", n=50)
    assert 0 < r["p_value"] < 1e-100

"""Classification metrics against scikit-learn, hand-computed specificity and G-mean, bootstrap CI, plots."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from tasks.classification.metrics import classification_metrics, plot_confusion, plot_roc, roc_curve_points


def _random_probs(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) and informative probabilities (n, k) rows summing to 1."""
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_binary_matches_sklearn() -> None:
    y, p = _random_probs(np.random.default_rng(0), 200, 2)
    m = classification_metrics(y, p, bootstrap=0)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["n"] == 200 and m["roc_auc_ci95"][0] != m["roc_auc_ci95"][0]  # nan without bootstrap
    # specificity is the recall of the negative class
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["g_mean"] == pytest.approx(math.sqrt(m["recall"] * m["specificity"]))


def test_binary_positive_class_zero() -> None:
    y, p = _random_probs(np.random.default_rng(1), 100, 2)
    m = classification_metrics(y, p, bootstrap=0, positive=0)
    pred = p.argmax(1)
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=1))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y == 0, p[:, 0]))


def test_multiclass_matches_sklearn() -> None:
    y, p = _random_probs(np.random.default_rng(2), 300, 3)
    m = classification_metrics(y, p, bootstrap=0)
    pred = p.argmax(1)
    for key, fn in [("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)]:
        assert m[key] == pytest.approx(fn(y, pred, average="macro")), key
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    recalls = skm.recall_score(y, pred, average=None)
    assert m["g_mean"] == pytest.approx(float(np.prod(recalls) ** (1 / 3)))
    assert np.array(m["confusion_matrix"]).shape == (3, 3)


def _probs_for(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    p = np.full((len(y), k), 0.1 / (k - 1))
    p[np.arange(len(y)), pred] = 0.9
    return p


def test_specificity_and_gmean_by_hand_binary() -> None:
    # true 1: 3 predicted 1, 1 predicted 0 (TP 3, FN 1); true 0: 4 predicted 0, 2 predicted 1 (TN 4, FP 2)
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 1])
    m = classification_metrics(y, _probs_for(y, pred, 2), bootstrap=0)
    assert m["confusion_matrix"] == [[4, 2], [1, 3]]
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["g_mean"] == pytest.approx(math.sqrt(3 / 4 * 4 / 6))
    assert m["precision"] == pytest.approx(3 / 5)


def test_specificity_and_gmean_by_hand_multiclass() -> None:
    # confusion matrix [[2,1,0],[0,3,0],[1,0,1]] (rows true)
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 1, 0, 2])
    m = classification_metrics(y, _probs_for(y, pred, 3), bootstrap=0)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
    # class 0: TN 4 (rows 1,2 x cols 1,2), FP 1 -> 4/5; class 1: TN 4, FP 1 -> 4/5; class 2: TN 6, FP 0 -> 1
    assert m["specificity"] == pytest.approx((4 / 5 + 4 / 5 + 1.0) / 3)
    assert m["g_mean"] == pytest.approx((2 / 3 * 1.0 * 1 / 2) ** (1 / 3))


def test_bootstrap_ci_contains_estimate_and_narrows() -> None:
    widths = []
    for n in (60, 600):
        y, p = _random_probs(np.random.default_rng(3), n, 2)
        m = classification_metrics(y, p, bootstrap=200, seed=0)
        lo, hi = m["roc_auc_ci95"]
        assert lo <= m["roc_auc"] <= hi
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]
    # reproducible from the seed
    y, p = _random_probs(np.random.default_rng(3), 60, 2)
    assert classification_metrics(y, p, bootstrap=50, seed=7)["roc_auc_ci95"] == \
        classification_metrics(y, p, bootstrap=50, seed=7)["roc_auc_ci95"]


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")  # sklearn, on the all-negative case
def test_bootstrap_skips_single_class_resamples() -> None:
    # 1 positive in 20: many resamples miss it; they are skipped, not crashing
    y = np.zeros(20, dtype=int)
    y[0] = 1
    p = np.tile([0.6, 0.4], (20, 1))
    p[0] = [0.2, 0.8]
    m = classification_metrics(y, p, bootstrap=100, seed=0)
    assert m["roc_auc"] == 1.0 and m["roc_auc_ci95"] == [1.0, 1.0]
    single = classification_metrics(np.zeros(5, dtype=int), np.tile([0.7, 0.3], (5, 1)), bootstrap=10)
    assert math.isnan(single["roc_auc"]) and all(math.isnan(v) for v in single["roc_auc_ci95"])


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics(np.array([0, 2]), np.full((2, 2), 0.5), bootstrap=0)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        classification_metrics(np.array([0, 1]), np.full((3, 2), 0.5), bootstrap=0)
    with pytest.raises(ValueError, match="positive"):
        classification_metrics(np.array([0, 1]), np.full((2, 2), 0.5), positive=2)


def test_roc_points_and_plots(tmp_path) -> None:
    y, p = _random_probs(np.random.default_rng(4), 50, 2)
    fpr, tpr, _ = roc_curve_points(y, p)
    assert fpr[0] == 0 and tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
    out = plot_roc(y, p, tmp_path / "plots" / "roc.png")
    assert out.exists() and out.stat().st_size > 1000
    y3, p3 = _random_probs(np.random.default_rng(5), 60, 3)
    assert plot_roc(y3, p3, tmp_path / "roc3.png", class_names=["a", "b", "c"]).exists()
    cm = classification_metrics(y3, p3, bootstrap=0)["confusion_matrix"]
    assert plot_confusion(cm, ["a", "b", "c"], tmp_path / "cm.png").stat().st_size > 1000


def test_binary_auc_ci_vectorised_equals_one_sklearn_call_per_resample():
    """The vectorised rank AUC gives the interval of sklearn's roc_auc_score on the same resamples (ties included)."""
    import warnings

    import numpy as np
    from scipy import stats as st
    from sklearn.metrics import roc_auc_score

    from tasks.classification.metrics import _auc_ci

    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(8), np.ones(30)].astype(int)
    score = np.round(rng.random(38) * 0.5 + 0.4 * y, 1)  # rounded: many ties
    prob = np.column_stack([1 - score, score])

    def sk(idx):
        idx = idx.astype(int)
        return roc_auc_score(y[idx], score[idx]) if len(np.unique(y[idx])) == 2 else np.nan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.DegenerateDataWarning)
        ref = st.bootstrap((np.arange(38),), sk, n_resamples=300, vectorized=False, method="percentile",
                           rng=np.random.default_rng(0)).bootstrap_distribution
    ref = ref[~np.isnan(ref)]
    assert _auc_ci(y, prob, 1, 300, 0) == pytest.approx(np.percentile(ref, [2.5, 97.5]), abs=1e-12)

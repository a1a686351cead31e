import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

from cordiale.learn.metrics import ScoreHistogram, compute_metrics


def _ece_reference(p, y, n_bins=10):
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += abs(p[m].mean() - y[m].mean()) * m.sum()
    return total / len(p)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 400))
def test_histogram_metrics_match_sklearn(seed, n):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    p = np.clip(rng.beta(2, 2, n) * 0.6 + 0.4 * y * rng.random(n), 0, 1)
    m = compute_metrics(ScoreHistogram.from_scores(p, y))
    # Binned AUC is exactly the AUC of the binned scores, and within the documented bound of the
    # exact AUC: half the share of positive-negative pairs that share a bin.
    binned = np.floor(p * 2000)
    assert m["auc"] == pytest.approx(roc_auc_score(y, binned), abs=1e-12)
    same_bin = (binned[y == 1][:, None] == binned[y == 0][None, :]).mean()
    assert abs(m["auc"] - roc_auc_score(y, p)) <= 0.5 * same_bin + 1e-12
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p >= 0.5))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    assert m["log_loss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), rel=1e-6)
    assert m["ece"] == pytest.approx(_ece_reference(p, y), abs=1e-3)
    assert m["n"] == n


def test_site_histograms_add_up_to_the_pooled_metrics():
    rng = np.random.default_rng(1)
    p, y = rng.random(300), rng.integers(0, 2, 300)
    parts = [ScoreHistogram.from_scores(p[i::3], y[i::3]) for i in range(3)]
    total = parts[0] + parts[1] + parts[2]
    assert compute_metrics(total) == compute_metrics(ScoreHistogram.from_scores(p, y))


def test_single_class_auc_is_nan_not_a_crash():
    m = compute_metrics(ScoreHistogram.from_scores(np.array([0.2, 0.7]), np.array([1, 1])))
    assert np.isnan(m["auc"]) and m["sensitivity"] == 0.5 and np.isnan(m["specificity"])

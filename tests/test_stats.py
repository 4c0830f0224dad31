"""The comparison statistics against independent references (scipy, scikit-learn, explicit resampling)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import average_precision_score

from mlkd.stats import bootstrap_counts, bootstrap_map, paired_bootstrap, percentile_interval, t_interval, t_quantile


def _reference_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP as scikit-learn computes it, over the labels that have a positive."""
    aps = [average_precision_score(targets[:, j], scores[:, j]) for j in range(targets.shape[1]) if targets[:, j].any()]
    return float(np.mean(aps))


def _toy(n: int = 40, q: int = 5, seed: int = 0, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, q)) < 0.3).astype(np.float64)
    scores = 0.6 * targets + rng.random((n, q))
    if ties:
        scores = np.round(scores, 1)  # many tied scores, across positives and negatives
    return scores, targets


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 29, 30, 100])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_t_quantile_matches_scipy(df, confidence):
    assert t_quantile(confidence, df) == pytest.approx(sps.t.ppf((1 + confidence) / 2, df), rel=1e-9)


def test_t_interval_matches_scipy():
    diffs = np.array([0.004, -0.001, 0.006, 0.002, 0.003])
    got = t_interval(diffs, 0.95)
    low, high = sps.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=sps.sem(diffs))
    assert got.estimate == pytest.approx(diffs.mean())
    assert (got.low, got.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert got.excludes_zero == (low > 0 or high < 0)


def test_t_interval_needs_two_seeds_and_sees_zero():
    assert t_interval([0.01]) is None
    assert not t_interval([0.01, -0.005, 0.002]).excludes_zero
    assert t_interval([0.010, 0.011, 0.012]).excludes_zero


def test_t_interval_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        t_interval([0.1, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        t_quantile(95, 3)
    with pytest.raises(ValueError, match="df"):
        t_quantile(0.95, 0)


def test_bootstrap_counts_are_resamples_with_replacement():
    counts = bootstrap_counts(7, 50, seed=3)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all() and (counts >= 0).all()
    np.testing.assert_array_equal(counts, bootstrap_counts(7, 50, seed=3))
    assert not np.array_equal(counts, bootstrap_counts(7, 50, seed=4))


@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_map_equals_sklearn_on_each_resample(ties):
    scores, targets = _toy(ties=ties)
    rng = np.random.default_rng(1)
    index = rng.integers(0, len(scores), size=(30, len(scores)))  # explicit resamples, drawn in the test
    counts = np.stack([np.bincount(row, minlength=len(scores)) for row in index])
    got = bootstrap_map(scores, targets, counts)
    want = [_reference_map(scores[row], targets[row]) for row in index]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # float32 precisions


def test_bootstrap_map_without_resampling_is_the_plain_map():
    scores, targets = _toy(n=60, q=4, seed=5)
    targets[:, 2] = 0  # a label without positives is left out, as in mlkd.metrics
    got = bootstrap_map(scores, targets, np.ones((1, len(scores)), dtype=np.int64))
    assert got[0] == pytest.approx(_reference_map(scores, targets), abs=1e-6)


def test_bootstrap_map_in_chunks(monkeypatch):
    import mlkd.stats as stats_module

    scores, targets = _toy(n=25, q=3, seed=2)
    counts = bootstrap_counts(25, 40, seed=0)
    whole = bootstrap_map(scores, targets, counts)
    monkeypatch.setattr(stats_module, "_BLOCK_ELEMENTS", 25 * 3 * 7)  # 7 resamples per block
    np.testing.assert_array_equal(bootstrap_map(scores, targets, counts), whole)


def test_bootstrap_map_rejects_bad_input():
    scores, targets = _toy(n=10, q=2)
    with pytest.raises(ValueError, match=r"\[B, n\]"):
        bootstrap_map(scores, targets, np.ones((3, 9)))
    with pytest.raises(ValueError, match="binary"):
        bootstrap_map(scores, targets * 2, np.ones((3, 10)))
    with pytest.raises(ValueError, match="no positive"):
        bootstrap_map(scores, np.zeros_like(targets), np.ones((1, 10)))


def test_paired_bootstrap_against_an_explicit_loop():
    scores_b, targets = _toy(n=50, q=4, seed=7, ties=False)
    rng = np.random.default_rng(8)
    scores_a = [scores_b + 0.3 * rng.random(scores_b.shape) * targets for _ in range(2)]  # A ranks positives higher
    scores_bs = [scores_b, np.clip(scores_b + 0.05 * rng.standard_normal(scores_b.shape), 0, 2)]
    got = paired_bootstrap(scores_a, scores_bs, targets, resamples=200, seed=11)
    # The same resamples (same seed), recomputed image by image with scikit-learn.
    counts = bootstrap_counts(len(targets), 200, seed=11)
    gains = []
    for row in counts:
        idx = np.repeat(np.arange(len(targets)), row)
        gains.append(np.mean([_reference_map(a[idx], targets[idx]) - _reference_map(b[idx], targets[idx])
                              for a, b in zip(scores_a, scores_bs)]))
    full = np.mean([_reference_map(a, targets) - _reference_map(b, targets) for a, b in zip(scores_a, scores_bs)])
    lo, hi = np.quantile(gains, [0.025, 0.975])
    assert got.estimate == pytest.approx(full, abs=1e-6)
    assert (got.low, got.high) == (pytest.approx(lo, abs=1e-6), pytest.approx(hi, abs=1e-6))
    assert got.excludes_zero and got.low > 0


def test_paired_bootstrap_of_a_run_against_itself_is_zero():
    scores, targets = _toy(n=30, q=3)
    got = paired_bootstrap([scores], [scores], targets, resamples=50)
    assert (got.estimate, got.low, got.high) == (0.0, 0.0, 0.0) and not got.excludes_zero


def test_percentile_interval():
    got = percentile_interval(0.5, np.arange(101) / 100, 0.9)
    assert (got.low, got.high) == (pytest.approx(0.05), pytest.approx(0.95))

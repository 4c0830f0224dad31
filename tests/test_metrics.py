"""Tests of mlkd.metrics against scikit-learn, a loop reference of the top-k protocol, ML-GCN's formulas,
and hand-computed values."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from mlkd.metrics import (
    MultiLabelMetrics,
    average_precision_per_label,
    mean_average_precision,
    multilabel_metrics,
    threshold_scores,
    topk_f1,
)

# --------------------------------------------------------------------------------------------------
# Inputs


def random_case(seed: int, n: int, q: int, density: float, ties: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[n, q]`` (rounded to ``ties`` decimals when given, to create many ties) and
    binary targets with about ``density`` positives."""
    rng = np.random.default_rng(seed)
    scores = rng.random((n, q))
    if ties is not None:
        scores = scores.round(ties)
    targets = (rng.random((n, q)) < density).astype(np.int64)
    return scores, targets


# (seed, n, q, density, decimals): continuous scores, heavy ties, tiny N, dense and sparse targets.
CASES = [
    (0, 200, 10, 0.3, None),
    (1, 300, 20, 0.1, 1),
    (2, 50, 7, 0.5, 0),
    (3, 3, 4, 0.5, None),
    (4, 1, 6, 0.5, None),
    (5, 500, 15, 0.02, 2),
    (6, 40, 5, 0.9, 1),
]


def sklearn_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-label AP by scikit-learn, NaN for labels without a positive."""
    out = np.full(scores.shape[1], np.nan)
    for j in range(scores.shape[1]):
        if targets[:, j].any():
            out[j] = average_precision_score(targets[:, j], scores[:, j])
    return out


# --------------------------------------------------------------------------------------------------
# Average precision


@pytest.mark.parametrize("case", CASES)
def test_average_precision_per_label_matches_sklearn(case):
    scores, targets = random_case(*case)
    got = average_precision_per_label(scores, targets)
    want = sklearn_ap(scores, targets)
    assert got.shape == (scores.shape[1],)
    np.testing.assert_array_equal(np.isnan(got), ~targets.astype(bool).any(axis=0))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15, equal_nan=True)


@pytest.mark.parametrize("case", CASES)
def test_mean_average_precision_matches_sklearn_over_labels_with_positives(case):
    scores, targets = random_case(*case)
    keep = targets.any(axis=0)
    want = average_precision_score(targets[:, keep], scores[:, keep], average="macro")
    assert mean_average_precision(scores, targets) == pytest.approx(want, rel=1e-12)


def test_mean_average_precision_equals_sklearn_macro_when_every_label_has_a_positive():
    scores, targets = random_case(7, 100, 8, 0.4, 1)
    assert targets.any(axis=0).all()
    want = average_precision_score(targets, scores, average="macro")
    assert mean_average_precision(scores, targets) == pytest.approx(want, rel=1e-12)


def test_average_precision_edge_columns_match_sklearn():
    # Columns: every score tied, all images positive, a single positive ranked last,
    # logits (negative scores), ties straddling positives and negatives.
    scores = np.array(
        [
            [0.5, 0.1, 0.9, -3.0, 0.7],
            [0.5, 0.2, 0.8, 2.0, 0.7],
            [0.5, 0.3, 0.7, -1.0, 0.2],
            [0.5, 0.4, 0.1, 0.0, 0.2],
        ]
    )
    targets = np.array(
        [
            [1, 1, 0, 0, 1],
            [0, 1, 0, 1, 0],
            [0, 1, 0, 1, 1],
            [1, 1, 1, 0, 0],
        ]
    )
    np.testing.assert_allclose(
        average_precision_per_label(scores, targets), sklearn_ap(scores, targets), rtol=1e-12
    )


def test_average_precision_golden_values():
    # Ranking 1 (+), 2 (-), 3 (+): AP = (1/1 + 2/3) / 2.
    assert average_precision_per_label([[0.9], [0.8], [0.7]], [[1], [0], [1]])[0] == pytest.approx(5 / 6)
    # A tie of one positive and one negative is one threshold of precision 1/2, so AP = 1/2
    # (an implementation that orders inside the tie would give 1 or 1/2 depending on the order).
    assert average_precision_per_label([[0.5], [0.5], [0.1]], [[1], [0], [0]])[0] == pytest.approx(0.5)
    assert average_precision_per_label([[0.5], [0.5], [0.1]], [[0], [1], [0]])[0] == pytest.approx(0.5)
    # Two tied positives after a negative: both get precision 2/3 at their shared threshold.
    assert average_precision_per_label([[0.9], [0.4], [0.4]], [[0], [1], [1]])[0] == pytest.approx(2 / 3)
    # Every image positive: AP = 1.
    assert average_precision_per_label([[0.1], [0.3]], [[1], [1]])[0] == pytest.approx(1.0)


def test_average_precision_is_nan_without_positive_and_map_excludes_it():
    scores = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.6]])
    targets = np.array([[1, 0, 0], [0, 0, 1]])
    ap = average_precision_per_label(scores, targets)
    assert np.isnan(ap[1])
    assert ap[0] == pytest.approx(1.0) and ap[2] == pytest.approx(1.0)
    assert mean_average_precision(scores, targets) == pytest.approx(1.0)


def test_average_precision_does_not_depend_on_row_order_within_ties():
    scores, targets = random_case(8, 120, 6, 0.3, 1)
    perm = np.random.default_rng(9).permutation(len(scores))
    np.testing.assert_allclose(
        average_precision_per_label(scores[perm], targets[perm]),
        average_precision_per_label(scores, targets),
        rtol=1e-12,
    )


# --------------------------------------------------------------------------------------------------
# Oracle top-k protocol


def topk_reference(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The protocol written as a loop: row i predicts its k_i best labels, lower index first on ties."""
    pred = np.zeros(scores.shape, dtype=np.int64)
    for i in range(scores.shape[0]):
        k = int(targets[i].sum())
        ranked = sorted(range(scores.shape[1]), key=lambda j: (-scores[i, j], j))
        pred[i, ranked[:k]] = 1
    return pred


@pytest.mark.parametrize("case", CASES)
def test_topk_f1_matches_sklearn_on_loop_reference(case):
    scores, targets = random_case(*case)
    pred = topk_reference(scores, targets)
    keep = targets.any(axis=0)
    got = topk_f1(scores, targets)
    assert set(got) == {"OP", "OR", "OF1", "CP", "CR", "CF1"}
    assert got["OF1"] == pytest.approx(f1_score(targets, pred, average="micro", zero_division=0), rel=1e-12)
    assert got["OP"] == pytest.approx(precision_score(targets, pred, average="micro", zero_division=0), rel=1e-12)
    assert got["OR"] == pytest.approx(recall_score(targets, pred, average="micro", zero_division=0), rel=1e-12)
    t_k, p_k = targets[:, keep], pred[:, keep]
    assert got["CF1"] == pytest.approx(f1_score(t_k, p_k, average="macro", zero_division=0), rel=1e-12)
    assert got["CP"] == pytest.approx(precision_score(t_k, p_k, average="macro", zero_division=0), rel=1e-12)
    assert got["CR"] == pytest.approx(recall_score(t_k, p_k, average="macro", zero_division=0), rel=1e-12)
    # As many predictions as true labels, so the three overall values coincide.
    assert got["OP"] == pytest.approx(got["OR"]) and got["OR"] == pytest.approx(got["OF1"])


def test_topk_f1_golden_edge_cases():
    scores = np.array(
        [
            [0.9, 0.1, 0.5],  # 2 true labels: predicts labels 0 and 2
            [0.2, 0.2, 0.2],  # all 3 true: predicts all, whatever the scores
            [0.3, 0.6, 0.1],  # no true label: predicts nothing
            [0.7, 0.7, 0.1],  # 1 true label (1), tie 0/1: label 0 wins by index -> FP on 0, FN on 1
        ]
    )
    targets = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0], [0, 1, 0]])
    got = topk_f1(scores, targets)
    # Label 0: TP 2, FP 1, FN 0; label 1: TP 1, FP 0, FN 1; label 2: TP 2, FP 0, FN 0.
    assert got["OF1"] == pytest.approx(5 / 6)
    assert got["OP"] == pytest.approx(5 / 6) and got["OR"] == pytest.approx(5 / 6)
    assert got["CP"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert got["CR"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert got["CF1"] == pytest.approx((4 / 5 + 2 / 3 + 1) / 3)


def test_topk_f1_tie_break_prefers_lower_label_index():
    targets = np.array([[0, 0, 1, 0]])
    # Label 2 is true; tied with label 1 at the top, label 1 wins -> a miss.
    assert topk_f1([[0.1, 0.8, 0.8, 0.2]], targets)["OF1"] == 0.0
    # Tied with label 3 instead, label 2 wins -> a hit.
    assert topk_f1([[0.1, 0.2, 0.8, 0.8]], targets)["OF1"] == 1.0


def test_topk_f1_label_without_positive_lowers_of1_but_not_class_averages():
    # Row 0 predicts label 1 (no positive anywhere), row 1 predicts label 0 correctly.
    scores = np.array([[0.2, 0.9], [0.8, 0.1]])
    targets = np.array([[1, 0], [1, 0]])
    got = topk_f1(scores, targets)
    assert got["OF1"] == pytest.approx(1 / 2)
    assert got["CP"] == pytest.approx(1.0)
    assert got["CR"] == pytest.approx(1 / 2)
    assert got["CF1"] == pytest.approx(2 / 3)


def test_topk_f1_perfect_ranking_scores_one():
    scores, targets = random_case(10, 60, 9, 0.3, None)
    perfect = topk_f1(targets + 0.5 * scores, targets)  # every positive outranks every negative
    assert all(v == pytest.approx(1.0) for v in perfect.values())


# --------------------------------------------------------------------------------------------------
# Threshold protocol


def mlgcn_reference(scores: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, float]:
    """ML-GCN's AveragePrecisionMeter.evaluation counts (never-predicted labels get Np = 1, i.e. precision 0)."""
    pred = scores >= threshold
    n_correct = (pred & (targets == 1)).sum(axis=0).astype(float)
    n_pred = pred.sum(axis=0).astype(float)
    n_true = (targets == 1).sum(axis=0).astype(float)
    n_pred[n_pred == 0] = 1
    op = n_correct.sum() / n_pred.sum()
    orr = n_correct.sum() / n_true.sum()
    cp = np.mean(n_correct / n_pred)
    cr = np.mean(n_correct / n_true)
    return {"OP": op, "OR": orr, "OF1": 2 * op * orr / (op + orr), "CP": cp, "CR": cr,
            "CF1": 2 * cp * cr / (cp + cr)}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.8])
def test_threshold_scores_match_sklearn(case, threshold):
    scores, targets = random_case(*case)
    pred = (scores >= threshold).astype(np.int64)
    keep = targets.any(axis=0)
    got = threshold_scores(scores, targets, threshold=threshold)
    assert set(got) == {"CP", "CR", "CF1", "OP", "OR", "OF1"}
    assert got["OP"] == pytest.approx(precision_score(targets, pred, average="micro", zero_division=0), rel=1e-12)
    assert got["OR"] == pytest.approx(recall_score(targets, pred, average="micro", zero_division=0), rel=1e-12)
    assert got["OF1"] == pytest.approx(f1_score(targets, pred, average="micro", zero_division=0), rel=1e-12)
    cp = precision_score(targets[:, keep], pred[:, keep], average="macro", zero_division=0)
    cr = recall_score(targets[:, keep], pred[:, keep], average="macro", zero_division=0)
    assert got["CP"] == pytest.approx(cp, rel=1e-12)
    assert got["CR"] == pytest.approx(cr, rel=1e-12)
    assert got["CF1"] == pytest.approx(2 * cp * cr / (cp + cr) if cp + cr else 0.0, rel=1e-12)


def test_threshold_scores_match_mlgcn_formulas():
    scores, targets = random_case(11, 400, 12, 0.2, 2)
    assert targets.any(axis=0).all() and (scores >= 0.5).any()
    want = mlgcn_reference(scores, targets, 0.5)
    got = threshold_scores(scores, targets)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def test_threshold_cf1_is_harmonic_mean_of_averages_not_mean_of_f1():
    # Label 0: P 1, R 1/2 (F1 2/3); label 1: P 1/2, R 1 (F1 2/3). CP = CR = 3/4, so CF1 = 3/4, not 2/3.
    scores = np.array([[0.9, 0.9], [0.1, 0.9]])
    targets = np.array([[1, 1], [1, 0]])
    got = threshold_scores(scores, targets)
    assert got["CF1"] == pytest.approx(3 / 4)


def test_threshold_never_predicted_label_has_precision_zero():
    # Label 0 predicted once, correctly; label 1 never predicted (P 0, R 0).
    scores = np.array([[0.9, 0.2], [0.4, 0.3]])
    targets = np.array([[1, 1], [0, 1]])
    got = threshold_scores(scores, targets)
    assert got["CP"] == pytest.approx(1 / 2)
    assert got["CR"] == pytest.approx(1 / 2)
    assert got["CF1"] == pytest.approx(1 / 2)
    assert got["OP"] == pytest.approx(1.0)
    assert got["OR"] == pytest.approx(1 / 3)
    assert got["OF1"] == pytest.approx(1 / 2)


def test_threshold_is_inclusive_and_nothing_predicted_gives_zero():
    targets = np.array([[1, 0]])
    assert threshold_scores([[0.5, 0.2]], targets)["OF1"] == 1.0
    nothing = threshold_scores([[0.49, 0.2]], targets)
    assert nothing == {"CP": 0.0, "CR": 0.0, "CF1": 0.0, "OP": 0.0, "OR": 0.0, "OF1": 0.0}


# --------------------------------------------------------------------------------------------------
# Combined dictionary and accumulator

EXPECTED_KEYS = {
    "mAP", "topk_OP", "topk_OR", "topk_OF1", "topk_CP", "topk_CR", "topk_CF1",
    "thr_CP", "thr_CR", "thr_CF1", "thr_OP", "thr_OR", "thr_OF1",
    "threshold", "num_samples", "num_labels_evaluated", "labels_without_positives",
}


def test_multilabel_metrics_combines_every_protocol():
    scores, targets = random_case(12, 80, 10, 0.08, 2)
    targets[:, [3, 7]] = 0
    got = multilabel_metrics(scores, targets, threshold=0.4)
    assert set(got) == EXPECTED_KEYS
    assert got["mAP"] == pytest.approx(mean_average_precision(scores, targets))
    for key, value in topk_f1(scores, targets).items():
        assert got[f"topk_{key}"] == value
    for key, value in threshold_scores(scores, targets, threshold=0.4).items():
        assert got[f"thr_{key}"] == value
    assert got["threshold"] == 0.4
    assert got["num_samples"] == 80
    assert got["labels_without_positives"] == [3, 7]
    assert got["num_labels_evaluated"] == 8
    json.dumps(got, allow_nan=False)  # the engine writes it to metrics.json
    for key, value in got.items():
        if key not in {"threshold", "num_samples", "num_labels_evaluated", "labels_without_positives"}:
            assert type(value) is float and 0.0 <= value <= 1.0, key


def test_torch_inputs_give_the_numpy_results():
    scores, targets = random_case(13, 64, 9, 0.3, None)
    want = multilabel_metrics(scores, targets)
    as_torch = multilabel_metrics(torch.tensor(scores, requires_grad=True), torch.tensor(targets).bool())
    assert as_torch == want
    # Half precision (no numpy equivalent for bfloat16) is cast before leaving the tensor.
    half = torch.tensor(scores, dtype=torch.bfloat16)
    assert multilabel_metrics(half, torch.tensor(targets, dtype=torch.float16)) == multilabel_metrics(
        half.double().numpy(), targets
    )


def test_accumulator_equals_one_shot_and_resets():
    scores, targets = random_case(14, 103, 7, 0.25, 1)
    metrics = MultiLabelMetrics(threshold=0.6)
    for start, stop in [(0, 40), (40, 41), (41, 103)]:
        metrics.update(torch.tensor(scores[start:stop]).float(), torch.tensor(targets[start:stop]))
    want = multilabel_metrics(torch.tensor(scores).float(), targets, threshold=0.6)
    assert metrics.compute() == want
    metrics.reset()
    with pytest.raises(ValueError, match="before any update"):
        metrics.compute()
    metrics.update(scores[:10], targets[:10])
    assert metrics.compute()["num_samples"] == 10


def test_accumulator_copies_a_reused_buffer():
    scores, targets = random_case(15, 20, 4, 0.5, None)
    buffer, labels = scores.copy(), targets.astype(np.float64)
    metrics = MultiLabelMetrics()
    metrics.update(buffer, labels)
    buffer[:] = 0.0  # an evaluation loop overwriting its batch buffer
    labels[:] = 1.0
    assert metrics.compute() == multilabel_metrics(scores, targets)


def test_accumulator_rejects_a_batch_with_another_label_count():
    metrics = MultiLabelMetrics()
    metrics.update(np.full((2, 3), 0.5), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"scores has 4 labels but earlier batches had 3.*reset"):
        metrics.update(np.full((2, 4), 0.5), np.ones((2, 4)))


# --------------------------------------------------------------------------------------------------
# Bad input

GOOD_S = np.array([[0.2, 0.8], [0.6, 0.4]])
GOOD_T = np.array([[0, 1], [1, 0]])

BAD_INPUTS = [
    (np.array([0.2, 0.8]), np.array([0, 1]), r"scores must be 2-D \[N, q\].*got shape \(2,\).*\[1, q\]"),
    (np.zeros((2, 2, 1)), GOOD_T, r"scores must be 2-D \[N, q\].*got shape \(2, 2, 1\)"),
    (GOOD_S, np.array([0, 1]), r"targets must be 2-D \[N, q\].*\(2,\)"),
    (GOOD_S, np.array([[0, 1, 1], [1, 0, 0]]), r"same shape \[N, q\]; got scores \(2, 2\) and targets \(2, 3\)"),
    (GOOD_S[:1], GOOD_T, r"same shape \[N, q\]; got scores \(1, 2\) and targets \(2, 2\)"),
    (np.zeros((0, 2)), np.zeros((0, 2)), r"scores is empty \(shape \(0, 2\)\).*N >= 1"),
    (np.zeros((2, 0)), np.zeros((2, 0)), r"scores is empty \(shape \(2, 0\)\).*q >= 1"),
    (np.array([[0.2, np.nan], [0.6, 0.4]]), GOOD_T, r"scores must be finite; found nan at \[0, 1\]"),
    (np.array([[0.2, 0.8], [np.inf, 0.4]]), GOOD_T, r"scores must be finite; found inf at \[1, 0\]"),
    (GOOD_S, np.array([[0, 2], [1, 0]]), r"targets must be binary \(0 or 1\); found 2.0 at \[0, 1\].*targets > 0"),
    (GOOD_S, np.array([[0, 0.5], [1, 0]]), r"targets must be binary \(0 or 1\); found 0.5"),
    (GOOD_S, np.array([[0, np.nan], [1, 0]]), r"targets must be binary \(0 or 1\); found nan"),
    ([["a", "b"], ["c", "d"]], GOOD_T, r"scores must be a numeric \[N, q\] array or tensor"),
    (GOOD_S, np.zeros((2, 2)), r"targets has no positive entry in any label"),
]

ALL_FUNCTIONS = [
    average_precision_per_label,
    mean_average_precision,
    topk_f1,
    threshold_scores,
    multilabel_metrics,
]


# Per-label AP returns NaN for labels without a positive instead of raising, so it skips the last case.
BAD_INPUT_CALLS = [
    pytest.param(function, *bad, id=f"{function.__name__}-{index}")
    for function in ALL_FUNCTIONS
    for index, bad in enumerate(BAD_INPUTS if function is not average_precision_per_label else BAD_INPUTS[:-1])
]


@pytest.mark.parametrize("function,scores,targets,message", BAD_INPUT_CALLS)
def test_bad_input_raises_value_error_naming_the_argument(function, scores, targets, message):
    with pytest.raises(ValueError, match=message):
        function(scores, targets)


def test_average_precision_per_label_without_any_positive_is_all_nan():
    assert np.isnan(average_precision_per_label(GOOD_S, np.zeros((2, 2)))).all()


@pytest.mark.parametrize("scores,targets,message", BAD_INPUTS[:-1])
def test_accumulator_update_rejects_bad_batches(scores, targets, message):
    with pytest.raises(ValueError, match=message):
        MultiLabelMetrics().update(scores, targets)


@pytest.mark.parametrize("function", [threshold_scores, multilabel_metrics], ids=lambda f: f.__name__)
def test_threshold_protocol_rejects_logits(function):
    with pytest.raises(ValueError, match=r"scores must be probabilities in \[0, 1\].*torch.sigmoid"):
        function(np.array([[-1.5, 2.0], [0.3, 0.1]]), GOOD_T)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, "high", None])
def test_bad_threshold_raises(threshold):
    with pytest.raises(ValueError, match=r"threshold must be"):
        threshold_scores(GOOD_S, GOOD_T, threshold=threshold)
    with pytest.raises(ValueError, match=r"threshold must be"):
        MultiLabelMetrics(threshold=threshold)

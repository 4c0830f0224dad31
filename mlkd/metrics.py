"""Multi-label evaluation metrics: mAP, the paper's oracle top-k F1, and the threshold protocol.

Every function takes ``scores`` and ``targets`` of shape ``[N, q]`` (N images, q labels) as numpy
arrays, torch tensors on any device, or nested sequences, and computes in float64 numpy on the CPU.
``targets`` must be binary (0/1, bool or numeric). Results are Python floats in ``[0, 1]``.

Conventions shared by all metrics (see method.md §6):

* **Evaluated labels.** A label with no positive in ``targets`` has no defined average precision or
  recall, so every class-wise average (mAP, CP, CR, CF1 of both protocols) is taken over the labels
  with at least one positive only; those without are reported by `multilabel_metrics` under
  ``labels_without_positives``. Overall (micro) metrics count all ``N * q`` decisions, so false
  positives on such labels still lower OP and OF1. When every label has a positive (the usual
  MS-COCO / VOC case) the class-wise averages equal scikit-learn's ``average='macro'`` over all labels.
  If no label has a positive at all, every function raises `ValueError`.
* **No predicted positive.** A label that is never predicted has precision 0 (scikit-learn's
  ``zero_division=0``); its recall is 0 as well, since it has positives. Likewise OP is 0 when nothing
  at all is predicted.

`MultiLabelMetrics` accumulates batches for an evaluation loop and returns the same dictionary as
`multilabel_metrics`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "MultiLabelMetrics",
    "average_precision_per_label",
    "mean_average_precision",
    "multilabel_metrics",
    "threshold_scores",
    "topk_f1",
]


def _to_float64(x: Any, name: str) -> np.ndarray:
    """Convert a tensor or array-like to a float64 numpy array (a copy for tensors on any device)."""
    if isinstance(x, torch.Tensor):
        # Cast on the tensor's device before moving: numpy has no bfloat16, and the copy detaches.
        return x.detach().to(dtype=torch.float64).cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name} must be a numeric [N, q] array or tensor; could not convert {type(x).__name__}: {err}"
        ) from None


def _check_2d(arr: np.ndarray, name: str) -> None:
    """Raise unless ``arr`` is a non-empty ``[N, q]`` matrix."""
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [N, q] (one row per image, one column per label); got shape "
            f"{tuple(arr.shape)}. Reshape a single image's vector to [1, q]."
        )
    if arr.size == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(arr.shape)}); pass at least one image (N >= 1) and one "
            f"label (q >= 1)."
        )


def _check_values(scores: np.ndarray, targets: np.ndarray) -> None:
    """Raise on non-finite ``scores`` or non-binary ``targets``."""
    bad = ~np.isfinite(scores)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"scores must be finite; found {scores[i, j]} at [{i}, {j}] ({int(bad.sum())} non-finite "
            f"entries). Check the model output for NaN/inf before evaluating."
        )
    bad = (targets != 0) & (targets != 1)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"targets must be binary (0 or 1); found {targets[i, j]} at [{i}, {j}]. Binarize them "
            f"first (e.g. targets > 0), and pass soft or smoothed labels only to the losses."
        )


def _prepare(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a ``[N, q]`` pair and return ``(scores float64, targets bool)``."""
    s = _to_float64(scores, "scores")
    t = _to_float64(targets, "targets")
    _check_2d(s, "scores")
    _check_2d(t, "targets")
    if s.shape != t.shape:
        raise ValueError(
            f"scores and targets must have the same shape [N, q]; got scores {tuple(s.shape)} and "
            f"targets {tuple(t.shape)}."
        )
    _check_values(s, t)
    return s, t.astype(bool)


def _evaluated_labels(targets: np.ndarray) -> np.ndarray:
    """Boolean mask ``[q]`` of labels with at least one positive; raise when there is none."""
    has_positive = targets.any(axis=0)
    if not has_positive.any():
        raise ValueError(
            "targets has no positive entry in any label, so precision, recall and AP are undefined; "
            "evaluate on a set that contains at least one positive label."
        )
    return has_positive


def _average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Step-wise AP of every column, as scikit-learn's ``average_precision_score``.

    AP = sum over thresholds t of (R_t - R_{t-1}) * P_t, where the thresholds are the distinct score
    values: tied scores form one threshold, so every positive in a tie group is credited with the
    precision at the group's end. This equals ``(1/P) * sum_{positive i} precision(end of i's group)``,
    which is what is computed here for all columns at once.

    Args:
        scores: ``[N, q]`` float64 finite scores.
        targets: ``[N, q]`` bool.

    Returns:
        ``[q]`` float64 AP; NaN for columns without a positive.
    """
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    sorted_targets = np.take_along_axis(targets, order, axis=0)
    true_pos = np.cumsum(sorted_targets, axis=0, dtype=np.int64)
    precision = true_pos / np.arange(1, n + 1, dtype=np.float64)[:, None]
    # Row index of the last member of each tie group, propagated back over the group with a
    # reversed running minimum, so each row can read the precision at its threshold.
    rows = np.arange(n)[:, None]
    group_end = np.ones_like(sorted_targets)
    group_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    end_row = np.where(group_end, rows, n - 1)
    end_row = np.minimum.accumulate(end_row[::-1], axis=0)[::-1]
    precision_at_threshold = np.take_along_axis(precision, end_row, axis=0)
    num_pos = true_pos[-1]
    summed = np.where(sorted_targets, precision_at_threshold, 0.0).sum(axis=0)
    return np.where(num_pos > 0, summed / np.maximum(num_pos, 1), np.nan)


def average_precision_per_label(scores: Any, targets: Any) -> np.ndarray:
    """Average precision of each label, as scikit-learn's ``average_precision_score``.

    Step-wise (non-interpolated) AP; tied scores count as one threshold, exactly as scikit-learn.

    Args:
        scores: ``[N, q]`` finite scores (logits or probabilities; only their order matters).
        targets: ``[N, q]`` binary ground truth.

    Returns:
        ``[q]`` float64 array; NaN for labels with no positive in ``targets``.

    Raises:
        ValueError: on a wrong number of dimensions, mismatched or empty shapes, non-finite scores
            or non-binary targets.
    """
    s, t = _prepare(scores, targets)
    return _average_precision(s, t)


def mean_average_precision(scores: Any, targets: Any) -> float:
    """Mean of the per-label average precision over the labels with at least one positive.

    Labels with no positive in ``targets`` are excluded from the mean (their AP is undefined);
    `multilabel_metrics` reports which ones were excluded.

    Args:
        scores: ``[N, q]`` finite scores (logits or probabilities; only their order matters).
        targets: ``[N, q]`` binary ground truth.

    Returns:
        mAP in ``[0, 1]``.

    Raises:
        ValueError: on bad input (see `average_precision_per_label`) or when no label has a positive.
    """
    s, t = _prepare(scores, targets)
    evaluated = _evaluated_labels(t)
    return float(_average_precision(s, t)[evaluated].mean())


def _topk_predictions(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Oracle top-k decisions ``[N, q]`` bool: image i predicts its k_i highest-scoring labels.

    Ties are broken by label index (the lower index wins) through a stable sort, so the result is
    deterministic and does not depend on the platform.
    """
    k = targets.sum(axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(scores.shape[1]), order.shape), axis=1)
    return rank < k[:, None]


def _count_scores(pred: np.ndarray, targets: np.ndarray, evaluated: np.ndarray) -> dict[str, Any]:
    """Overall and per-label precision/recall/F1 of binary decisions.

    Args:
        pred: ``[N, q]`` bool decisions.
        targets: ``[N, q]`` bool ground truth.
        evaluated: ``[q]`` bool mask of labels with at least one positive.

    Returns:
        ``OP``, ``OR``, ``OF1`` (floats over all decisions) and ``CP``, ``CR``, ``macro_F1`` (floats
        averaged over the evaluated labels).
    """
    true_pos = (pred & targets).sum(axis=0)
    num_pred = pred.sum(axis=0)
    num_true = targets.sum(axis=0)
    tp, npred, ntrue = int(true_pos.sum()), int(num_pred.sum()), int(num_true.sum())
    # ntrue > 0 is guaranteed by `evaluated`; F1 = 2 TP / (#pred + #true) avoids 0/0 when P = R = 0.
    overall_p = tp / npred if npred else 0.0
    tp_e, npred_e, ntrue_e = true_pos[evaluated], num_pred[evaluated], num_true[evaluated]
    label_p = np.where(npred_e > 0, tp_e / np.maximum(npred_e, 1), 0.0)
    return {
        "OP": overall_p,
        "OR": tp / ntrue,
        "OF1": 2 * tp / (npred + ntrue),
        "CP": float(label_p.mean()),
        "CR": float((tp_e / ntrue_e).mean()),
        "macro_F1": float((2 * tp_e / (npred_e + ntrue_e)).mean()),
    }


def topk_f1(scores: Any, targets: Any) -> dict[str, float]:
    """The paper's **oracle** top-k protocol: image i predicts its k_i highest-scoring labels.

    k_i is the number of true labels of image i, read from ``targets``, so this protocol uses the
    ground truth and must always be reported as oracle. An image with no true label predicts nothing;
    one with all q labels predicts all of them. Among equal scores the lower label index is predicted
    first.

    OF1 is the micro F1 over all decisions and CF1 the macro F1, i.e. the mean of the per-label F1
    (scikit-learn's ``f1_score(average='macro', zero_division=0)``), not ``2·CP·CR/(CP+CR)``. Since
    the protocol predicts exactly as many labels as there are true ones, OP = OR = OF1.

    Args:
        scores: ``[N, q]`` finite scores (logits or probabilities; only their order within a row matters).
        targets: ``[N, q]`` binary ground truth.

    Returns:
        ``{"OP", "OR", "OF1", "CP", "CR", "CF1"}`` as floats in ``[0, 1]``; the class-wise values are
        averaged over the labels with at least one positive (see the module docstring).

    Raises:
        ValueError: on bad input (see `average_precision_per_label`) or when no label has a positive.
    """
    s, t = _prepare(scores, targets)
    return _topk_from_arrays(s, t, _evaluated_labels(t))


def _topk_from_arrays(scores: np.ndarray, targets: np.ndarray, evaluated: np.ndarray) -> dict[str, float]:
    """`topk_f1` on already validated arrays."""
    counts = _count_scores(_topk_predictions(scores, targets), targets, evaluated)
    counts["CF1"] = counts.pop("macro_F1")
    return counts


def _check_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float, raising unless it lies in ``[0, 1]``."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1]; got {threshold!r}.") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"threshold must be a probability in [0, 1]; got {threshold!r} (the default is 0.5)."
        )
    return value


def _threshold_from_arrays(scores: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, float]:
    """`threshold_scores` on already validated arrays."""
    if scores.min() < 0.0 or scores.max() > 1.0:
        raise ValueError(
            f"scores must be probabilities in [0, 1] for the threshold protocol; got values in "
            f"[{scores.min():.4g}, {scores.max():.4g}]. Apply torch.sigmoid to the logits first."
        )
    evaluated = _evaluated_labels(targets)
    counts = _count_scores(scores >= threshold, targets, evaluated)
    del counts["macro_F1"]
    cp, cr = counts["CP"], counts["CR"]
    counts["CF1"] = 2 * cp * cr / (cp + cr) if cp + cr > 0 else 0.0
    return counts


def threshold_scores(scores: Any, targets: Any, threshold: float = 0.5) -> dict[str, float]:
    """The standard threshold protocol of the ML-GCN / ASL literature.

    A label is predicted when its probability is ``>= threshold``. CP and CR are the per-label
    precision and recall averaged over the labels with at least one positive, and
    CF1 = 2·CP·CR / (CP + CR) (the harmonic mean of the averages, not the mean of per-label F1;
    0 when CP = CR = 0). OP, OR and OF1 are computed over all ``N * q`` decisions. A label never
    predicted has precision 0 (scikit-learn's ``zero_division=0``, which matches ML-GCN's code).

    Args:
        scores: ``[N, q]`` probabilities in ``[0, 1]``, i.e. sigmoid outputs, not logits.
        targets: ``[N, q]`` binary ground truth.
        threshold: decision threshold in ``[0, 1]``.

    Returns:
        ``{"CP", "CR", "CF1", "OP", "OR", "OF1"}`` as floats in ``[0, 1]``.

    Raises:
        ValueError: on bad input (see `average_precision_per_label`), scores outside ``[0, 1]``,
            a threshold outside ``[0, 1]``, or when no label has a positive.
    """
    value = _check_threshold(threshold)
    s, t = _prepare(scores, targets)
    return _threshold_from_arrays(s, t, value)


def multilabel_metrics(scores: Any, targets: Any, threshold: float = 0.5) -> dict[str, Any]:
    """All metrics of method.md §6 in one flat, JSON-ready dictionary.

    Args:
        scores: ``[N, q]`` probabilities in ``[0, 1]`` (sigmoid outputs; the threshold protocol needs them).
        targets: ``[N, q]`` binary ground truth.
        threshold: decision threshold of the threshold protocol.

    Returns:
        ``mAP``; ``topk_OP``, ``topk_OR``, ``topk_OF1``, ``topk_CP``, ``topk_CR``, ``topk_CF1``
        (oracle top-k protocol, see `topk_f1`); ``thr_CP``, ``thr_CR``, ``thr_CF1``, ``thr_OP``,
        ``thr_OR``, ``thr_OF1`` (see `threshold_scores`); ``threshold``; ``num_samples`` (N);
        ``num_labels_evaluated`` (labels with at least one positive, over which class-wise values are
        averaged); ``labels_without_positives`` (their complement, as a sorted list of label indices).

    Raises:
        ValueError: as `threshold_scores`.
    """
    value = _check_threshold(threshold)
    s, t = _prepare(scores, targets)
    evaluated = _evaluated_labels(t)
    result: dict[str, Any] = {"mAP": float(_average_precision(s, t)[evaluated].mean())}
    topk = _topk_from_arrays(s, t, evaluated)
    for name in ("OP", "OR", "OF1", "CP", "CR", "CF1"):
        result[f"topk_{name}"] = float(topk[name])
    thr = _threshold_from_arrays(s, t, value)
    for name in ("CP", "CR", "CF1", "OP", "OR", "OF1"):
        result[f"thr_{name}"] = float(thr[name])
    result["threshold"] = value
    result["num_samples"] = int(s.shape[0])
    result["num_labels_evaluated"] = int(evaluated.sum())
    result["labels_without_positives"] = [int(j) for j in np.flatnonzero(~evaluated)]
    return result


class MultiLabelMetrics:
    """Accumulates ``(scores, targets)`` batches and computes `multilabel_metrics` on all of them.

    Batches are stored as float64 CPU copies and concatenated at `compute`, so the result is exactly
    that of `multilabel_metrics` on the whole evaluation set (mAP does not decompose over batches).

    Example:
        >>> metrics = MultiLabelMetrics(threshold=0.5)
        >>> for images, targets in loader:  # doctest: +SKIP
        ...     metrics.update(torch.sigmoid(model(images).logits), targets)
        >>> results = metrics.compute()  # doctest: +SKIP

    Args:
        threshold: decision threshold of the threshold protocol, in ``[0, 1]``.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = _check_threshold(threshold)
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def update(self, scores: Any, targets: Any) -> None:
        """Store one batch.

        Args:
            scores: ``[B, q]`` probabilities (sigmoid outputs), tensor on any device or array.
            targets: ``[B, q]`` binary ground truth.

        Raises:
            ValueError: on a bad batch (as `multilabel_metrics`, except the need for a positive, which
                is checked at `compute`) or a q different from earlier batches.
        """
        s, t = _prepare(scores, targets)
        if self._scores and s.shape[1] != self._scores[0].shape[1]:
            raise ValueError(
                f"scores has {s.shape[1]} labels but earlier batches had {self._scores[0].shape[1]}; "
                f"every batch must have the same q (call reset() to start a new evaluation)."
            )
        # Copy: a float64 array or CPU tensor comes back aliased, and an evaluation loop may reuse
        # that buffer for the next batch.
        self._scores.append(s.copy())
        self._targets.append(t)

    def compute(self) -> dict[str, Any]:
        """Metrics of all batches since the last `reset`, as `multilabel_metrics` returns them.

        Raises:
            ValueError: when no batch was stored, or as `multilabel_metrics`.
        """
        if not self._scores:
            raise ValueError("MultiLabelMetrics.compute() called before any update(scores, targets).")
        return multilabel_metrics(
            np.concatenate(self._scores), np.concatenate(self._targets), threshold=self.threshold
        )

    def reset(self) -> None:
        """Forget every stored batch."""
        self._scores.clear()
        self._targets.clear()

"""Confidence intervals for comparing two training methods: over seeds and over test images.

Two sources of chance separate a method from its baseline:

* **the seed** (initialisation and batch order): `t_interval` puts a Student t interval on the
  per-seed differences of paired runs (method and baseline trained with the same seed);
* **the test set** (which images happened to be drawn): `paired_bootstrap` resamples the test images
  with replacement and recomputes both runs' mAP on every resample, so the interval reflects how much
  the gain would move on another test set of the same size.

`bootstrap_map` computes the mAP of many resamples at once from a ``[B, n]`` matrix of multiplicities:
a resample is the original images with integer weights, so one sort per label serves all resamples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["Interval", "bootstrap_counts", "bootstrap_map", "paired_bootstrap", "percentile_interval", "t_interval",
           "t_quantile"]

# Elements of one [chunk, n, q] block in `bootstrap_map`: bounds its memory to about 64 MB.
_BLOCK_ELEMENTS = 8_000_000


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of 0 (the difference is significant)."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "confidence": self.confidence,
                "excludes_zero": self.excludes_zero}


def _t_coverage(theta: float, df: int) -> float:
    """P(|T| <= sqrt(df)·tan(theta)) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4)."""
    s, c = math.sin(theta), math.cos(theta)
    c2 = c * c
    if df % 2 == 1:
        series, term = 0.0, c  # c + (2/3)c^3 + (2·4)/(3·5)c^5 + ... up to c^(df-2)
        for k in range(1, (df - 1) // 2 + 1):
            series += term
            term *= c2 * (2 * k) / (2 * k + 1)
        return 2.0 / math.pi * (theta + s * series)
    series, term = 0.0, 1.0  # 1 + (1/2)c^2 + (1·3)/(2·4)c^4 + ... up to c^(df-2)
    for k in range(1, df // 2 + 1):
        series += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return s * series


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided critical value of Student's t: ``P(|T| <= t) = confidence`` with ``df`` degrees of freedom.

    Equals ``scipy.stats.t.ppf((1 + confidence) / 2, df)``; computed here by bisection on the exact
    finite-series distribution function for integer ``df``, so that the library needs no scipy.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence}")
    if int(df) != df or df < 1:
        raise ValueError(f"df must be a positive integer (number of seeds - 1); got {df}")
    df = int(df)
    lo, hi = 0.0, math.pi / 2  # the coverage grows monotonically with theta = arctan(t / sqrt(df))
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _t_coverage(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan(0.5 * (lo + hi))


def t_interval(differences: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval | None:
    """Student t interval for the mean of paired per-seed differences (method − baseline).

    Args:
        differences: ``[n_seeds]`` differences of paired runs.
        confidence: two-sided coverage, e.g. 0.95.

    Returns:
        The interval ``mean ± t·sd/sqrt(n)``, or None with fewer than two seeds (no spread to estimate).
    """
    d = np.asarray(differences, dtype=np.float64).reshape(-1)
    if not np.isfinite(d).all():
        raise ValueError(f"differences must be finite; got {d.tolist()}")
    if len(d) < 2:
        return None
    mean = float(d.mean())
    half = t_quantile(confidence, len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return Interval(mean, mean - half, mean + half, confidence)


def bootstrap_counts(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """Multiplicities of ``resamples`` bootstrap resamples of ``n`` items: ``[resamples, n]`` int64.

    Row b says how often each item was drawn when ``n`` items are drawn with replacement; rows sum to ``n``.
    """
    if n < 1 or resamples < 1:
        raise ValueError(f"need at least one item and one resample; got n={n}, resamples={resamples}")
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    flat = (idx + n * np.arange(resamples)[:, None]).reshape(-1)
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n)


def bootstrap_map(scores: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor,
                  counts: np.ndarray | torch.Tensor) -> np.ndarray:
    """mAP of every bootstrap resample, each equal to scikit-learn's on the resampled images (to about 1e-7).

    The counts and running sums are exact (integers in float32); the precisions are float32, which
    bounds the error of each AP to about 1e-7 (1e-5 mAP points), far below any reported digit.

    A resample repeats image i ``counts[b, i]`` times. Per label, AP is the mean over positive
    images (with multiplicity) of the precision at the end of the image's tie group of scores
    (scikit-learn's step-wise AP; copies of one image are always tied). mAP averages the labels with
    at least one positive in the resample, as `mlkd.metrics.mean_average_precision` does.

    Args:
        scores: ``[n, q]`` scores of n test images.
        targets: ``[n, q]`` binary targets.
        counts: ``[B, n]`` non-negative integer multiplicities, e.g. from `bootstrap_counts`.

    Returns:
        ``[B]`` float64 mAP values.
    """
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.float64)
    w = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores and targets must both be [n, q]; got {tuple(s.shape)} and {tuple(t.shape)}")
    if w.ndim != 2 or w.shape[1] != s.shape[0]:
        raise ValueError(f"counts must be [B, n] with n = {s.shape[0]} images; got {tuple(w.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError("scores must be finite; check the model output for NaN/inf")
    if ((t != 0) & (t != 1)).any():
        raise ValueError("targets must be binary (0 or 1)")
    if (w < 0).any():
        raise ValueError("counts must be non-negative multiplicities")
    n, q = s.shape
    # Per label (rows), the images in descending score order.
    order = torch.argsort(s.T, dim=1, descending=True, stable=True)  # [q, n]
    s_sorted = torch.gather(s.T, 1, order)
    y_sorted = torch.gather(t.T, 1, order).to(torch.float32)
    # Last position of each position's tie group: the position before the next strictly lower score.
    last = torch.full((q, n), n, dtype=torch.long)
    last[:, -1] = n - 1
    group_ends = s_sorted[:, 1:] != s_sorted[:, :-1]  # [q, n-1]: position i ends its group
    last[:, :-1] = torch.where(group_ends, torch.arange(n - 1).expand(q, n - 1), n)
    ends = torch.flip(torch.cummin(torch.flip(last, [1]), dim=1).values, [1])
    # Only positives enter the sum: their positions per label, padded to the largest count.
    n_pos = y_sorted.sum(dim=1).long()
    width = max(1, int(n_pos.max()))
    pos_index = torch.argsort(y_sorted, dim=1, descending=True, stable=True)[:, :width]  # [q, width]
    valid = (torch.arange(width).unsqueeze(0) < n_pos.unsqueeze(1)).to(torch.float32)
    pos_ends = torch.gather(ends, 1, pos_index)
    flat_order = order.reshape(-1)
    out = []
    chunk = max(1, _BLOCK_ELEMENTS // (n * q))
    # Multiplicities, their running sums and the hits are integers below 2^24: exact in float32.
    for w_block in torch.split(w.to(torch.float32), chunk):
        b = w_block.shape[0]
        ws = w_block[:, flat_order].reshape(b, q, n)  # weights in each label's score order
        seen = torch.cumsum(ws, dim=2)
        hits = torch.cumsum(ws * y_sorted, dim=2)
        w_pos = torch.gather(ws, 2, pos_index.expand(b, q, width)) * valid
        at_end = pos_ends.expand(b, q, width)
        precision = torch.gather(hits, 2, at_end) / torch.gather(seen, 2, at_end).clamp_min(1.0)
        positives = w_pos.sum(dim=2, dtype=torch.float64)  # [b, q]
        ap = (w_pos * precision).sum(dim=2, dtype=torch.float64) / positives.clamp_min(1.0)
        evaluated = positives > 0
        if not evaluated.any(dim=1).all():
            raise ValueError("a resample holds no positive label at all, so its mAP is undefined; "
                             "evaluate on a test set with more positives")
        out.append((ap * evaluated).sum(dim=1) / evaluated.sum(dim=1))
    return torch.cat(out).numpy()


def paired_bootstrap(scores_a: Sequence[np.ndarray], scores_b: Sequence[np.ndarray], targets: np.ndarray,
                     resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> Interval:
    """Percentile bootstrap interval of the mAP gain of runs A over runs B on the same test images.

    Each resample draws the test images once and scores every run on it, so the gain of a pair is
    measured on identical images. With several seed pairs (``scores_a[k]`` paired with
    ``scores_b[k]``) the gain of a resample is the mean over pairs: a pooled interval over seeds
    that reflects only the test-set sampling, not the seed-to-seed spread.

    Args:
        scores_a: the ``[n, q]`` test scores of each run of method A.
        scores_b: the ``[n, q]`` test scores of each paired run of method B (same length).
        targets: the shared ``[n, q]`` binary test targets.
        resamples: number of bootstrap resamples.
        seed: seed of the resampling, so that an interval is reproducible.
        confidence: two-sided coverage.

    Returns:
        The gain on the full test set with its percentile interval.
    """
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ValueError(f"need as many runs of A as of B, at least one; got {len(scores_a)} and {len(scores_b)}")
    targets = np.asarray(targets)
    counts = bootstrap_counts(targets.shape[0], resamples, seed)
    identity = np.ones((1, targets.shape[0]), dtype=np.int64)
    gains, full = np.zeros(resamples), 0.0
    for a, b in zip(scores_a, scores_b):
        gains += bootstrap_map(a, targets, counts) - bootstrap_map(b, targets, counts)
        full += float(bootstrap_map(a, targets, identity)[0] - bootstrap_map(b, targets, identity)[0])
    return percentile_interval(full / len(scores_a), gains / len(scores_a), confidence)


def percentile_interval(estimate: float, replicates: np.ndarray, confidence: float = 0.95) -> Interval:
    """The percentile interval of bootstrap ``replicates`` ``[B]`` around ``estimate``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence}")
    low, high = np.quantile(np.asarray(replicates, dtype=np.float64), [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(float(estimate), float(low), float(high), confidence)

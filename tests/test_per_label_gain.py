"""benchmarks/per_label_gain.py against scikit-learn on a made-up finished setting."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import per_label_gain  # noqa: E402


def _scores(folder: Path, rng: np.random.Generator, targets: np.ndarray) -> np.ndarray:
    scores = rng.normal(size=targets.shape) + targets * rng.uniform(0, 2, size=targets.shape[1])
    folder.mkdir(parents=True)
    np.savez(folder / "test_scores.npz", scores=scores, targets=targets)
    return scores


def test_gains_frequency_groups_and_teacher_correlation_match_sklearn(tmp_path):
    rng = np.random.default_rng(0)
    targets = (rng.uniform(size=(60, 5)) < np.array([0.6, 0.4, 0.3, 0.1, 0.0])).astype(np.float32)
    students = tmp_path / "s1" / "students"
    scores = {(m, s): _scores(students / m / f"seed{s}", rng, targets) for m in ("vanilla", "L2D") for s in (0, 3)}
    teachers = [_scores(tmp_path / "teachers" / f"fold{k}", rng, targets) for k in range(2)]
    (tmp_path / "s1" / "results.json").write_text(json.dumps({
        "comparison": {"seeds": [0, 3]}, "teacher": str(tmp_path / "whole"),
        "fold_teachers_val_mAP": {str(tmp_path / "teachers" / f"fold{k}"): 0.5 for k in range(2)}}))

    r = per_label_gain.report("s1", tmp_path, "L2D", frequent=2, classes=list("abcde"))

    def ap(s, j):
        return 100 * average_precision_score(targets[:, j], s[:, j])
    want = {j: np.mean([ap(scores["L2D", s], j) - ap(scores["vanilla", s], j) for s in (0, 3)]) for j in range(4)}
    order = sorted(range(4), key=lambda j: -targets[:, j].sum())
    assert [name for name, _, _ in r["per_label"]] == ["abcde"[j] for j in order]  # label e has no positive
    for name, positives, gain in r["per_label"]:
        j = "abcde".index(name)
        assert positives == targets[:, j].sum() and abs(gain - want[j]) < 1e-9
    assert abs(r["frequent"] - np.mean([want[j] for j in order[:2]])) < 1e-9
    assert abs(r["others"] - np.mean([want[j] for j in order[2:]])) < 1e-9
    teacher = {j: np.mean([ap(t, j) for t in teachers]) for j in range(4)}
    vanilla = {j: np.mean([ap(scores["vanilla", s], j) for s in (0, 3)]) for j in range(4)}
    adv = [teacher[j] - vanilla[j] for j in order]
    assert abs(r["teacher_advantage"] - np.mean(adv)) < 1e-9
    assert abs(r["correlation"] - np.corrcoef(adv, [want[j] for j in order])[0, 1]) < 1e-9

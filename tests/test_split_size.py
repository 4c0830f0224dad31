"""benchmarks/split_size.py: image noise by evaluation-set size, against a plain sklearn loop; epoch-choice bias."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import split_size  # noqa: E402

N_IMAGES, N_LABELS = 60, 3


def _targets() -> np.ndarray:
    rng = np.random.default_rng(1)
    t = (rng.random((N_IMAGES, N_LABELS)) < 0.4).astype(np.float32)
    t[0] = 1  # every label has a positive in the full set
    return t


def _write_run(folder: Path, scores: np.ndarray, targets: np.ndarray, val_curve: list[float]) -> None:
    folder.mkdir(parents=True)
    np.savez(folder / "test_scores.npz", scores=scores, targets=targets)
    test_map = float(np.mean([average_precision_score(targets[:, j], scores[:, j]) for j in range(N_LABELS)]))
    (folder / "metrics.json").write_text(json.dumps({"mAP": test_map, "best_val_mAP": max(val_curve)}))
    (folder / "log.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "val_mAP": v}) + "\n"
                                              for i, v in enumerate(val_curve)))


@pytest.fixture
def runs(tmp_path):
    t = _targets()
    for seed in (0, 1):
        rng = np.random.default_rng(10 + seed)
        good = t + rng.normal(0, 0.8, t.shape)   # method A: scores closer to the targets
        weak = t + rng.normal(0, 1.5, t.shape)
        _write_run(tmp_path / "A" / f"seed{seed}", good, t, [0.5, 0.7 + 0.01 * seed, 0.65])
        _write_run(tmp_path / "B" / f"seed{seed}", weak, t, [0.4, 0.5, 0.55])
    return tmp_path


def _sklearn_map(scores, targets):
    aps = [average_precision_score(targets[:, j], scores[:, j]) for j in range(targets.shape[1]) if targets[:, j].any()]
    return float(np.mean(aps))


def test_image_noise_equals_a_plain_loop_over_the_same_draws(runs):
    n, resamples = 25, 40
    result = split_size.analyse(runs, "A", "B", [n], resamples=resamples, seed=3)
    for entry in result["per_seed"]:
        s = entry["seed"]
        with np.load(runs / "A" / f"seed{s}" / "test_scores.npz") as za, \
                np.load(runs / "B" / f"seed{s}" / "test_scores.npz") as zb:
            sa, sb, t = za["scores"], zb["scores"], za["targets"]
        # The draws the script makes: n images with replacement from the test set, per resample.
        idx = np.random.default_rng(3 + 7919 * s + n).integers(0, N_IMAGES, size=(resamples, n))
        diffs = [_sklearn_map(sa[i], t[i]) - _sklearn_map(sb[i], t[i]) for i in idx]
        assert entry["image_sd"][n] == pytest.approx(np.std(diffs, ddof=1), rel=1e-5)
        assert entry["image_sd"][N_IMAGES] > 0  # the full test set's own noise is always measured
        # Image noise shrinks with the set's size.
        assert entry["image_sd"][N_IMAGES] < entry["image_sd"][n]


def test_epoch_choice_bias_and_differences_come_from_the_logs(runs):
    result = split_size.analyse(runs, "A", "B", [20], resamples=10)
    first = result["per_seed"][0]
    assert first["epoch_bias_a"] == pytest.approx(0.70 - 0.65)
    assert first["epoch_bias_b"] == pytest.approx(0.0)
    assert first["best_val_diff"] == pytest.approx(0.70 - 0.55)
    assert first["final_val_diff"] == pytest.approx(0.65 - 0.55)
    text = split_size.report(result)
    assert "| 0 |" in text and "+5.00 | +0.00 |" in text


def test_sized_counts_rows_hold_n_images():
    counts = split_size.sized_counts(50, 7, 30, seed=0)
    assert counts.shape == (30, 50) and (counts.sum(axis=1) == 7).all()


def test_refuses_unfinished_runs_and_foreign_test_sets(runs, tmp_path):
    (runs / "A" / "seed1" / "test_scores.npz").unlink()
    with pytest.raises(FileNotFoundError, match="test_scores.npz is missing"):
        split_size.analyse(runs, "A", "B", [20], resamples=5)
    other = tmp_path / "other"
    t = _targets()
    _write_run(other / "A" / "seed0", t + 0.1, t, [0.5])
    _write_run(other / "A" / "seed1", t + 0.1, t, [0.5])
    flipped = t.copy()
    flipped[1] = 1 - flipped[1]
    _write_run(other / "B" / "seed0", t + 0.2, flipped, [0.5])
    _write_run(other / "B" / "seed1", t + 0.2, t, [0.5])
    with pytest.raises(ValueError, match="different test images"):
        split_size.analyse(other, "A", "B", [20], resamples=5)


def test_command_line_errors_name_the_problem(runs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        split_size.main(["--runs", str(runs), "--sizes", "0"])
    assert "--sizes must be positive" in capsys.readouterr().err
    assert split_size.main(["--runs", str(tmp_path / "nowhere"), "--a", "A", "--b", "B"]) == 2
    assert "fewer than two seeds" in capsys.readouterr().err

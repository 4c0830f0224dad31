"""benchmarks/teacher_overlap.py: the A/B halves keep the suite's validation carve and split the rest in two;
Welch's interval for the unpaired comparison against the whole carve."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mlkd.config import make_config
from mlkd.data import build_datasets, create_dataset
from synthetic import write_csv_quadrants

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import teacher_overlap  # noqa: E402


def _paths(dataset) -> list[str]:
    """Resolved image paths of a csv data set or of a Subset of one, in order."""
    if hasattr(dataset, "indices"):
        return [str(Path(dataset.dataset.images[i]).resolve()) for i in dataset.indices]
    return [str(Path(p).resolve()) for p in dataset.images]


def test_halves_keep_the_suite_validation_images_and_split_the_carve(tmp_path):
    src = write_csv_quadrants(tmp_path / "src", ["a", "b", "c"], n_train=41, n_val=1, n_test=9)
    (src / "val.csv").unlink()  # the suite's posters settings carve validation from train.csv
    sizes = teacher_overlap.write_halves(src, 0.2, split_seed=1, out=tmp_path / "halves")
    carve = build_datasets(make_config(dataset="csv", data_root=str(src), val_fraction=0.2, img_size=32))
    want_val, want_train, want_test = _paths(carve.val), _paths(carve.train), _paths(carve.test)
    assert sizes == {"carve": 33, "A": 16, "B": 17, "val": 8, "test": 9}

    halves = {}
    for name in ("A", "B"):
        sets = {s: create_dataset("csv", tmp_path / "halves" / name, s, allow_outside_root=True)
                for s in ("train", "val", "test")}
        assert _paths(sets["val"]) == want_val
        assert _paths(sets["test"]) == want_test
        for s in sets.values():
            assert s.classes == carve.train.classes
        halves[name] = _paths(sets["train"])
        # Labels travel with their images.
        src_targets = {p: t for p, t in zip(_paths(create_dataset("csv", src, "train")),
                                            create_dataset("csv", src, "train").targets)}
        np.testing.assert_array_equal(np.stack([src_targets[p] for p in halves[name]]), sets["train"].targets)
    assert not set(halves["A"]) & set(halves["B"])
    assert sorted(halves["A"] + halves["B"]) == sorted(want_train)
    assert not set(want_train) & set(want_val)


def test_another_split_seed_gives_other_halves(tmp_path):
    src = write_csv_quadrants(tmp_path / "src", ["a", "b"], n_train=30, n_val=1, n_test=4)
    (src / "val.csv").unlink()
    teacher_overlap.write_halves(src, 0.2, split_seed=1, out=tmp_path / "h1")
    teacher_overlap.write_halves(src, 0.2, split_seed=2, out=tmp_path / "h2")
    a1 = (tmp_path / "h1" / "A" / "train.csv").read_text()
    a2 = (tmp_path / "h2" / "A" / "train.csv").read_text()
    assert a1 != a2
    assert (tmp_path / "h1" / "A" / "val.csv").read_text() == (tmp_path / "h2" / "A" / "val.csv").read_text()


def test_welch_interval_matches_the_textbook_formula():
    from scipy import stats

    a = np.array([15.29, 15.26, 15.37, 15.70, 15.39])
    b = np.array([14.02, 13.70, 14.77, 15.54, 15.01])
    d, low, high = teacher_overlap.welch(a, b)
    va, vb = a.var(ddof=1) / 5, b.var(ddof=1) / 5
    df = (va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 4)
    half = stats.t.ppf(0.975, np.floor(df)) * np.sqrt(va + vb)
    assert abs(d - (a.mean() - b.mean())) < 1e-12
    assert abs(low - (d - half)) < 1e-9 and abs(high - (d + half)) < 1e-9

"""A rerun with equal settings reproduces a run bit for bit (on the CPU, at a fixed thread count)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import mlkd
from mlkd.engine.checkpoint import load_checkpoint
from mlkd.engine.evaluate import load_scores
from synthetic import write_fashion_like
from tiny_runs import tiny_run

# Keys of metrics.json that are results (not timings or paths).
RESULT_KEYS = ("mAP", "topk_OF1", "topk_CF1", "thr_OF1", "thr_CF1", "thr_OP", "thr_CP", "AP_per_label",
               "best_val_mAP", "best_epoch")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fashion_like(tmp_path_factory.mktemp("fashion_repro"), n_train=160, n_test=60)


def _config(data_root, output, **overrides):
    # A fixed thread count: oneDNN/OpenMP reductions depend on it, so the automatic choice (which follows
    # the machine's load) would change the last bits between runs.
    return tiny_run(data_root, output, mosaics=96, **{"threads": 1, **overrides})


def _assert_identical(a, b):
    """Two run folders hold the same results: metrics, per-image test scores and best weights, bit for bit."""
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for key in RESULT_KEYS:
        assert ma[key] == mb[key], key
    for x, y in zip(load_scores(a / "test_scores.npz"), load_scores(b / "test_scores.npz")):
        np.testing.assert_array_equal(x, y)
    wa, wb = (load_checkpoint(d / "best.pt")["model"] for d in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def teacher(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("repro") / "teacher"
    mlkd.train(**_config(data_root, out, epochs=2))
    return out / "best.pt"


def test_two_identical_trainings_are_bit_identical(data_root, tmp_path):
    for name in ("a", "b"):
        mlkd.train(**_config(data_root, tmp_path / name, seed=3))
    _assert_identical(tmp_path / "a", tmp_path / "b")


def test_two_identical_cached_distillations_are_bit_identical(teacher, data_root, tmp_path):
    # Each run reads its own copy of the teacher, so each fills a cache of its own.
    for name in ("a", "b"):
        copy = tmp_path / f"teacher_{name}.pt"
        shutil.copy(teacher, copy)
        mlkd.distill(**_config(data_root, tmp_path / name, teacher=str(copy), method="l2d", cache_teacher=True,
                               lambdas={"led": 0.01}, seed=1))
    _assert_identical(tmp_path / "a", tmp_path / "b")


def test_a_cached_run_does_not_depend_on_who_filled_the_cache(teacher, data_root, tmp_path):
    # Seed 1 alone fills the teacher cache itself; after seed 0 it reads what seed 0's batches filled.
    # The cached teacher outputs must be the same either way (they are filled in a fixed order).
    alone, after = tmp_path / "teacher_alone.pt", tmp_path / "teacher_after.pt"
    shutil.copy(teacher, alone)
    shutil.copy(teacher, after)
    common = dict(method="pkt", cache_teacher=True)
    mlkd.distill(**_config(data_root, tmp_path / "alone", teacher=str(alone), seed=1, **common))
    mlkd.distill(**_config(data_root, tmp_path / "first", teacher=str(after), seed=0, **common))
    mlkd.distill(**_config(data_root, tmp_path / "after", teacher=str(after), seed=1, **common))
    _assert_identical(tmp_path / "alone", tmp_path / "after")

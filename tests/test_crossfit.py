"""Cross-fitted teachers: folds, fold-pure batches, fold teachers' runs and the students they teach."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import mlkd
from mlkd.config import make_config
from mlkd.data import build_datasets
from mlkd.data.folds import FoldBatchSampler, fold_assignment, fold_indices
from mlkd.data.loaders import build_loader, drop_last_batch
from mlkd.engine import trainer as trainer_module
from mlkd.engine.checkpoint import load_checkpoint, model_from_checkpoint
from mlkd.engine.crossfit import FoldTeachers
from mlkd.engine.teacher import run_teacher
from synthetic import write_fashion_like
from tiny_runs import interrupted_in_epoch, tiny_run

HEAD = {"embed_dim": 16, "num_heads": 2, "ffn_dim": 16}
MOSAICS = 96  # 86 training images after the 10 % validation carve: folds of 43


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fashion_like(tmp_path_factory.mktemp("fashion"), n_train=120, n_test=40)


def run(data_root, output, **overrides):
    return tiny_run(data_root, output, MOSAICS, head=HEAD, threads=1, **overrides)


@pytest.fixture(scope="module")
def fold_teachers(data_root, tmp_path_factory):
    """Two tiny teachers, each trained without one half of the training carve: ``best.pt`` paths, fold order."""
    out = tmp_path_factory.mktemp("folds")
    return [str(mlkd.train(**run(data_root, out / f"fold{k}", hold_out_fold=[k, 2])).output / "best.pt")
            for k in range(2)]


# ---- folds and batches ---------------------------------------------------------------------------------

def test_folds_are_balanced_fixed_and_depend_on_the_size_only():
    for size, k in ((10, 2), (11, 3), (1000, 5)):
        fold = fold_assignment(size, k)
        counts = torch.bincount(fold, minlength=k)
        assert counts.max() - counts.min() <= 1 and counts.sum() == size
        assert torch.equal(fold, fold_assignment(size, k))
    assert not torch.equal(fold_assignment(100, 2), torch.arange(100) % 2)  # shuffled, not alternating
    with pytest.raises(ValueError, match="at least 2 folds"):
        fold_assignment(10, 1)
    with pytest.raises(ValueError, match="cannot be cut into 3 folds"):
        fold_assignment(2, 3)


def test_every_batch_holds_one_fold_and_an_epoch_visits_each_image_once():
    fold = fold_assignment(203, 3)
    sampler = FoldBatchSampler(fold, 16, seed=4, drop_last=lambda n: drop_last_batch(n, 16))
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        for batch in batches:
            assert len({int(fold[i]) for i in batch}) == 1
        seen = [i for b in batches for i in b]
        assert len(seen) == len(set(seen))
        # Per fold, the images left out are fewer than one batch (its dropped remainder).
        for k in range(3):
            members = set(fold_indices(fold, k))
            assert 0 <= len(members - set(seen)) < 16
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first  # a new order every epoch
    sampler.set_epoch(0)
    assert list(sampler) == first  # and the same order for the same (seed, epoch): what --resume needs
    assert [int(fold[b[0]]) for b in first] != sorted(int(fold[b[0]]) for b in first)  # folds interleave


def test_ranks_share_the_batches_without_overlap_and_take_equal_steps():
    fold = fold_assignment(150, 2)
    keep = lambda n: False  # noqa: E731  every fold keeps its last, short batch
    whole = FoldBatchSampler(fold, 8, seed=1, drop_last=keep, rank=0, world_size=1)
    ranks = [FoldBatchSampler(fold, 8, seed=1, drop_last=keep, rank=r, world_size=3) for r in range(3)]
    shares = [list(s) for s in ranks]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == len(whole) // 3
    flat = [tuple(b) for s in shares for b in s]
    assert len(flat) == len(set(flat)) and set(flat) <= {tuple(b) for b in whole}
    assert ranks[1].indices() == [i for b in shares[1] for i in b]


def test_a_loader_over_folds_keeps_batches_within_a_fold(data_root):
    fold = fold_assignment(40, 2)
    data = torch.utils.data.TensorDataset(torch.arange(40))
    loader = build_loader(data, 8, train=True, folds=fold)
    for (batch,) in loader:
        assert len({int(fold[i]) for i in batch}) == 1
    with pytest.raises(ValueError, match="training loaders"):
        build_loader(data, 8, train=False, folds=fold)
    with pytest.raises(ValueError, match="the data set has 41"):
        build_loader(torch.utils.data.TensorDataset(torch.arange(41)), 8, train=True, folds=fold)


# ---- the fold teachers' runs ----------------------------------------------------------------------------

def test_holding_out_a_fold_removes_it_from_training_only(data_root, tmp_path):
    whole = build_datasets(make_config(run(data_root, tmp_path / "w")))
    for k in range(2):
        held = build_datasets(make_config(run(data_root, tmp_path / "h", hold_out_fold=[k, 2])))
        fold = fold_assignment(len(whole.train), 2)
        kept = [whole.train.indices[i] for i in range(len(whole.train)) if fold[i] != k]
        assert [held.train.dataset.indices[i] for i in held.train.indices] == kept
        assert list(held.val.indices) == list(whole.val.indices) and len(held.test) == len(whole.test)
        assert held.train.classes == whole.train.classes


def test_fold_teachers_record_their_fold_and_the_training_set(fold_teachers):
    records = [load_checkpoint(p)["folds"] for p in fold_teachers]
    assert [r["held_out"] for r in records] == [0, 1] and {r["count"] for r in records} == {2}
    assert records[0]["train_images"] == records[1]["train_images"] == 86
    assert records[0]["train_sha256"] == records[1]["train_sha256"]


def test_the_training_set_fingerprint_does_not_depend_on_where_the_data_lies(tmp_path):
    # Fold teachers record it; the same images read from another place (a moved folder, a path through
    # "..", as the accuracy suite's copies of the repository read ../shared) must be recognised.
    import shutil

    from mlkd.data.splits import data_fingerprint
    from synthetic import write_csv_quadrants

    root = write_csv_quadrants(tmp_path / "a" / "set", ["w", "x", "y", "z"], n_train=20)
    shutil.copytree(root, tmp_path / "moved")
    (tmp_path / "b").mkdir()

    def fingerprint(data_root, **changes):
        settings = {"dataset": "csv", "data_root": str(data_root), "val_split": None, "val_fraction": 0.25,
                    "img_size": 16}
        cfg = make_config(**{**settings, **changes})
        return data_fingerprint(build_datasets(cfg).train)

    here = fingerprint(root)
    assert fingerprint(tmp_path / "moved") == here
    assert fingerprint(tmp_path / "b" / ".." / "a" / "set") == here
    assert fingerprint(root, img_size=8) == here  # the images' content at a resolution is not part of it
    assert fingerprint(root, val_fraction=0.5) != here  # another carve: other images
    lines = (root / "train.csv").read_text().splitlines()
    (root / "train.csv").write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    assert fingerprint(root) != here  # the same files in another order: other folds


# ---- students of fold teachers --------------------------------------------------------------------------

def test_each_image_is_taught_by_the_teacher_that_never_saw_it(data_root, fold_teachers, tmp_path, monkeypatch):
    """The teacher outputs a student trains on equal, image by image, a direct forward pass of the
    checkpoint that held out the image's fold; and every batch is taught by one teacher."""
    seen = []
    real = trainer_module.teacher_outputs

    def record(teacher, norm, images, index, view, cache, device):
        out = real(teacher, norm, images, index, view, cache, device)
        seen.append((images.clone(), index.clone(), out.logits.clone(), out.label_embeddings.clone()))
        return out

    monkeypatch.setattr(trainer_module, "teacher_outputs", record)
    result = mlkd.distill(method="l2d", **run(data_root, tmp_path / "s", fold_teachers=list(reversed(fold_teachers))))
    models = [model_from_checkpoint(p)[0] for p in fold_teachers]
    fold = fold_assignment(86, 2)
    assert seen
    for images, index, logits, embeddings in seen:
        k = {int(fold[i]) for i in index}
        assert len(k) == 1
        with torch.no_grad():
            ref = models[k.pop()](images)
        torch.testing.assert_close(logits, ref.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(embeddings, ref.label_embeddings, rtol=1e-5, atol=1e-5)
    assert result.metrics["teacher"]["kind"] == "mlkd folds"
    assert len(result.metrics["teacher"]["fold_teachers"]) == 2


def test_a_mixed_batch_is_answered_image_by_image(fold_teachers):
    models = [model_from_checkpoint(p)[0] for p in fold_teachers]
    fold = torch.tensor([0, 1, 1, 0, 1])
    teachers = FoldTeachers(models, fold, run_teacher)
    images = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        out = teachers(images, torch.arange(5))
        for i in range(5):
            ref = models[int(fold[i])](images[i:i + 1])
            torch.testing.assert_close(out.logits[i:i + 1], ref.logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.label_embeddings[i:i + 1], ref.label_embeddings, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="index"):
        teachers(images)


@pytest.mark.parametrize("method", ["pkt", "l2d"])
def test_cached_fold_teachers_train_as_uncached(data_root, fold_teachers, tmp_path, method):
    from mlkd.engine import teacher_cache

    teacher_cache._POOL.clear()
    plain = mlkd.distill(method=method, **run(data_root, tmp_path / "plain", fold_teachers=fold_teachers))
    cached = mlkd.distill(method=method, **run(data_root, tmp_path / "cached", fold_teachers=fold_teachers,
                                               cache_teacher=True))
    assert cached.metrics["mAP"] == plain.metrics["mAP"]


def test_a_resumed_student_of_fold_teachers_equals_an_uninterrupted_one(data_root, fold_teachers, tmp_path,
                                                                         monkeypatch):
    common = dict(fold_teachers=fold_teachers, epochs=3, augment=True)
    straight = mlkd.distill(method="l2d", **run(data_root, tmp_path / "straight", **common))
    with interrupted_in_epoch(monkeypatch, 2):
        mlkd.distill(method="l2d", **run(data_root, tmp_path / "killed", **common))
    resumed = mlkd.distill(method="l2d", **run(data_root, tmp_path / "killed", resume=True, **common))
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.metrics["mAP"] == straight.metrics["mAP"]


# ---- refusals -------------------------------------------------------------------------------------------

def test_teachers_that_do_not_cover_the_folds_are_refused(data_root, fold_teachers, tmp_path):
    whole = str(mlkd.train(**run(data_root, tmp_path / "whole", epochs=1)).output / "best.pt")
    with pytest.raises(ValueError, match="hold-out-fold"):
        mlkd.distill(method="kd", **run(data_root, tmp_path / "a", fold_teachers=[fold_teachers[0], whole]))
    other0 = str(mlkd.train(**run(data_root, tmp_path / "o0", epochs=1, hold_out_fold=[0, 2])).output / "best.pt")
    with pytest.raises(ValueError, match="both held out fold 0"):
        mlkd.distill(method="kd", **run(data_root, tmp_path / "b", fold_teachers=[fold_teachers[0], other0]))
    three = str(mlkd.train(**run(data_root, tmp_path / "t3", epochs=1, hold_out_fold=[2, 3])).output / "best.pt")
    with pytest.raises(ValueError, match="of 3, but 2 teachers"):
        mlkd.distill(method="kd", **run(data_root, tmp_path / "c", fold_teachers=[fold_teachers[0], three]))
    # A student whose training carve differs (another validation share) would meet teachers on their own images.
    with pytest.raises(ValueError, match="differently carved"):
        mlkd.distill(method="kd", **run(data_root, tmp_path / "d", fold_teachers=fold_teachers, val_fraction=0.2))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        mlkd.distill(method="kd", **run(data_root, tmp_path / "e", fold_teachers=[fold_teachers[0], "missing.pt"]))


@pytest.mark.parametrize("values, message", [
    ({"fold_teachers": ["a.pt"]}, "at least 2"),
    ({"fold_teachers": ["a.pt", "a.pt"]}, "twice"),
    ({"fold_teachers": ["a.pt", "b.pt"], "teacher": "c.pt"}, "replaces the teacher"),
    ({"fold_teachers": ["a.pt", "b.pt"], "hold_out_fold": [0, 2]}, "drop one of them"),
    ({"hold_out_fold": [2, 2]}, r"0 <= k < K"),
    ({"hold_out_fold": [0]}, r"\[k, K\]"),
])
def test_bad_fold_settings_name_the_fix(values, message):
    with pytest.raises(ValueError, match=message):
        make_config(**values)


def test_cli_parses_and_checks_the_hold_out_fold(tmp_path):
    from mlkd.cli import build_parser

    args = build_parser().parse_args(["train", "--hold-out-fold", "1/3"])
    assert args.hold_out_fold == [1, 3]
    bad = subprocess.run([sys.executable, "-m", "mlkd", "train", "--hold-out-fold", "3/3"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "0 <= K < N" in bad.stderr


def test_cli_takes_fold_teachers_for_distill_and_bench():
    from mlkd.cli import build_parser

    for command in ("distill", "bench"):
        args = build_parser().parse_args([command, "--fold-teachers", "a.pt", "b.pt"])
        assert args.fold_teachers == ["a.pt", "b.pt"]


@pytest.mark.slow
def test_torchrun_students_of_fold_teachers_cached_or_not(data_root, tmp_path):
    """Two processes deal the fold-pure batches out and fill the teacher cache from both fold teachers: the run
    finishes, and with the cache it trains as without it."""
    flags = ["--dataset", "fashion_mosaic", "--data-root", str(data_root), "--dataset-option", f"num_mosaics={MOSAICS}",
             "--img-size", "32", "--batch-size", "8", "--epochs", "1", "--model", "tiny_cnn", "--threads", "1",
             *[f for k, v in HEAD.items() for f in ("--model-option", f"{k}={v}")], "--no-augment", "--device", "cpu",
             "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    teachers = []
    for k in range(2):
        out = tmp_path / f"t{k}"
        r = subprocess.run([sys.executable, "-m", "mlkd", "train", *flags, "--hold-out-fold", f"{k}/2", "--output",
                            str(out)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        teachers.append(str(out / "best.pt"))
    results = {}
    for label, extra in (("plain", []), ("cached", ["--cache-teacher"])):
        out = tmp_path / label
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                            "mlkd", "distill", *flags, "--method", "l2d", "--fold-teachers", *teachers, *extra,
                            "--output", str(out)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        results[label] = json.loads((out / "metrics.json").read_text())
    assert results["plain"]["teacher"]["kind"] == "mlkd folds"
    assert results["cached"]["mAP"] == results["plain"]["mAP"]

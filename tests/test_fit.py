"""How closely a run without a teacher fits its training images (mlkd/engine/fit.py), recorded by `mlkd.train`,
reported by the distillation runs it teaches: against a carve and folds rebuilt here and sklearn's average
precision."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from torch.utils.data import Subset

import mlkd
from mlkd.cli import format_metrics
from mlkd.config import make_config
from mlkd.data import build_datasets, build_transforms, create_dataset
from mlkd.engine.checkpoint import load_checkpoint, model_from_checkpoint
from mlkd.engine.evaluate import ModelInput, eval_loader, predict
from mlkd.engine.fit import fit_lines, training_fit
from synthetic import write_fashion_like
from tiny_runs import tiny_run

MOSAICS = 80  # 60 training images after the 25 % carve, 20 validation


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fashion_like(tmp_path_factory.mktemp("fashion"), n_train=200, n_test=40)


def run(data_root, output, **overrides):
    return tiny_run(data_root, output, MOSAICS, **{"val_fraction": 0.25, "threads": 1, **overrides})


@pytest.fixture(scope="module")
def teacher(data_root, tmp_path_factory):
    """A tiny teacher trained on the whole carve: its run folder."""
    return mlkd.train(**run(data_root, tmp_path_factory.mktemp("teacher") / "t", epochs=3)).output


def carve(data_root, keep=None):
    """The 60 training images of the 25 % carve, rebuilt the plain way (seed-0 permutation, first quarter out),
    read at 32 px without augmentation; ``keep``: positions within the carve to keep."""
    full = create_dataset("fashion_mosaic", str(data_root), "train", transform=build_transforms(32, train=False),
                          num_mosaics=MOSAICS)
    perm = torch.randperm(MOSAICS, generator=torch.Generator().manual_seed(0)).tolist()
    indices = sorted(perm[20:])
    if keep is not None:
        indices = [indices[i] for i in keep]
    return Subset(full, indices)


def reference_map(checkpoint, data) -> float:
    """sklearn's mAP (points, over labels with a positive) of ``checkpoint`` on ``data``."""
    state = load_checkpoint(checkpoint)
    model, _ = model_from_checkpoint(state, source=checkpoint)
    cpu = torch.device("cpu")
    scores, targets = predict(model, eval_loader(data, 16, 0, cpu), cpu, ModelInput.from_stats(state.get("input_norm")))
    targets = np.asarray(targets)
    present = np.flatnonzero(targets.sum(0) > 0)
    return 100 * float(np.mean([average_precision_score(targets[:, j], scores[:, j]) for j in present]))


def test_train_records_the_best_checkpoints_map_on_its_training_images(data_root, teacher):
    metrics = json.loads((teacher / "metrics.json").read_text())
    fit = metrics["fit"]
    assert fit["train_images"] == 60 and fit["scored"] == 60
    assert abs(fit["train_mAP"] - reference_map(teacher / "best.pt", carve(data_root))) < 1e-6
    assert load_checkpoint(teacher / "best.pt")["fit"] == fit  # what a student's run reads
    assert "training images: mAP" in format_metrics(metrics, "test metrics")


def test_a_large_training_set_is_scored_on_a_fixed_draw(data_root, teacher):
    state = load_checkpoint(teacher / "best.pt")
    model, _ = model_from_checkpoint(state, source=teacher / "best.pt")
    cfg = make_config(**run(data_root, teacher, epochs=3))
    cpu = torch.device("cpu")
    train = build_datasets(make_config(cfg, augment=True)).train  # the view read for scoring has no augmentation
    fit = training_fit(model, train, cfg, cpu, ModelInput.from_stats(state.get("input_norm")), limit=25)
    assert fit["scored"] == 25 and fit["train_images"] == 60
    pick = sorted(torch.randperm(60, generator=torch.Generator().manual_seed(0))[:25].tolist())
    assert abs(fit["train_mAP"] - reference_map(teacher / "best.pt", carve(data_root, pick))) < 1e-6
    assert training_fit(model, train, cfg, cpu, ModelInput.from_stats(state.get("input_norm")), limit=25) == fit


def test_a_fold_teacher_also_scores_the_fold_it_never_saw(data_root, tmp_path):
    out = mlkd.train(**run(data_root, tmp_path / "f1", epochs=2, hold_out_fold=[1, 2])).output
    fit = load_checkpoint(out / "best.pt")["fit"]
    fold = torch.randperm(60, generator=torch.Generator().manual_seed(0x0F01D5))  # the folds' draw (FOLD_SEED)
    assignment = torch.empty(60, dtype=torch.long)
    assignment[fold] = torch.arange(60) % 2
    held = (assignment == 1).nonzero().flatten().tolist()
    kept = (assignment == 0).nonzero().flatten().tolist()
    assert fit["train_images"] == 30 and fit["held_out_images"] == 30
    assert abs(fit["held_out_mAP"] - reference_map(out / "best.pt", carve(data_root, held))) < 1e-6
    assert abs(fit["train_mAP"] - reference_map(out / "best.pt", carve(data_root, kept))) < 1e-6


def test_a_distillation_run_reports_its_teachers_fit_and_whether_it_trains_on_the_same_images(
        data_root, teacher, tmp_path, caplog):
    best = load_checkpoint(teacher / "best.pt")
    with caplog.at_level(logging.INFO, logger="mlkd"):
        same = mlkd.distill(**run(data_root, tmp_path / "s", epochs=1, method="kd", teacher=str(teacher / "best.pt"),
                                  quiet=False)).metrics["teacher"]["fit"]
    assert same == {"val_mAP": 100 * best["best_map"], "train_mAP": best["fit"]["train_mAP"], "train_images": 60,
                    "same_images": True}
    assert "this student trains on those same images" in caplog.text
    # Another carve (a 20 % validation split): other training images, so no claim about them.
    other = mlkd.distill(**run(data_root, tmp_path / "o", epochs=1, method="kd", teacher=str(teacher / "best.pt"),
                               val_fraction=0.2)).metrics["teacher"]["fit"]
    assert other["same_images"] is False and other["train_mAP"] == same["train_mAP"]


def test_fit_lines_say_nothing_without_a_record_and_name_each_fold_teacher():
    assert fit_lines(None) == []
    one = {"val_mAP": 21.89, "train_mAP": 53.79, "train_images": 4186, "same_images": False}
    assert fit_lines(one) == ["            fit: 53.79 mAP on its 4,186 training images, 21.89 on validation"]
    folds = [{**one, "held_out_mAP": 21.2}, {**one, "held_out_mAP": 20.6, "val_mAP": 20.5}]
    text = fit_lines(None, folds)[0]
    assert "21.20 / 20.60 mAP on the fold each teaches" in text and "21.89 / 20.50 on validation" in text
    assert "not recorded" in fit_lines(None, [folds[0], None])[0]

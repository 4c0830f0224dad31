"""benchmarks/teacher_fit.py: a teacher's mAP and BCE on its training carve and on validation, against a
carve rebuilt here and sklearn's average precision."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch.utils.data import Subset

import mlkd
from mlkd.config import make_config
from mlkd.data import build_transforms, create_dataset
from mlkd.engine.checkpoint import load_checkpoint, model_from_checkpoint
from mlkd.engine.evaluate import ModelInput, eval_loader, predict
from synthetic import write_fashion_like
from tiny_runs import tiny_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import teacher_fit  # noqa: E402


def test_fit_matches_a_carve_rebuilt_here_and_sklearn(tmp_path):
    data = write_fashion_like(tmp_path / "fashion", n_train=200, n_test=40)
    values = tiny_run(data, tmp_path / "teacher", mosaics=80, epochs=3, val_fraction=0.25)
    mlkd.train(**values)
    ckpt = tmp_path / "teacher" / "best.pt"
    fit = teacher_fit.fit_of(ckpt, make_config(**values))
    assert fit["train"]["images"] == 60 and fit["val"]["images"] == 20

    # The training carve, rebuilt the plain way: seed-0 permutation, the first quarter held out.
    full = create_dataset("fashion_mosaic", str(data), "train", transform=build_transforms(32, train=False),
                          num_mosaics=80)
    perm = torch.randperm(80, generator=torch.Generator().manual_seed(0)).tolist()
    carve = Subset(full, sorted(perm[20:]))
    state = load_checkpoint(ckpt)
    model, _ = model_from_checkpoint(state, source=ckpt)
    scores, targets = predict(model, eval_loader(carve, 16, 0, torch.device("cpu")), torch.device("cpu"),
                              ModelInput.from_stats(state.get("input_norm")))
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    present = targets.sum(0) > 0
    want_map = 100 * np.mean([average_precision_score(targets[:, j], scores[:, j]) for j in np.flatnonzero(present)])
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    want_bce = float(np.mean(-(targets * np.log(p) + (1 - targets) * np.log(1 - p))))
    assert abs(fit["train"]["mAP"] - want_map) < 1e-6
    assert abs(fit["train"]["bce"] - want_bce) < 1e-9
    # Validation as `mlkd eval --split val` scores it.
    assert abs(fit["val"]["mAP"] - 100 * mlkd.evaluate(ckpt, split="val")["mAP"]) < 1e-6

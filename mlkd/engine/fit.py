"""How closely a trained model has fitted its training images, and what that says about it as a teacher.

A network returns the images it was trained on closer to their labels than it can do for new images. When such a
model teaches a student on those very images, its outputs there carry mostly what the labels already say: the
movie-posters teacher of the accuracy suite scores 53.8 mAP on its training posters and 21.9 on new ones, and no
distiller gained from it; taught by a teacher that never saw them, the same students gained about a point
(docs/results.md, "why the posters teacher does not pay"). The validation mAP alone does not show this.

So a run without a teacher (``mlkd train``: how teachers are trained) ends by scoring its best checkpoint on its own
training images (`training_fit`); the record goes into best.pt and metrics.json under ``"fit"``. A distillation
run from that checkpoint reports it next to the teacher's validation mAP and says whether the student trains on the
same images (`teacher_fit_facts`). A cross-fitted teacher (``--hold-out-fold k/K``) also scores the fold it held
out: the images it will teach, which it never saw.

No threshold turns the numbers into a verdict: by the share of the room above its validation mAP, the suite's
`clutter` teacher has fitted its scenes as much as the posters teacher its posters, and distillation pays there.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from mlkd.config import RunConfig
from mlkd.data.folds import fold_assignment, fold_indices
from mlkd.data.splits import SPLIT_SEED, data_fingerprint
from mlkd.data.transforms import build_transforms
from mlkd.engine.evaluate import ModelInput, compute_metrics, eval_loader, predict

# At most this many training images are scored (a fixed draw): the estimate of a mAP on 10,000 images is as
# good as the validation mAP it is read against, and the pass stays a fraction of one epoch on large sets.
FIT_IMAGES = 10_000


def training_fit(model: nn.Module, train_set: Dataset, cfg: RunConfig, device: torch.device, norm: ModelInput,
                 amp_dtype: torch.dtype | None = None, limit: int = FIT_IMAGES) -> dict[str, Any]:
    """Score ``model`` on the training images of its run, read as evaluation reads them.

    Args:
        model: the trained model (its best checkpoint's weights), on ``device``.
        train_set: the run's training set (`mlkd.data.build_datasets`; with ``cfg.hold_out_fold``, the one
            without the fold). Its images are read again without augmentation at ``cfg.img_size``
            (`evaluation_view`); nothing is re-read from the data set's files but the images.
        cfg: the run's configuration (image size, batch size, workers, threshold, held-out fold).
        norm: the model's `ModelInput`.
        limit: score at most this many training images, drawn with a fixed seed.

    Returns:
        ``train_mAP`` (points), ``train_images`` (the training set's size), ``scored`` (how many were scored)
        and ``train_sha256`` (`mlkd.data.splits.data_fingerprint` of the training set, which a student's run
        compares with its own). With ``cfg.hold_out_fold``, also ``held_out_mAP`` and ``held_out_images``: the
        fold the model never saw.
    """
    out: dict[str, Any] = {"train_images": len(train_set), "train_sha256": data_fingerprint(train_set)}
    train = evaluation_view(train_set, cfg.img_size)
    out["train_mAP"], out["scored"] = _score(model, train, cfg, device, norm, amp_dtype, limit)
    if cfg.hold_out_fold is not None:
        whole = evaluation_view(train_set.held_out_from, cfg.img_size)
        k, folds = cfg.hold_out_fold
        held = Subset(whole, fold_indices(fold_assignment(len(whole), folds), k))
        held.classes = list(whole.classes)
        out["held_out_mAP"], out["held_out_images"] = _score(model, held, cfg, device, norm, amp_dtype, limit)
    return out


def evaluation_view(data: Dataset, img_size: int) -> Dataset:
    """``data`` (an mlkd data set, or `Subset` of one, nested or not) reading its images as evaluation does:
    the evaluation transform at ``img_size``. The data set itself is shallow-copied (its image list and labels
    are shared, not read again); the subsets keep their indices and ``classes``."""
    if isinstance(data, Subset):
        view = Subset(evaluation_view(data.dataset, img_size), data.indices)
        if hasattr(data, "classes"):
            view.classes = data.classes
        return view
    view = copy.copy(data)
    view.transform = build_transforms(img_size, train=False)
    return view


def _score(model: nn.Module, data: Dataset, cfg: RunConfig, device: torch.device, norm: ModelInput,
           amp_dtype: torch.dtype | None, limit: int) -> tuple[float, int]:
    """mAP (points) of ``model`` on ``data``, or on ``limit`` of its images drawn with a fixed seed; and the count."""
    classes = list(data.classes)
    if len(data) > limit:
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(SPLIT_SEED))[:limit]
        data = Subset(data, sorted(pick.tolist()))
    scores, targets = predict(model, eval_loader(data, cfg.batch_size, cfg.workers, device), device, norm, amp_dtype)
    return 100 * float(compute_metrics(scores, targets, cfg.threshold, classes)["mAP"]), len(data)


def teacher_fit_facts(state: dict[str, Any], train_set: Dataset) -> dict[str, Any] | None:
    """What a distillation run reports of its teacher's fit: from the teacher checkpoint ``state``.

    Args:
        state: the teacher's best.pt (`mlkd.engine.checkpoint.load_checkpoint`).
        train_set: the student's training set.

    Returns:
        None when the checkpoint has no ``"fit"`` record (trained elsewhere, or before mlkd recorded it); else
        ``val_mAP`` (the best epoch's validation mAP, points), the record's ``train_mAP``, ``train_images`` and
        ``held_out_mAP`` (fold teachers), and ``same_images``: whether the student trains on exactly the
        teacher's training set.
    """
    fit = state.get("fit")
    if not fit:
        return None
    best = state.get("best_map")
    facts = {"val_mAP": None if best is None else 100 * float(best), "train_mAP": fit["train_mAP"],
             "train_images": fit["train_images"],
             "same_images": fit["train_sha256"] == data_fingerprint(train_set)}
    if "held_out_mAP" in fit:
        facts["held_out_mAP"] = fit["held_out_mAP"]
    return facts


def fit_lines(fit: dict[str, Any] | None, folds: list[dict[str, Any] | None] | None = None) -> list[str]:
    """The run summary's lines about the teacher's fit (`teacher_fit_facts`; ``folds``: one per fold teacher)."""
    if folds:
        if not all(folds):
            return ["            fit: not recorded in every fold teacher's checkpoint"]
        held = " / ".join(f"{f['held_out_mAP']:.2f}" for f in folds)
        val = " / ".join(f"{f['val_mAP']:.2f}" for f in folds)
        train = " / ".join(f"{f['train_mAP']:.2f}" for f in folds)
        return [f"            fit: the fold teachers score {held} mAP on the fold each teaches (never seen), "
                f"{val} on validation, {train} on their own training images"]
    if fit is None:
        return []
    text = (f"            fit: {fit['train_mAP']:.2f} mAP on its {fit['train_images']:,} training images, "
            + (f"{fit['val_mAP']:.2f} on validation" if fit["val_mAP"] is not None else "validation not recorded"))
    lines = [text]
    if fit["same_images"]:
        lines.append("            this student trains on those same images: where the first number is far above the "
                     "second, the teacher's outputs there say mostly what their labels say, and cross-fitted teachers "
                     "(--fold-teachers) may teach more (docs/method.md, \"Cross-fitted teachers\")")
    return lines

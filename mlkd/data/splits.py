"""A run's three data sets: training, validation and test, with validation carved from training when the
run names no validation split.

The pre-flight checks (mlkd/engine/preflight.py) build them, check them and hand them to the trainer,
so a run reads its data once; evaluation (``mlkd eval --split val``) rebuilds the same carve.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from mlkd.data.folds import fold_assignment
from mlkd.data.registry import create_dataset
from mlkd.data.transforms import build_transforms

if TYPE_CHECKING:
    from mlkd.config import RunConfig

# The validation split carved from the training set uses a fixed seed, independent of the run's
# seed, so that the teacher and every student of a comparison select on the same held-out images.
SPLIT_SEED = 0


class Splits(NamedTuple):
    """The training, validation and test sets of a run (a tuple: ``train, val, test = splits``)."""

    train: Dataset
    val: Dataset
    test: Dataset


def build_datasets(cfg: RunConfig) -> Splits:
    """Training, validation and test sets; validation is carved from training when there is no split.

    Args:
        cfg: the run's data settings (dataset, data_root, dataset_options, the split names,
            val_fraction, hold_out_fold, img_size, read_size and augment).

    Returns:
        The three sets; each has a ``classes`` list, the same in all three. With ``hold_out_fold`` the
        training set lacks that fold (`hold_out`); validation and test are those of the whole training set.
        The training set uses the augmenting transform when ``cfg.augment``, the others the evaluation
        transform. Training images are
        ``cfg.read_size`` px when it is set (each model resizes its copy), the others ``cfg.img_size``.

    Raises:
        ValueError: a training split too small to carve a validation set from, or a test split whose
            classes differ from the training split's.
    """
    train_tf = build_transforms(cfg.read_size or cfg.img_size, train=cfg.augment)
    eval_tf = build_transforms(cfg.img_size, train=False)
    make = lambda split, tf: create_dataset(cfg.dataset, cfg.data_root, split, transform=tf, **cfg.dataset_options)  # noqa: E731
    train_full = make(cfg.train_split, train_tf)
    test_set = make(cfg.test_split, eval_tf)
    if cfg.val_split is not None:
        val_set = make(cfg.val_split, eval_tf)
        train_set = train_full
    else:
        n = len(train_full)
        n_val = max(1, int(round(cfg.val_fraction * n)))
        if n - n_val < 1:
            raise ValueError(f"the training split has {n} images: too few to carve a validation set "
                             f"of fraction {cfg.val_fraction}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
        train_set = _with_classes(Subset(train_full, sorted(perm[n_val:])), train_full.classes)
        val_set = _with_classes(Subset(make(cfg.train_split, eval_tf), sorted(perm[:n_val])), train_full.classes)
    if cfg.hold_out_fold is not None:
        train_set = hold_out(train_set, *cfg.hold_out_fold)
    if list(test_set.classes) != list(train_set.classes):
        raise ValueError(f"the {cfg.test_split!r} split has classes {test_set.classes}, "
                         f"but {cfg.train_split!r} has {train_set.classes}")
    return Splits(train_set, val_set, test_set)


def hold_out(train_set: Dataset, k: int, folds: int) -> Subset:
    """``train_set`` without fold ``k`` of ``folds`` (`mlkd.data.folds.fold_assignment`): a cross-fitted
    teacher's training images. The whole set stays reachable as the subset's ``held_out_from`` attribute, so
    that the teacher's checkpoint can record which training set its folds cut."""
    fold = fold_assignment(len(train_set), folds)
    kept = (fold != k).nonzero().flatten().tolist()
    subset = _with_classes(Subset(train_set, kept), train_set.classes)
    subset.held_out_from = train_set
    return subset


def training_image_side(cfg: RunConfig, samples: int = 16) -> int:
    """The side the training images have before any resizing: the median short side of ``samples`` of them.

    A synthetic set (``fashion_mosaic``: 56 px, ``fashion_scenes``: its canvas) has one size; photographs vary,
    and the median of a few spread over the split is what most of them hold. Decodes ``samples`` images.

    Args:
        cfg: the run's data settings (dataset, data_root, dataset_options, train_split).
        samples: how many images to look at, spread evenly over the split.

    Raises:
        ValueError: the training split holds no image.
    """
    data = create_dataset(cfg.dataset, cfg.data_root, cfg.train_split, transform=None, **cfg.dataset_options)
    n = len(data)
    if n == 0:
        raise ValueError(f"the training split {cfg.train_split!r} of data set {cfg.dataset!r} has no images; check "
                         "--data-root and the split's file")
    picks = sorted({round(i * (n - 1) / max(1, samples - 1)) for i in range(min(samples, n))})
    sides = sorted(min(data[i][0].shape[-2:]) for i in picks)
    return int(sides[len(sides) // 2])


def data_fingerprint(data: Dataset) -> str:
    """A sha256 of a training set's size, image files (when it lists them) and labels.

    Image files count by their path below the folder they all share, so the same data set read from another
    place (moved, mounted elsewhere, reached through ``..``) has the same fingerprint.
    """
    h = hashlib.sha256(str(len(data)).encode())
    base, indices = (data.dataset, list(data.indices)) if isinstance(data, Subset) else (data, None)
    images = getattr(base, "images", None)
    if images is not None:
        chosen = images if indices is None else [images[i] for i in indices]
        h.update("\n".join(_below_common_folder(chosen)).encode())
    targets = getattr(base, "targets", None)
    if isinstance(targets, Tensor):
        chosen = targets if indices is None else targets[torch.as_tensor(indices, dtype=torch.long)]
        h.update(chosen.to(torch.uint8).contiguous().numpy().tobytes())
    elif indices is not None:
        h.update(str(indices).encode())
    return h.hexdigest()


def _below_common_folder(paths: Sequence[Any]) -> list[str]:
    """``paths`` relative to the deepest folder that holds them all, as POSIX strings."""
    if not paths:
        return []
    absolute = [os.path.abspath(p) for p in paths]
    top = os.path.commonpath(absolute) if len(absolute) > 1 else os.path.dirname(absolute[0])
    if top in absolute:  # a single path listed repeatedly: its folder
        top = os.path.dirname(top)
    return [Path(os.path.relpath(p, top)).as_posix() for p in absolute]


def _with_classes(subset: Subset, classes: list[str]) -> Subset:
    """``subset`` with the ``classes`` attribute of the data set it selects from (a Subset has none)."""
    subset.classes = list(classes)
    return subset

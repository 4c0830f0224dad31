"""Checks that run before a training run writes anything: the distiller's options, the teacher and the data.

A misspelt ``--lambda`` used to fail after the output folder was created, and a broken test image or a
validation split without a positive label after hours of training. `preflight` finds these in seconds,
before the output folder is touched, and says what to change; the trainer then trains on the data sets
it checked.

Cost of the image check, per split: a split of at most `DECODE_ALL_MAX` images is decoded in full (at
reduced scale for JPEG); a larger split has every file's header read (that catches files that are not
images, empty or cut short before the pixels) and a seeded sample of `DECODE_SAMPLE` images decoded. A
split built with ``skip_unreadable`` was already decoded in full and is not checked again.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from mlkd.config import RunConfig
from mlkd.data import ImageListDataset, Splits, build_datasets
from mlkd.data.base import SKIP_HINT
from mlkd.data.loaders import train_batches
from mlkd.data.registry import own_val_split
from mlkd.losses import create_distiller

log = logging.getLogger("mlkd")

DECODE_ALL_MAX = 1000
DECODE_SAMPLE = 200
# How many label names a message lists before summarising the rest as a count.
_NAMES_SHOWN = 10


@dataclasses.dataclass(frozen=True)
class CheckedRun:
    """What `preflight` found good: the run's data sets and its schedule's length.

    Attributes:
        sets: the training, validation and test sets as checked; the trainer trains on these, so a
            run reads its data (and decodes the checked images) once.
        steps: the number of optimizer steps of the learning-rate schedule (what the default lr
            depends on).
        teacher: a teacher trained elsewhere (`mlkd.models.external.ExternalTeacher`, on the CPU), built
            with its weights and its classes mapped to the data's; None for an mlkd checkpoint (read
            by the trainer) or a method without teacher.
        config: the configuration the sets were built with: the teacher's input and the training images'
            ``read_size`` resolved (`resolve_teacher_input`, `resolve_read_size`); the run records it.
    """

    sets: Splits
    steps: int
    teacher: nn.Module | None = None
    config: RunConfig | None = None


def check_run(cfg: RunConfig, world_size: int = 1) -> int:
    """`preflight`'s checks, for callers that need only the schedule's number of optimizer steps."""
    return preflight(cfg, world_size).steps


def preflight(cfg: RunConfig, world_size: int = 1, teacher_module: nn.Module | None = None) -> CheckedRun:
    """Check a run's distiller options, teacher and data before anything is written.

    Args:
        cfg: the validated run configuration.
        world_size: processes the training set is shared between (torchrun), for the batch count.
        teacher_module: the module given to `mlkd.distill` as the teacher, if any.

    Returns:
        The data sets, built from ``cfg`` and checked, and the schedule's number of optimizer steps.

    Raises:
        ValueError: an unknown distiller, weight (``--lambda``) or option (``--method-option``); an empty
            split; a validation or test split without any positive label; an unreadable image; a training
            set too small for one batch. Each message names the split or option and the fix.
        FileNotFoundError: a missing teacher checkpoint, data folder or split file.

        A teacher trained elsewhere is refused here too (`mlkd.engine.teacher.build_external_teacher`): an
        unknown timm name, a weights file that is not a state dict or does not fit the architecture, a
        classifier whose size differs from the class list, classes that do not match the data, a module
        teacher that is missing (a resumed run) or whose input settings are unknown.
    """
    from mlkd.engine.crossfit import order_fold_teachers
    from mlkd.engine.teacher import build_external_teacher, check_module_given, is_external, resolve_read_size, \
        resolve_teacher_input

    cfg = resolve_val_split(cfg)
    distiller = check_distiller_options(cfg.method, cfg.lambdas, cfg.method_options)
    external = distiller.requires_teacher and is_external(cfg)
    if distiller.requires_teacher:
        if not cfg.teacher and not cfg.fold_teachers and not external:
            raise ValueError(f"method {cfg.method!r} distils from a teacher: pass --teacher PATH (a best.pt written "
                             "by mlkd train), or --teacher-model NAME --teacher-weights FILE (a timm classifier "
                             "trained elsewhere)")
        if cfg.teacher and not Path(cfg.teacher).is_file():
            raise FileNotFoundError(f"--teacher {cfg.teacher} does not exist; pass the best.pt of an mlkd train run")
        for path in cfg.fold_teachers or []:
            if not Path(path).is_file():
                raise FileNotFoundError(f"--fold-teachers {path} does not exist; pass the best.pt of each "
                                        "`mlkd train --hold-out-fold k/K` run")
        check_module_given(cfg, teacher_module)
        if external:
            cfg = resolve_teacher_input(cfg)  # its input settings are known (given, or timm's), else refused now
        cfg = resolve_read_size(cfg)  # the teacher sees its own resolution: images read at its side
    sets = build_datasets(cfg)
    train_set, val_set, test_set = sets
    val_name = (f"validation split {cfg.val_split!r}" if cfg.val_split is not None
                else f"validation split (the {cfg.val_fraction:g} of {cfg.train_split!r} held out for validation)")
    splits = [(f"training split {cfg.train_split!r}", train_set), (val_name, val_set),
              (f"test split {cfg.test_split!r}", test_set)]
    for name, data in splits:
        if len(data) == 0:
            raise ValueError(f"the {name} of data set {cfg.dataset!r} has no images; check --data-root and the "
                             "split's file")
    classes = list(train_set.classes)
    for name, data in splits:
        check_positives(name, data, classes, required=data is not train_set)
    check_images(splits)
    steps = check_schedule(cfg, len(train_set), world_size)
    if distiller.requires_teacher and cfg.fold_teachers:
        order_fold_teachers(list(cfg.fold_teachers), train_set)  # one per fold, all cutting this training set
    # Last, as it can take seconds (a large architecture, a weights file of hundreds of MB).
    teacher = build_external_teacher(cfg, classes, teacher_module) if external else None
    return CheckedRun(sets, steps, teacher, cfg)


def resolve_val_split(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``val_split`` set to the data set's own validation split (csv: ``val.csv``) when it
    names none and the data set holds one; else ``cfg`` unchanged, and validation is carved from the
    training split. A run records the result in ``config.yaml``, so ``--resume`` compares it as set.
    """
    if cfg.val_split is not None:
        return cfg
    split = own_val_split(cfg.dataset, cfg.data_root)
    return cfg if split is None else dataclasses.replace(cfg, val_split=split)


def check_distiller_options(method: str, lambdas: dict[str, float], options: dict[str, Any]) -> nn.Module:
    """Check ``--lambda`` names and ``--method-option`` keys against the distiller's constructor.

    Returns:
        The distiller built with these options (to read its class attributes; the run builds its own).

    Raises:
        ValueError: an unknown method (listing the valid ones), a weight or option the method does not
            have (listing those it has), or a value its constructor refuses.
    """
    params = inspect.signature(type(create_distiller(method))).parameters
    names = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    weights = [n[len("lambda_"):] for n in names if n.startswith("lambda_")]
    # A distiller that takes **kwargs checks its keywords itself, in its constructor below.
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in lambdas:
        if f"lambda_{name}" not in names and not open_ended:
            have = ", ".join(weights) if weights else "none: it has no distillation term to weigh"
            raise ValueError(f"--lambda {name}=...: method {method!r} has no weight {name!r}; its weights are "
                             f"{have}")
    for key in options:
        if key not in names and not open_ended:
            valid = ", ".join(f"{n}={params[n].default!r}" for n in names if not n.startswith("lambda_"))
            raise ValueError(f"--method-option {key}=...: method {method!r} has no option {key!r}; its options "
                             f"are {valid} (weights go in --lambda NAME=VALUE)")
        if key.startswith("lambda_") and key[len("lambda_"):] in lambdas:
            raise ValueError(f"the weight {key} is given twice, as --lambda {key[len('lambda_'):]}=... and as "
                             f"--method-option {key}=...; keep one")
    try:
        return create_distiller(method, **{f"lambda_{k}": v for k, v in lambdas.items()}, **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"method {method!r} refuses its options ({err}); check --lambda and --method-option") \
            from None


def _targets(data: Dataset) -> torch.Tensor | None:
    """All targets ``[n, q]`` of a data set or a `Subset` of one, without decoding images; None if unknown."""
    if isinstance(data, Subset):
        inner = _targets(data.dataset)
        return None if inner is None else inner[torch.as_tensor(data.indices, dtype=torch.long)]
    return getattr(data, "targets", None)


def check_positives(name: str, data: Dataset, classes: list[str], required: bool) -> None:
    """Refuse (``required``) or warn about a split with no positive label; warn about labels without one.

    mAP averages AP over the labels that have a positive; with none at all it is undefined, so the
    validation split could not select a checkpoint and the test split could not be scored.
    """
    targets = _targets(data)
    if targets is None:
        return
    positives = targets.sum(dim=0)
    absent = [c for c, p in zip(classes, positives.tolist()) if p == 0]
    if len(absent) == len(classes):
        message = (f"the {name} has no positive label in any of its {len(data)} images (none of "
                   f"{_names(classes)}), so its mAP is undefined")
        if required:
            raise ValueError(f"{message}. Label its images, or choose another split (val_split, val_fraction)")
        log.warning("%s; the model has nothing to learn from", message)
    elif absent:
        log.warning("the %s has no positive for %d of %d labels (%s); its mAP averages over the other labels",
                    name, len(absent), len(classes), _names(absent))


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


def check_images(splits: list[tuple[str, Dataset]]) -> None:
    """Find unreadable images in every split (see the module doc for what is decoded).

    Raises:
        ValueError: naming the split, the files (and where they are listed) and the fix.
    """
    for name, data in splits:
        base, indices = data, None
        if isinstance(data, Subset):
            base, indices = data.dataset, list(data.indices)
        if not isinstance(base, ImageListDataset):
            _ = data[0]  # other data sets (built in memory): one sample shows that decoding works
            continue
        if base.decode_checked:
            continue
        indices = list(range(len(base))) if indices is None else indices
        if len(indices) <= DECODE_ALL_MAX:
            problems = base.unreadable(decode=indices)
        else:
            rng = np.random.default_rng(0)
            sample = sorted(rng.choice(indices, DECODE_SAMPLE, replace=False).tolist())
            picked = set(sample)
            problems = base.unreadable(decode=sample, open_only=[i for i in indices if i not in picked])
        if problems:
            shown = "; ".join(problems[:_NAMES_SHOWN])
            more = f" and {len(problems) - _NAMES_SHOWN} more" if len(problems) > _NAMES_SHOWN else ""
            raise ValueError(f"{len(problems)} image(s) of the {name} cannot be read: {shown}{more}. Replace them, "
                             f"or {SKIP_HINT} to leave unreadable images out")


def check_schedule(cfg: RunConfig, n_train: int, world_size: int = 1) -> int:
    """Refuse a training set too small for one batch; return the schedule's number of optimizer steps.

    Every length of schedule trains (`mlkd.engine.schedule.build_schedule`), a warm-up of exactly one step
    included.
    """
    per_process = math.ceil(n_train / world_size)  # a DistributedSampler pads every share to this size
    steps = train_batches(per_process, cfg.batch_size)
    if steps == 0:
        raise ValueError(f"the training set has {n_train} image(s): too few for a batch (training needs at least "
                         f"2 images per process); add images or lower val_fraction")
    return (cfg.schedule_epochs or cfg.epochs) * steps

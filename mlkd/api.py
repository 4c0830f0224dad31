"""The Python API that mirrors the command line: `train`, `distill`, `evaluate`, `export`."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from mlkd.config import DISTILL_METHOD, RunConfig, config_values, make_config
from mlkd.data import build_datasets, build_transforms, create_dataset, dataset_splits
from mlkd.engine.checkpoint import load_checkpoint, model_from_checkpoint
from mlkd.engine.distributed import resolve_device
from mlkd.engine.evaluate import ModelInput, compute_metrics, eval_loader, predict
from mlkd.engine.trainer import RunResult, fit
from mlkd.files import atomic_write_text, check_output_is_not_input, make_folder

log = logging.getLogger("mlkd")


def train(config: RunConfig | dict | str | Path | None = None, **overrides: Any) -> RunResult:
    """Train a model with BCE alone (a teacher, or a student without distillation).

    Args:
        config: a `RunConfig`, a dict of its fields, or the path of a YAML file; optional.
        **overrides: any `RunConfig` field, e.g. ``model="resnet101", epochs=30, output="runs/teacher"``;
            ``None`` unsets a field (see `make_config`).

    Returns:
        A `RunResult` with the output folder, the test metrics of ``best.pt`` and the epoch history.

    Raises:
        TypeError: ``config`` is not one of the accepted types.
        ValueError: a setting that cannot work, naming the key and the fix.
    """
    cfg = make_config(config, **overrides)
    if cfg.method != "vanilla":
        raise ValueError(f"train runs without distillation, but method={cfg.method!r}; use distill()")
    return fit(cfg)


def distill(teacher: str | Path | nn.Module | None = None, method: str | None = None,
            config: RunConfig | dict | str | Path | None = None, **overrides: Any) -> RunResult:
    """Train a student under a frozen teacher with a registered distiller (``l2d``, ``kd``, ...).

    The teacher is one of: an mlkd checkpoint (``teacher="runs/t/best.pt"``); a timm classifier trained
    elsewhere (``teacher_model="resnet50", teacher_weights="teacher.pth"``, as the flags
    ``--teacher-model``/``--teacher-weights``); or any ``nn.Module`` (``teacher=module``) whose forward
    returns logits ``[N, t]``, a `ModelOutput`, or a dict with ``"logits"`` (and optionally
    ``"features"``). A teacher trained elsewhere is mapped to the data set's classes by name, from
    ``teacher_classes`` (a text file or a list, in its output order; unset: the data set's classes);
    ``teacher_missing_labels="exclude"`` leaves data-set classes it lacks out of the distillation terms.

    A module's input is never guessed: give ``teacher_img_size``, ``teacher_mean`` and ``teacher_std`` as
    it was trained, or ``teacher_same_input=True`` to hand it the student's images as they are (the run's
    ``img_size``, values in [0, 1], no normalisation). config.yaml records the module's class
    (``teacher_module``), not the module: to resume, pass the module again
    (``distill(teacher=module, config="<run>/config.yaml", resume=True)``).

    Cross-fitted teachers replace the one teacher with ``fold_teachers=["f0/best.pt", "f1/best.pt"]``: teacher k
    trained by ``train(..., hold_out_fold=[k, K])`` teaches the training images of the fold it never saw
    (`mlkd.data.folds`; docs/method.md, "Cross-fitted teachers").

    Args:
        teacher: an mlkd checkpoint path, or a teacher module; ``None`` keeps the configuration's.
        method: distiller name (see `mlkd.losses.list_distillers`); ``vanilla`` trains without one.
            ``None``: the configuration's method when it names one (a `RunConfig` always does), else
            `mlkd.config.DISTILL_METHOD` (``l2d``), as for ``mlkd distill``.
        config: as in `train`.
        **overrides: `RunConfig` fields, e.g. ``lambdas={"cd": 50}``, ``model="resnet34"``,
            ``teacher_classes=[...]``.

    Raises:
        TypeError: ``config`` or ``teacher`` is not one of the accepted types.
        ValueError: a setting that cannot work, naming the key and the fix.
    """
    values = config_values(config)
    given: dict[str, Any] = {}
    module = None
    if isinstance(teacher, nn.Module):
        from mlkd.engine.teacher import module_name

        module = teacher
        given["teacher_module"] = module_name(module)
    elif isinstance(teacher, (str, os.PathLike)):
        given["teacher"] = str(teacher)
    elif teacher is not None:
        raise TypeError(f"teacher must be the path of an mlkd checkpoint (str or Path) or an nn.Module, got "
                        f"{type(teacher).__name__}")
    if method is not None:
        given["method"] = method
    elif "method" not in values:
        given["method"] = DISTILL_METHOD
    cfg = make_config(values, **given, **overrides)
    if cfg.method == "vanilla" and (cfg.teacher or cfg.fold_teachers or module is not None):
        log.warning("method 'vanilla' trains without the teacher %s; pass method=... (e.g. %r) to distil from it",
                    cfg.teacher or cfg.fold_teachers or cfg.teacher_module, DISTILL_METHOD)
    return fit(cfg) if module is None else fit(cfg, teacher_module=module)


def evaluate(checkpoint: str | Path, dataset: str | None = None, data_root: str | None = None,
             split: str | None = None, *, img_size: int | None = None, batch_size: int = 64,
             threshold: float = 0.5, device: str = "auto", workers: int = 0,
             dataset_options: dict[str, Any] | None = None, output: str | Path | None = None) -> dict[str, Any]:
    """Score a checkpoint on a data set split and return (and optionally write) its metrics.

    Data set, root, split and image size default to those the checkpoint was trained with. An
    ``output`` that is the checkpoint itself (or a link to it) is refused before anything is read.

    Raises:
        TypeError: ``checkpoint`` is not a path.
        ValueError: an empty path, an unreadable checkpoint, classes that differ from the data set's, an
            ``output`` that is the checkpoint.
    """
    checkpoint = _checkpoint_path(checkpoint)
    if output is not None:
        check_output_is_not_input(output, checkpoint)
    state = load_checkpoint(checkpoint)
    model, _ = model_from_checkpoint(state, source=checkpoint)
    run = state.get("config") or {}
    name = dataset or run.get("dataset")
    if name is None:
        raise ValueError("the checkpoint does not record its data set; pass --dataset")
    options = dataset_options if dataset_options is not None else (run.get("dataset_options", {}) if name == run.get("dataset") else {})
    root = data_root if data_root is not None else run.get("data_root")
    size = _check_img_size(img_size) or run.get("img_size") or 224
    split = split or run.get("test_split", "test")
    data = None
    if split == "val" and run.get("val_split") is None and name == run.get("dataset"):
        data = _carved_validation(run, name, root, options, size)
    if data is None:
        data = create_dataset(name, root, split, transform=build_transforms(size, train=False), **options)
    if list(data.classes) != list(state["classes"]):
        raise ValueError(f"checkpoint {checkpoint} predicts classes {state['classes']}, but the data set has "
                         f"{list(data.classes)}")
    dev = resolve_device(device)
    model.to(dev)
    scores, targets = predict(model, eval_loader(data, batch_size, workers, dev), dev,
                              ModelInput.from_stats(state.get("input_norm")))
    metrics = compute_metrics(scores, targets, threshold, data.classes)
    if output is not None:
        path = Path(output)
        make_folder(path.parent)
        atomic_write_text(path, json.dumps(metrics, indent=2))
    return metrics


def _checkpoint_path(checkpoint: object) -> Path:
    """``checkpoint`` as a `Path`, refusing what cannot be the path of a checkpoint file."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be the path of a checkpoint file (str or Path), e.g. 'runs/train/best.pt', "
                        f"got {type(checkpoint).__name__}")
    if not str(checkpoint).strip():
        raise ValueError("checkpoint is an empty path; pass the path of a best.pt or last.pt written by mlkd")
    return Path(checkpoint)


def _check_img_size(img_size: int | None) -> int | None:
    """``img_size`` unless it is set to something that cannot be a resolution (0 used to mean 'unset')."""
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 8):
        raise ValueError(f"img_size (--img-size) must be an integer >= 8, got {img_size!r}; leave it unset for "
                         "the checkpoint's own resolution")
    return img_size


def _carved_validation(run: dict[str, Any], name: str, root: str | None, options: dict[str, Any], size: int):
    """``--split val`` for a run that carved its validation images from its training split: the data
    set's own ``val`` split when it has one whose files exist, else the same carve as in training."""
    if "val" in dataset_splits(name):
        try:
            return create_dataset(name, root, "val", transform=build_transforms(size, train=False), **options)
        except FileNotFoundError:
            pass
    fields = set(RunConfig.__dataclass_fields__)
    cfg = make_config({k: v for k, v in run.items() if k in fields},
                      data_root=root, img_size=size, resume=False)
    cfg.dataset_options = dict(options)
    _, val_set, _ = build_datasets(cfg)
    return val_set


def export(checkpoint: str | Path, path: str | Path | None = None, format: str = "onnx",
           img_size: int | None = None) -> Path:
    """Export a trained model to ONNX; the graph takes images in [0, 1] and outputs logits.

    The input normalisation the model was trained with is folded into the graph. The graph is written
    like a checkpoint (a temporary file, then a rename); a ``path`` that is the checkpoint itself (or a
    link to it) is refused, also when it is the default (``checkpoint`` with the suffix ``.onnx``).
    """
    from mlkd.models import export_onnx

    if format != "onnx":
        raise ValueError(f"unknown export format {format!r}; supported: onnx")
    checkpoint = _checkpoint_path(checkpoint)
    target = Path(path) if path is not None else Path(checkpoint).with_suffix(".onnx")
    check_output_is_not_input(target, checkpoint,
                              "" if path is not None else "the default: the checkpoint path with .onnx")
    state = load_checkpoint(checkpoint)
    model, _ = model_from_checkpoint(state, source=checkpoint)
    size = _check_img_size(img_size) or (state.get("config") or {}).get("img_size") or 224
    stats = state.get("input_norm") or {}
    return export_onnx(model, target, size, mean=stats.get("mean"), std=stats.get("std"))

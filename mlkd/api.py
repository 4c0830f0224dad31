"""The Python API that mirrors the command line: `train`, `distill`, `evaluate`, `export`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from mlkd.config import RunConfig, make_config
from mlkd.data import build_transforms, create_dataset, dataset_splits
from mlkd.engine.checkpoint import load_checkpoint, model_from_checkpoint
from mlkd.engine.distributed import resolve_device
from mlkd.engine.evaluate import ModelInput, compute_metrics, eval_loader, predict
from mlkd.engine.trainer import RunResult, build_datasets, fit
from mlkd.files import atomic_write_text, make_folder


def train(config: RunConfig | dict | str | Path | None = None, **overrides: Any) -> RunResult:
    """Train a model with BCE alone (a teacher, or a student without distillation).

    Args:
        config: a `RunConfig`, a dict of its fields, or the path of a YAML file; optional.
        **overrides: any `RunConfig` field, e.g. ``model="resnet101", epochs=30, output="runs/teacher"``.

    Returns:
        A `RunResult` with the output folder, the test metrics of ``best.pt`` and the epoch history.
    """
    cfg = make_config(config, **overrides)
    if cfg.method != "vanilla":
        raise ValueError(f"train runs without distillation, but method={cfg.method!r}; use distill()")
    return fit(cfg)


def distill(teacher: str | Path | None = None, method: str | None = None,
            config: RunConfig | dict | str | Path | None = None, **overrides: Any) -> RunResult:
    """Train a student under a frozen teacher with a registered distiller (``l2d``, ``kd``, ...).

    Args:
        teacher: checkpoint of the teacher (``best.pt`` of an `mlkd train` run).
        method: distiller name (see `mlkd.losses.list_distillers`); ``vanilla`` trains without one.
        config: as in `train`.
        **overrides: `RunConfig` fields, e.g. ``lambdas={"cd": 50}``, ``model="resnet34"``.
    """
    cfg = make_config(config, teacher=None if teacher is None else str(teacher), method=method, **overrides)
    return fit(cfg)


def evaluate(checkpoint: str | Path, dataset: str | None = None, data_root: str | None = None,
             split: str | None = None, *, img_size: int | None = None, batch_size: int = 64,
             threshold: float = 0.5, device: str = "auto", workers: int = 0,
             dataset_options: dict[str, Any] | None = None, output: str | Path | None = None) -> dict[str, Any]:
    """Score a checkpoint on a data set split and return (and optionally write) its metrics.

    Data set, root, split and image size default to those the checkpoint was trained with.
    """
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

    The input normalisation the model was trained with is folded into the graph.
    """
    from mlkd.models import export_onnx

    if format != "onnx":
        raise ValueError(f"unknown export format {format!r}; supported: onnx")
    state = load_checkpoint(checkpoint)
    model, _ = model_from_checkpoint(state, source=checkpoint)
    size = _check_img_size(img_size) or (state.get("config") or {}).get("img_size") or 224
    target = Path(path) if path is not None else Path(checkpoint).with_suffix(".onnx")
    stats = state.get("input_norm") or {}
    return export_onnx(model, target, size, mean=stats.get("mean"), std=stats.get("std"))

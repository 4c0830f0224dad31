"""The frozen teacher: loaded, checked against the data and run with inference-only settings.

A teacher is one of three kinds (issue 22): an mlkd checkpoint (``--teacher best.pt``), a timm classifier
trained anywhere (``--teacher-model NAME --teacher-weights FILE``), or a module given to ``mlkd.distill``.
The last two are wrapped in `mlkd.models.external.ExternalTeacher`, which maps their classes to the data
set's by name; so is an mlkd checkpoint trained on other classes. `prepare_teacher` builds any of them
for a run; a teacher without label-wise head gets a fitted one when the method reads label-wise
embeddings (`_with_fitted_head`, `mlkd.models.fitted_head`).

Inference settings (issue 11, item 4):

Measured in docs/benchmarks.md (teacher_speed on the CPU, gpu_check's teacher_settings on an H200):

- ``channels_last`` (default on): NHWC memory format, oneDNN's and cuDNN's preferred layout; outputs
  equal to float rounding. 1.5× on the CPU, 1.2× on the GPU in float32.
- ``precision="bfloat16"`` (opt-in, ``--teacher-precision bfloat16``): the teacher's forward pass under
  bf16 autocast even when the student trains in float32; its outputs are handed over in float32 and
  differ from float32 ones by about 0.5 % of their largest value. 1.4× on the CPU over channels_last,
  1.3× on the GPU. (Under ``--amp`` the teacher already runs in the run's autocast dtype.)
- ``compile=True`` (opt-in, ``--compile-teacher``): `torch.compile` of the teacher; outputs equal to
  float rounding; compiling takes seconds on a GPU and about 40 s for the demo teacher on 2 CPU cores.
  1.4× on the CPU over channels_last, 1.8× on the GPU over bf16 channels_last.
- ``torch.inference_mode`` buys nothing over frozen parameters (autograd records nothing either way),
  so the teacher runs under the engine's ``no_grad``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from mlkd.config import TEACHER_PRECISIONS, RunConfig
from mlkd.engine import distributed as ddp
from mlkd.data.folds import fold_assignment
from mlkd.data.splits import data_fingerprint
from mlkd.engine.checkpoint import load_checkpoint, model_from_checkpoint
from mlkd.engine.crossfit import FoldTeachers, check_same_input, member_config, order_fold_teachers, same_shapes
from mlkd.engine.evaluate import ModelInput
from mlkd.engine.fit import teacher_fit_facts
from mlkd.models.external import ExternalTeacher, create_timm_teacher, map_classes, read_class_names, \
    timm_input_config
from mlkd.models.fitted_head import attach_fitted_head, state_digest
from mlkd.outputs import ModelOutput

log = logging.getLogger("mlkd")

# Where each teacher part comes from when the teacher gives it itself.
AS_GIVEN = "the teacher as given"


def load_teacher(path: str | None, classes: list[str], device: torch.device, *, channels_last: bool = True,
                 precision: str = "float32", compile: bool = False,
                 missing_labels: str = "error") -> tuple[nn.Module, ModelInput]:
    """The frozen teacher from its mlkd checkpoint: eval mode, no gradient, classes mapped by name.

    A checkpoint trained on the data set's classes in the same order is used as it is; one trained on
    another order or a superset is wrapped in `ExternalTeacher`, which re-indexes its logits and
    label-wise embeddings to the data set's classes (and, with ``missing_labels="exclude"``, leaves out
    the classes it lacks: see ``data_columns``). The teacher sees each batch at the resolution and
    normalisation it was trained with. The inference settings (see the module docstring) are recorded
    in ``teacher.inference_settings`` and applied by `run_teacher`.

    Raises:
        ValueError: no path, an unknown precision, an unreadable checkpoint, data-set classes the teacher
            lacks (under ``missing_labels="error"``).
    """
    _check_precision(precision)
    if not path:
        raise ValueError("this method distils from a teacher: pass --teacher PATH (a best.pt written by mlkd train)")
    teacher, state = model_from_checkpoint(path)
    if list(state["classes"]) != list(classes):
        teacher = ExternalTeacher(teacher, list(state["classes"]), classes, missing_labels=missing_labels,
                                  description=f"mlkd checkpoint {path}",
                                  classes_from=f"the classes recorded in {path}")
    size = (state.get("config") or {}).get("img_size")
    return (freeze_teacher(teacher, device, channels_last=channels_last, precision=precision, compile=compile),
            ModelInput.from_stats(state.get("input_norm"), size).to(device))


def freeze_teacher(teacher: nn.Module, device: torch.device, *, channels_last: bool = True,
                   precision: str = "float32", compile: bool = False) -> nn.Module:
    """``teacher`` on ``device``, in eval mode, without gradients, with its inference settings recorded.

    Args:
        teacher: any module returning a `ModelOutput`.
        channels_last, precision, compile: see the module docstring.

    Returns:
        The same module, changed in place.
    """
    _check_precision(precision)
    teacher.requires_grad_(False)
    teacher = teacher.to(device).eval()
    teacher.inference_settings = {"channels_last": bool(channels_last), "precision": precision,
                                  "compile": bool(compile)}
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
        teacher.register_forward_pre_hook(_to_channels_last)
    if compile:
        teacher.compile()  # in place: calls go through torch.compile; attributes and methods stay
    return teacher


def _check_precision(precision: str) -> None:
    if precision not in TEACHER_PRECISIONS:
        raise ValueError(f"teacher precision must be one of {TEACHER_PRECISIONS}, got {precision!r}")


# ---------------------------------------------------------------- teachers trained elsewhere

def is_external(cfg: RunConfig) -> bool:
    """Whether the run's teacher was trained outside mlkd (a timm classifier or a module)."""
    return bool(cfg.teacher_model or cfg.teacher_module)


def teacher_class_names(cfg: RunConfig, data_classes: Sequence[str]) -> tuple[list[str], str]:
    """The external teacher's classes in its output order, and where they came from (for messages).

    ``cfg.teacher_classes`` is a text file (`read_class_names`) or a list of names; unset, the teacher
    is taken to have the data set's classes, and its output count is checked against them.
    """
    given = cfg.teacher_classes
    if isinstance(given, str):
        return read_class_names(given), f"--teacher-classes {given}"
    if given:
        return [str(c) for c in given], "teacher_classes"
    return list(data_classes), (f"the data set's {len(data_classes)} classes (no --teacher-classes given; pass it "
                                "when the teacher was trained on other classes or another order)")


def build_external_teacher(cfg: RunConfig, data_classes: Sequence[str],
                           module: nn.Module | None = None) -> ExternalTeacher:
    """The run's external teacher on the CPU, its weights loaded and its classes mapped: every check of a
    teacher trained elsewhere, run before any training (`mlkd.engine.preflight`).

    Args:
        cfg: the run's configuration (``teacher_model``/``teacher_weights`` or ``teacher_module``).
        data_classes: the data set's classes.
        module: the module given to `mlkd.distill` (required when ``cfg.teacher_module`` is set).

    Raises:
        ValueError: an unknown timm name, weights that are not a state dict or do not fit, a classifier
            whose size differs from the class list, classes that do not match the data, a module that is
            missing (a resumed run) or of another class than recorded.
        FileNotFoundError: a missing weights or classes file.
    """
    check_module_given(cfg, module)
    classes, classes_from = teacher_class_names(cfg, data_classes)
    # The classes first: a mismatch is found without reading the weights.
    map_classes(classes, data_classes, cfg.teacher_missing_labels, classes_from)
    if cfg.teacher_model:
        model = create_timm_teacher(cfg.teacher_model, cfg.teacher_weights, classes, classes_from)
        description = f"timm {cfg.teacher_model}, weights {cfg.teacher_weights}"
    else:
        model = module
        description = f"module {cfg.teacher_module}"
    return ExternalTeacher(model, classes, data_classes, missing_labels=cfg.teacher_missing_labels,
                           description=description, classes_from=classes_from)


def check_module_given(cfg: RunConfig, module: nn.Module | None) -> None:
    """Refuse a run whose settings name a teacher module (``teacher_module``) when the module is not given,
    or is of another class; and a module given to a run whose settings name none.

    Raises:
        ValueError: naming the fix (pass the module to `mlkd.distill` again).
    """
    if module is not None and not cfg.teacher_module:
        raise ValueError(f"a teacher module ({module_name(module)}) is given, but the run's settings name none; "
                         "pass it as mlkd.distill(teacher=module, ...)")
    if not cfg.teacher_module:
        return
    if module is None:
        raise ValueError(f"this run distils from a teacher module ({cfg.teacher_module}) given to mlkd.distill(); "
                         "config.yaml cannot hold a module, so pass it again from Python: mlkd.distill(teacher=<the "
                         "module>, config='<run folder>/config.yaml', resume=True) continues the run")
    if module_name(module) != cfg.teacher_module:
        raise ValueError(f"the teacher module is a {module_name(module)}, but the run's settings record a "
                         f"{cfg.teacher_module}; pass the module the run was started with")


def module_name(module: nn.Module) -> str:
    """How config.yaml records a teacher module: its class's module and name (``mypkg.nets.MyNet``)."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_teacher_input(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the external teacher's resolution and normalisation filled in, and their sources.

    Each of ``teacher_img_size`` and ``teacher_mean``/``teacher_std`` comes from, in order: the
    configuration (``"given"``), the run's images with ``teacher_same_input`` (the run's ``img_size``; no
    normalisation, recorded as mean 0 and std 1), or timm's ``pretrained_cfg`` of ``teacher_model``.
    ``teacher_input_source`` records which, so config.yaml and the run summary say it. Resolving a
    resolved configuration changes nothing (a resumed run compares equal). An mlkd checkpoint records its
    own input; its configuration is returned unchanged.

    Raises:
        ValueError: a module teacher without its input settings (nothing is guessed), or a timm name
            without a pretrained configuration and no settings given.
    """
    if not is_external(cfg):
        return cfg
    previous = dict(cfg.teacher_input_source or {})
    defaults: dict[str, tuple[Any, str]] = {}  # setting -> (value, source)
    if cfg.teacher_same_input:
        same = "the run's images (teacher_same_input)"
        defaults = {"img_size": (cfg.img_size, f"{same}: --img-size {cfg.img_size}"),
                    "mean_std": (([0.0] * 3, [1.0] * 3), f"{same}: no normalisation")}
    elif cfg.teacher_model:
        # Also when every value is given: a value recorded as timm's keeps that source.
        try:
            timm_cfg = timm_input_config(cfg.teacher_model)
        except ValueError:
            if cfg.teacher_img_size is None or cfg.teacher_mean is None:
                raise
            timm_cfg = None  # every value given; an unknown name is refused when the teacher is built
        if timm_cfg is not None:
            defaults = {"img_size": (timm_cfg["img_size"], timm_cfg["source"]),
                        "mean_std": ((timm_cfg["mean"], timm_cfg["std"]), timm_cfg["source"])}
    given = {"img_size": cfg.teacher_img_size,
             "mean_std": None if cfg.teacher_mean is None else (list(cfg.teacher_mean), list(cfg.teacher_std))}
    values, sources = {}, {}
    for key, value in given.items():
        default = defaults.get(key)
        if value is None:
            if default is None:
                flags = "--teacher-img-size PX" if key == "img_size" else "--teacher-mean R,G,B --teacher-std R,G,B"
                api = "teacher_img_size=PX" if key == "img_size" else "teacher_mean=[...], teacher_std=[...]"
                raise ValueError(f"the teacher module {cfg.teacher_module}'s input "
                                 f"{'resolution' if key == 'img_size' else 'normalisation'} is unknown and mlkd does "
                                 f"not guess it: pass {api} ({flags}) as it was trained, or teacher_same_input=True "
                                 "to give it the student's images as they are (the run's img_size, values in [0, 1])")
            values[key], sources[key] = default
        else:
            # A value equal to its default keeps the default's source when that is what it was recorded as.
            kept = default is not None and _same(value, default[0]) and previous.get(key) == default[1]
            values[key], sources[key] = value, (default[1] if kept else "given")
    mean, std = values["mean_std"]
    return dataclasses.replace(cfg, teacher_img_size=int(values["img_size"]), teacher_mean=[float(v) for v in mean],
                               teacher_std=[float(v) for v in std], teacher_input_source=sources)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return float(a) == float(b)


def resolve_read_size(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the side at which its training images are read (``read_size``) resolved.

    A teacher that sees the student's images resized up is shown blurred copies of what it was trained on:
    the demo's teacher loses 6 mAP points that way (docs/results.md, "What the teacher sees"). So, unless
    ``read_size`` is given, a run whose teacher takes a larger input than ``img_size`` reads and augments its
    training images at the teacher's side; the teacher gets them as they are and the student a resized
    copy of the same augmented image. Validation and test images stay at ``img_size``.

    Never above the training images' own side (`mlkd.data.splits.training_image_side`): reading them larger
    would only upsample them, giving the teacher nothing it would not get by resizing on the device, and the
    student's copy (upsampled, then shrunk back) would be a blurred version of the images it is evaluated on.
    On 56 px mosaics read at 112 px that blur cost every distiller 1-2 test mAP points (docs/results.md).

    Args:
        cfg: the run's configuration; an external teacher's input already resolved (`resolve_teacher_input`),
            an mlkd checkpoint readable.

    Returns:
        ``cfg`` itself when ``read_size`` is set, or the run reads at ``img_size`` (no teacher, one at
        ``img_size`` or below, or training images of ``img_size`` or less); else a copy with ``read_size`` the
        smaller of the teacher's side and the training images' own side.
    """
    if cfg.read_size is not None:
        return cfg
    size = None
    if is_external(cfg):
        size = cfg.teacher_img_size
    elif cfg.teacher or cfg.fold_teachers:
        size = (load_checkpoint(cfg.teacher or cfg.fold_teachers[0]).get("config") or {}).get("img_size")
    if size is None or size <= cfg.img_size:
        return cfg
    from mlkd.data.splits import training_image_side

    size = min(int(size), training_image_side(cfg))
    if size <= cfg.img_size:
        return cfg
    return dataclasses.replace(cfg, read_size=size)


def external_input(cfg: RunConfig) -> ModelInput:
    """The resized and normalised batch of a resolved external teacher (`resolve_teacher_input`)."""
    return ModelInput(cfg.teacher_mean, cfg.teacher_std, cfg.teacher_img_size)


# ---------------------------------------------------------------- one teacher for a run

@dataclass
class TeacherSetup:
    """A run's teacher, ready: what `prepare_teacher` returns.

    Attributes:
        module: the frozen teacher on the run's device (with a fitted head when one was attached).
        input: its `ModelInput` (resolution and normalisation).
        data_columns: the data-set columns of its outputs when it lacks some of the data set's classes
            (excluded from the distillation terms), else None (all columns, in order).
        facts: what the run summary prints and metrics.json records under ``teacher``: ``kind``,
            ``description``, ``classes``, ``input``, ``term_sources`` (term -> where the teacher part it
            reads comes from) and ``fitted_head`` (the fitted head's report, or None).
    """

    module: nn.Module
    input: ModelInput
    data_columns: list[int] | None = None
    facts: dict[str, Any] = field(default_factory=dict)


def prepare_teacher(cfg: RunConfig, data_classes: list[str], device: torch.device, distiller: nn.Module,
                    train_set: Dataset, *, module: nn.Module | None = None,
                    prebuilt: nn.Module | None = None) -> TeacherSetup:
    """The run's teacher, whichever its kind, frozen on ``device``, with a fitted head where needed.

    Args:
        cfg: the run's configuration, its teacher input resolved (`resolve_teacher_input`).
        data_classes: the data set's classes.
        distiller: the run's distiller (what it reads of the teacher decides whether a head is fitted).
        train_set: the training set (a sample batch, the fitted head's images and key).
        module: the module given to `mlkd.distill`, if any.
        prebuilt: the `ExternalTeacher` that pre-flight built and checked (else it is built here).

    Raises:
        ValueError: see `load_teacher` and `build_external_teacher`; a method that reads label-wise
            embeddings from a teacher without them when no head can be fitted.
    """
    if cfg.fold_teachers:
        return _prepare_fold_teachers(cfg, data_classes, device, distiller, train_set)
    settings = dict(channels_last=True, precision=cfg.teacher_precision, compile=cfg.compile_teacher)
    if not is_external(cfg):
        teacher, teacher_input = load_teacher(cfg.teacher, data_classes, device, missing_labels=cfg.teacher_missing_labels,
                                              **settings)
        kind, description = "mlkd", f"mlkd checkpoint {cfg.teacher}"
        # A checkpoint on other classes is wrapped (`load_teacher`): its architecture is the inner model's.
        args = getattr(teacher, "model_args", None) or getattr(getattr(teacher, "model", None), "model_args", None) or {}
        if args.get("name"):
            description += f" ({args['name']})"
        input_facts = {"img_size": teacher_input.size, **(teacher_input.stats or {}),
                       "source": {"img_size": f"the checkpoint {cfg.teacher}", "mean_std": f"the checkpoint {cfg.teacher}"}}
    else:
        teacher = prebuilt if prebuilt is not None else build_external_teacher(cfg, data_classes, module)
        teacher = freeze_teacher(teacher, device, **settings)
        teacher_input = external_input(cfg).to(device)
        kind, description = ("timm" if cfg.teacher_model else "module"), teacher.description
        input_facts = {"img_size": cfg.teacher_img_size, "mean": cfg.teacher_mean, "std": cfg.teacher_std,
                       "source": dict(cfg.teacher_input_source)}
    columns = list(teacher.data_columns) if isinstance(teacher, ExternalTeacher) else None
    facts: dict[str, Any] = {"kind": kind, "description": description, "input": input_facts, "fitted_head": None}
    if isinstance(teacher, ExternalTeacher):
        facts["classes"] = {"teacher": len(teacher.teacher_classes), "from": teacher.classes_from,
                            "used": teacher.num_classes, "excluded": list(teacher.class_map.missing),
                            "unused": teacher.class_map.unused}
    parts = {"logits": AS_GIVEN, "features": AS_GIVEN, "label_embeddings": AS_GIVEN}
    if needs_label_embeddings(distiller) and not _gives_label_embeddings(teacher, teacher_input, train_set, device):
        key = fitted_head_key(cfg, teacher, teacher_input, train_set, module)
        teacher = _with_fitted_head(teacher, cfg, train_set, teacher_input, device, key)
        report = getattr(teacher, "fitted_head_report", None) or {}
        facts["fitted_head"] = _plain(report)
        where = f" ({'reused from' if report.get('reused') else 'cached in'} {report['path']})" if report.get("path") else ""
        parts["label_embeddings"] = f"the fitted head{where}"
    facts["term_sources"] = term_sources(distiller, parts)
    if kind == "mlkd":
        facts["fit"] = teacher_fit_facts(load_checkpoint(cfg.teacher), train_set)
    if columns is not None and len(columns) == len(data_classes):
        columns = None  # every class is taught: nothing to slice
    return TeacherSetup(teacher, teacher_input, columns, facts)


def _prepare_fold_teachers(cfg: RunConfig, data_classes: list[str], device: torch.device, distiller: nn.Module,
                           train_set: Dataset) -> TeacherSetup:
    """Cross-fitted teachers (``cfg.fold_teachers``) as one `FoldTeachers` module: each prepared as a run's
    teacher, then checked to cover every fold of ``train_set`` once, with one input and one output shape."""
    paths = order_fold_teachers(list(cfg.fold_teachers), train_set)
    setups = [prepare_teacher(member_config(cfg, path), data_classes, device, distiller, train_set) for path in paths]
    check_same_input([s.input for s in setups], paths)
    sample = torch.stack([train_set[i][0] for i in range(min(2, len(train_set)))]).to(device)
    with torch.no_grad():
        outs = [run_teacher(s.module, s.input(sample)) for s in setups]
    for path, setup, out in zip(paths[1:], setups[1:], outs[1:]):
        if setup.data_columns != setups[0].data_columns or not same_shapes(out, outs[0]):
            raise ValueError(f"--fold-teachers {paths[0]} and {path} differ in their classes or output shapes; train "
                             "every fold's teacher with the same model and settings")
    facts = dict(setups[0].facts)
    facts["kind"] = "mlkd folds"
    facts["description"] = (f"{len(paths)} cross-fitted mlkd checkpoints, each teaching the training images of the "
                            f"fold it held out: {', '.join(paths)}")
    facts["fold_teachers"] = [s.facts["description"] for s in setups]
    facts["fit"] = None  # the first teacher's: each fold teacher's is under fold_fit
    facts["fold_fit"] = [s.facts.get("fit") for s in setups]
    module = FoldTeachers([s.module for s in setups], fold_assignment(len(train_set), len(paths)), run_teacher)
    module = module.to(device)
    return TeacherSetup(module, setups[0].input, setups[0].data_columns, facts)


def needs_label_embeddings(distiller: nn.Module) -> bool:
    """Whether ``distiller`` reads the teacher's label-wise embeddings (l2d, l2d_paper, led, cd, id)."""
    return bool(getattr(distiller, "uses_embeddings", False))


# How the summary names each part of a teacher's `ModelOutput`.
PART_NAMES = {"logits": "logits", "label_embeddings": "label-wise embeddings", "features": "feature maps"}


def term_sources(distiller: nn.Module, parts: dict[str, str]) -> dict[str, str]:
    """Each distillation term of ``distiller`` and where the teacher signal it reads comes from.

    Args:
        distiller: declares ``teacher_terms`` (term name -> ``"logits"``, ``"label_embeddings"`` or
            ``"features"``).
        parts: the source of each teacher part (e.g. ``{"label_embeddings": "the fitted head"}``);
            `AS_GIVEN` for a part not listed.

    Returns:
        ``{term: "<part> of <source>"}``, e.g. ``{"mld": "logits of the teacher as given"}``.
    """
    return {term: f"{PART_NAMES.get(part, part)} of {parts.get(part, AS_GIVEN)}"
            for term, part in getattr(distiller, "teacher_terms", {}).items()}


@torch.no_grad()
def _gives_label_embeddings(teacher: nn.Module, teacher_input: ModelInput, train_set: Dataset,
                            device: torch.device) -> bool:
    """Whether the teacher returns label-wise embeddings (one forward pass on two training images)."""
    if not isinstance(teacher, ExternalTeacher):
        return True  # an mlkd model always has its head
    if teacher.kind == "timm":
        return False  # a timm classifier never has one
    sample = torch.stack([train_set[i][0] for i in range(min(2, len(train_set)))]).to(device)
    return run_teacher(teacher, teacher_input(sample)).label_embeddings is not None


def fitted_head_cache_dir(cfg: RunConfig) -> Path:
    """Where fitted heads are cached: ``teacher_head_cache``, else ``fitted_heads`` beside the run's folder."""
    if cfg.teacher_head_cache:
        return Path(cfg.teacher_head_cache)
    return Path(cfg.output).resolve().parent / "fitted_heads"


def fitted_head_key(cfg: RunConfig, teacher: nn.Module, teacher_input: ModelInput, train_set: Dataset,
                    module: nn.Module | None) -> dict[str, Any]:
    """Everything a fitted head depends on, as JSON values: the teacher (its weights' digest, classes and
    input), and the training images it is fitted on (data set, root, options, split, resolution, a
    fingerprint of the images and labels)."""
    return {
        "teacher": teacher_identity(cfg, module, digest=True),
        "classes": list(getattr(teacher, "classes", []) or []),
        "input": {"img_size": teacher_input.size, "stats": teacher_input.stats},
        "data": {"dataset": cfg.dataset, "data_root": None if cfg.data_root is None else str(Path(cfg.data_root).resolve()),
                 "options": {k: repr(v) for k, v in sorted(cfg.dataset_options.items())}, "split": cfg.train_split,
                 "val_split": cfg.val_split, "val_fraction": cfg.val_fraction, "img_size": cfg.img_size,
                 "read_size": cfg.read_size,
                 "images": data_fingerprint(train_set)},
    }


def teacher_identity(cfg: RunConfig, module: nn.Module | None, digest: bool = False) -> dict[str, Any]:
    """What identifies the teacher's weights: a file's path and modification time, or with ``digest`` its
    sha256; a module's class and the sha256 of its state dict; fold teachers' identities in fold order."""
    if cfg.fold_teachers:
        return {"fold_teachers": [teacher_identity(member_config(cfg, path), None, digest) for path in cfg.fold_teachers]}
    if cfg.teacher_module:
        return {"module": cfg.teacher_module, "state_sha256": state_digest(module) if module is not None else None}
    path = Path(cfg.teacher_weights if cfg.teacher_model else cfg.teacher).resolve()
    out: dict[str, Any] = {"model": cfg.teacher_model or "mlkd", "file": str(path)}
    if digest:
        out["sha256"] = _file_digest(path)
    else:
        out["mtime_ns"] = path.stat().st_mtime_ns
    if cfg.teacher_model:
        out["classes"] = cfg.teacher_classes if not isinstance(cfg.teacher_classes, str) else {
            "file": str(Path(cfg.teacher_classes).resolve()), "mtime_ns": Path(cfg.teacher_classes).stat().st_mtime_ns}
    return out


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _train_images(cfg: RunConfig) -> Callable[[], DataLoader]:
    """The fitted head's images: the training split at the student's transform without augmentation, as
    ``(images [B, 3, H, W], targets [B, q])`` batches in index order (built only when called)."""

    def factory() -> DataLoader:
        from mlkd.data import build_datasets  # the data package, only when a head is fitted

        train_set = build_datasets(dataclasses.replace(cfg, augment=False)).train
        return DataLoader(train_set, batch_size=min(cfg.batch_size, 64), shuffle=False, num_workers=cfg.workers)

    return factory


def _with_fitted_head(teacher: nn.Module, cfg: RunConfig, train_set: Dataset, teacher_input: ModelInput,
                      device: torch.device, key: dict[str, Any]) -> nn.Module:
    """The teacher with a label-wise head fitted to it (`mlkd.models.fitted_head.attach_fitted_head`).

    The only call into the fitted head. Under torchrun the first process fits (or reads) the head and
    the others read it from the cache once it is written. The random generators are restored afterwards,
    so that a run computes the same whether the head was fitted or read from the cache.

    """
    info = ddp.current_info()
    cache_dir = fitted_head_cache_dir(cfg)

    def attach() -> nn.Module:
        devices = [device] if device.type == "cuda" else []
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=devices):
                return attach_fitted_head(teacher, _train_images(cfg), teacher_input, cache_dir, key, device,
                                          run=run_teacher)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    if not info.enabled:
        return attach()
    if info.is_main:
        fitted = attach()
        ddp.barrier()
        return fitted
    ddp.barrier()  # the first process has fitted the head and written its cache
    return attach()


def _plain(value: Any) -> Any:
    """``value`` with anything that is not JSON (tensors, paths, ...) turned into plain values or text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor):
        return value.tolist()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def run_teacher(teacher: nn.Module, images: Tensor, index: Tensor | None = None) -> ModelOutput:
    """The teacher's outputs for ``images [B, 3, H, W]`` under its inference settings (`load_teacher`).

    ``index [B]``: the images' training-set indices, which cross-fitted teachers (`FoldTeachers`) need to
    pick each image's teacher; a single teacher ignores it.

    A teacher without recorded settings is simply called. With ``precision="bfloat16"`` the forward
    pass runs under bf16 autocast and the outputs come back in float32, so that the student's losses see
    the dtype they would see from a float32 teacher.
    """
    if isinstance(teacher, FoldTeachers):
        return teacher(images, index)
    settings = getattr(teacher, "inference_settings", {})
    try:
        if settings.get("precision", "float32") == "float32":
            return teacher(images)
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            out = teacher(images)
    except Exception as err:
        if settings.get("compile"):
            raise RuntimeError(f"the compiled teacher failed ({type(err).__name__}: {err}); "
                               "run without --compile-teacher") from err
        raise
    return ModelOutput(out.logits.float(),
                       None if out.label_embeddings is None else out.label_embeddings.float(),
                       [f.float() for f in out.features])


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the image batch in NHWC memory format (same values, another layout)."""
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])

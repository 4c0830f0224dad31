"""Run configuration: one dataclass, YAML load/save, and overrides.

Precedence, lowest first: the dataclass defaults (method.md §5), a YAML file (``--config``), then
explicit flags or keyword arguments. Unknown keys are errors that list the valid ones, so a typo in a
config file never silently falls back to a default. Config files are UTF-8 YAML without anchors and
aliases (`parse_yaml`).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The teacher's forward-pass precisions (`mlkd.engine.teacher`): --teacher-precision.
TEACHER_PRECISIONS = ("float32", "bfloat16")
# The distiller of `mlkd distill` and `mlkd.distill()` when neither the call nor its configuration names one.
DISTILL_METHOD = "l2d"
# What a run does with data-set labels its teacher has no output for (--teacher-missing-labels): refuse to
# start, naming them, or leave them out of the distillation terms (the student still learns them from BCE).
TEACHER_MISSING_LABELS = ("error", "exclude")


@dataclass
class RunConfig:
    """Everything one `train` or `distill` run needs.

    The defaults follow the paper's protocol (method.md §5): Adam, weight decay 1e-4 on weights only,
    OneCycle with 20 % warm-up, batch 64, 80 epochs, 224 px, summed BCE; except the learning rate,
    which by default follows the initialisation and the schedule's length (`default_lr`, resolved by
    `fit`; the paper's presets set its 1e-4).
    """

    # Data.
    dataset: str = "fashion_mosaic"
    data_root: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    # None: the data set's own validation split when it has one (csv: val.csv; `own_val_split`), else carve
    # `val_fraction` of the training split (seeded). A run records the split it used in config.yaml.
    val_split: str | None = None
    test_split: str = "test"
    val_fraction: float = 0.1
    # Train without one fold of the training set, ``[k, K]``: fold k of K (`mlkd.data.folds`), for a cross-fitted
    # teacher (`mlkd train --hold-out-fold k/K`; its students use ``fold_teachers``). Validation and test stay whole.
    hold_out_fold: list[int] | None = None
    img_size: int = 224
    # Side at which training images are read and augmented; each model gets its own resized copy. None: the
    # larger of img_size and the teacher's input, capped at the training images' own side (`resolve_read_size`,
    # recorded in config.yaml), so that a teacher sees its own resolution and the same augmented content as the
    # student, not upscaled student images, and the student is not trained on upsampled-then-shrunk copies.
    read_size: int | None = None
    augment: bool = True  # the paper's Cutout + RandAugment on training images
    normalize: bool | None = None  # None: ImageNet mean/std when the backbone was pretrained
    # Model (the one being trained: a teacher under `train`, the student under `distill`).
    model: str = "resnet34"
    model_options: dict[str, Any] = field(default_factory=dict)  # embed_dim, num_heads, ffn_dim, ...
    weights: str | None = None
    pretrained: bool = False
    # Distillation. The teacher is one of: an mlkd checkpoint (`teacher`), a timm classifier trained
    # anywhere (`teacher_model` + `teacher_weights`), or an nn.Module given to `mlkd.distill` (`teacher_module`
    # records its class; a module cannot be written into config.yaml, so resuming needs it again).
    teacher: str | None = None  # path of a teacher checkpoint written by `mlkd train`
    teacher_model: str | None = None  # timm architecture of a teacher trained elsewhere (needs teacher_weights)
    teacher_weights: str | None = None  # its state dict (.pth/.pt/.bin/.tar/.ckpt/.safetensors), loaded weights-only
    teacher_module: str | None = None  # set by mlkd.distill(teacher=<nn.Module>): the module's class
    # Cross-fitted teachers instead of one: K >= 2 mlkd checkpoints, each trained with ``hold_out_fold`` k of K
    # (one per fold); each teaches the training images of the fold it never saw (`mlkd.data.folds`).
    fold_teachers: list[str] | None = None
    # The teacher's output classes, in its output order: a text file (one name per line) or the names;
    # None: the data set's classes (then the teacher must have exactly one output per data-set class).
    teacher_classes: list[str] | str | None = None
    teacher_missing_labels: str = "error"  # TEACHER_MISSING_LABELS: data-set labels the teacher lacks
    # The input a teacher trained elsewhere expects; None: timm's pretrained_cfg of teacher_model (recorded in
    # teacher_input_source), or the run's images with teacher_same_input. A module teacher has no default.
    teacher_img_size: int | None = None
    teacher_mean: list[float] | None = None
    teacher_std: list[float] | None = None
    teacher_same_input: bool = False  # the teacher sees the student's images: img_size, values in [0, 1], no normalisation
    # Where each teacher input setting came from ({"img_size": ..., "mean_std": ...}); written by the run.
    teacher_input_source: dict[str, str] = field(default_factory=dict)
    # Folder of fitted teacher heads (a teacher without label-wise head under l2d/led/cd/id); None:
    # "fitted_heads" beside the run's folder. Reused by every run with the same teacher and training images.
    teacher_head_cache: str | None = None
    method: str = "vanilla"
    lambdas: dict[str, float] = field(default_factory=dict)  # {"cd": 50} -> lambda_cd=50
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"temperature": 4}
    cache_teacher: bool = False  # compute the teacher's outputs once per image and view, then read them back
    # Fixed augmented views per training image (mlkd.data.views). None: 8 with cache_teacher and augment,
    # else a fresh view every epoch. Also applies without a teacher (vanilla), so a comparison stays fair.
    teacher_views: int | None = None
    cache_limit_gib: float = 2.0  # refuse a teacher cache larger than this (views x images x outputs)
    teacher_precision: str = "float32"  # float32 | bfloat16: the teacher's forward pass under bf16 autocast
    compile_teacher: bool = False  # torch.compile the teacher (mlkd.engine.teacher)
    gather_embeddings: bool = False  # DDP: CD/ID see the global batch
    # Optimisation.
    epochs: int = 80
    schedule_epochs: int | None = None  # OneCycle length; None = epochs (the teacher uses 80, stops at 30)
    batch_size: int = 64  # per process under torchrun
    lr: float | None = None  # None: `default_lr`, resolved by `fit` once the data is read; paper presets: 1e-4
    weight_decay: float = 1e-4
    warmup: float = 0.2
    grad_clip: float | None = None
    seed: int = 0
    # Execution.
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False
    amp_dtype: str = "bfloat16"  # bfloat16 | float16 (float16 uses a gradient scaler)
    workers: int = 0
    threads: int | None = None  # torch CPU threads; None: automatic (mlkd.engine.threads)
    sync_bn: bool = False
    # Evaluation and output.
    threshold: float = 0.5
    output: str = "runs/run"
    resume: bool = False
    quiet: bool = False
    tensorboard: bool = True  # written when tensorboard is installed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the resolved configuration as YAML (atomically)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        tmp.replace(path)


# Data set options that may change when a run is resumed: they decide which broken files are left out,
# the fix that an unreadable-image error suggests, not what the run computes on readable data.
RESUME_MAY_CHANGE_OPTIONS = frozenset({"skip_unreadable"})


def resume_comparable(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the data set options that may change on resume (`RESUME_MAY_CHANGE_OPTIONS`)."""
    options = values.get("dataset_options")
    if not isinstance(options, dict):
        return values
    kept = {k: v for k, v in options.items() if k not in RESUME_MAY_CHANGE_OPTIONS}
    return {**values, "dataset_options": kept}


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def check_keys(values: dict[str, Any], source: str) -> None:
    """Raise a ValueError naming every key of ``values`` that `RunConfig` does not have."""
    names = _field_names()
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ValueError(f"unknown configuration key {key!r} in {source}{hint}; valid keys: {', '.join(names)}")


# Spellings of booleans accepted in YAML strings and KEY=VALUE options.
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class _WrongType(ValueError):
    """A value that does not fit its field's type; carries what was expected (internal)."""

    def __init__(self, key: str, expected: str, value: Any) -> None:
        super().__init__(f"{key} must be {expected}, got {value!r} ({type(value).__name__})")


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """``value`` converted to the annotated type ``kind`` of field ``key``, or `_WrongType`.

    YAML reads ``1e-3`` (no dot before the exponent) as a string, so numeric strings are accepted for
    numeric fields; floats must be finite, because an inf or NaN setting only shows up later as NaN losses.
    """
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(kind)):
            return None
        if len(args) == 1:
            return _coerce(key, value, args[0])
        # Several types (``list[str] | str``): the first that fits, in the order of the annotation.
        for arg in args:
            try:
                return _coerce(key, value, arg)
            except _WrongType:
                continue
        raise _WrongType(key, " or ".join(_type_name(a) for a in args), value)
    if kind is Any:
        return value
    if value is None:
        raise _WrongType(key, f"a {getattr(kind, '__name__', kind)} value (this field cannot be empty)", value)
    if origin is dict:
        _, value_kind = typing.get_args(kind)
        if not isinstance(value, dict):
            raise _WrongType(key, "a mapping of names to values (e.g. {name: value})", value)
        for name in value:
            if not isinstance(name, str):
                raise _WrongType(f"{key}: the name {name!r}", "a string", name)
        return {name: _coerce(f"{key}[{name!r}]", v, value_kind) for name, v in value.items()}
    if origin is list:
        (item_kind,) = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise _WrongType(key, f"a list of {_type_name(item_kind)} values (e.g. [a, b])", value)
        return [_coerce(f"{key}[{i}]", v, item_kind) for i, v in enumerate(value)]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _WrongType(key, "true or false", value)
    if kind is int:
        number = _number(value)
        if number is None or not math.isfinite(number) or number != int(number):
            raise _WrongType(key, "an integer", value)
        return int(number)
    if kind is float:
        number = _number(value)
        if number is None:
            raise _WrongType(key, "a number", value)
        if not math.isfinite(number):
            raise _WrongType(key, "a finite number", value)
        return float(number)
    if kind is str:
        # A folder or device may be written as a bare number in YAML (output: 2024); other types are slips.
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _WrongType(key, "a string", value)
    return value


def _type_name(kind: Any) -> str:
    """``list[str]`` -> ``"list of str"``, ``float`` -> ``"float"``: how a message names a field type."""
    if typing.get_origin(kind) is list:
        return f"list of {_type_name(typing.get_args(kind)[0])}"
    return getattr(kind, "__name__", str(kind))


def _number(value: Any) -> float | int | None:
    """``value`` as an int or float when it is a number or a numeric string; ``None`` otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            return None
    return None


def coerce_values(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Convert every value of ``values`` to the type of its `RunConfig` field.

    Args:
        values: field names (already checked by `check_keys`) to raw values, e.g. from YAML.
        source: where the values come from, for the message (a file path, "the arguments").

    Returns:
        A new dict with converted values (``"1e-3"`` -> ``0.001`` for a float field, ...).

    Raises:
        ValueError: a value that does not fit its field, naming the field, the value and ``source``.
    """
    hints = typing.get_type_hints(RunConfig)
    out = {}
    for key, value in values.items():
        try:
            out[key] = _coerce(key, value, hints[key])
        except _WrongType as err:
            raise ValueError(f"{source}: {err}") from None
    return out


class _AliasRefused(Exception):
    """A YAML alias met while composing (internal: `parse_yaml` turns it into a ValueError)."""

    def __init__(self, anchor: str, line: int) -> None:
        super().__init__(anchor, line)
        self.anchor, self.line = anchor, line


class _NoAliasLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses aliases (``*name``, ``<<: *name``) before anything is built.

    A few nested aliases of a few hundred bytes stand for gigabytes once a value is copied or
    compared (the "billion laughs"); a run configuration has no use for them.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(event.anchor, event.start_mark.line + 1)
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)``, but refusing anchors' aliases; errors name ``source``.

    Args:
        text: the YAML text.
        source: what the text is, for messages (``"config file run.yaml"``).

    Raises:
        ValueError: the text is not valid YAML, or uses an alias.
    """
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader: builds plain types only
    except _AliasRefused as err:
        raise ValueError(f"{source} uses the YAML alias *{err.anchor} (line {err.line}); mlkd refuses anchors and "
                         "aliases (&name, *name, <<: *name), because a few nested ones can expand to gigabytes: "
                         "write the values out instead") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{source} is not valid YAML: {err}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML configuration file into a dict, checking its keys and converting its values.

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: ``path`` is a folder (the message suggests its ``config.yaml`` when it has one).
        ValueError: the file is not UTF-8, not valid YAML, uses an alias, is not a mapping, or has an
            unknown key or a value that does not fit its field; each message names the file.
    """
    path = Path(path)
    if path.is_dir():
        inside = path / "config.yaml"
        hint = (f"did you mean {inside}?" if inside.is_file() else
                "pass a YAML file, e.g. a run folder's config.yaml or a preset from configs/")
        raise IsADirectoryError(f"config file {path} is a folder, not a YAML file; {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                         f"{err.start}); save it as UTF-8") from None
    values = parse_yaml(text, f"config file {path}") or {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values, got {type(values).__name__}")
    check_keys(values, str(path))
    return coerce_values(values, f"config file {path}")


def config_values(base: RunConfig | dict[str, Any] | str | Path | None) -> dict[str, Any]:
    """The checked and converted field values of a configuration given in any of its forms.

    Args:
        base: a `RunConfig`, a dict of its fields, the path of a YAML file, or ``None`` (no values).

    Raises:
        TypeError: ``base`` is of another type.
        ValueError: an unknown key or a value that does not fit its field (see `load_yaml`).
    """
    if isinstance(base, RunConfig):
        return base.to_dict()
    if isinstance(base, (str, Path)):
        return load_yaml(base)
    if base is not None and not isinstance(base, Mapping):
        raise TypeError(f"the configuration (config=...) must be a RunConfig, a dict of its fields or the path of a "
                        f"YAML file (str or Path), got {type(base).__name__}")
    values = dict(base or {})
    check_keys(values, "the configuration")
    return coerce_values(values, "the configuration")


def make_config(base: RunConfig | dict[str, Any] | str | Path | None = None, **overrides: Any) -> RunConfig:
    """Build a `RunConfig` from a base (config object, dict or YAML path) and keyword overrides.

    An override replaces the base's value; leave a field out to keep the base's. An explicit ``None``
    unsets a field that may be unset (``lr=None`` drops a preset's learning rate for the default rule,
    ``teacher=None`` drops its teacher); for a field that cannot be unset (``epochs=None``) it is an
    error. Dict-valued fields (``lambdas``, ``model_options``, ...) are merged key by key.

    Raises:
        TypeError: ``base`` is not one of the accepted types.
        ValueError: an unknown key, a value that does not fit its field, or one that cannot work
            (`validate`); the message names the key and the fix.
    """
    values = config_values(base)
    check_keys(overrides, "the arguments")
    hints = typing.get_type_hints(RunConfig)
    for key, value in overrides.items():
        if value is None and not _accepts_none(hints[key]):
            raise ValueError(f"{key}=None: {key} cannot be unset; leave it out to keep the configuration's value "
                             f"({values.get(key, getattr(RunConfig(), key))!r})")
    overrides = coerce_values(overrides, "the arguments")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    cfg = RunConfig(**values)
    validate(cfg)
    return cfg


def _accepts_none(kind: Any) -> bool:
    """Whether the annotated field type ``kind`` admits ``None`` (``X | None``, ``Any``)."""
    return kind is Any or type(None) in typing.get_args(kind)


# Peak learning rates of the default rule (Adam with OneCycle), chosen on validation splits of the
# settings recorded in docs/results.md ("Default learning rate").
LR_FROM_SCRATCH = 3e-3
LR_PRETRAINED = 1e-3
# A pretrained backbone fine-tuned over fewer optimizer steps than this gets LR_FROM_SCRATCH: a short
# OneCycle schedule spends a fifth of its steps warming up and anneals the rest, and at 1e-3 moves the
# model too little (backbone and the new head alike: a higher rate for the head alone did not close
# the gap). Chosen on validation runs of pretrained Lite0 at 56-280 steps (docs/results.md, "Default
# learning rate").
SHORT_SCHEDULE_STEPS = 200


def default_lr(cfg: RunConfig, total_steps: int) -> float:
    """The learning rate used when none is given: by how the trained model starts and how long it trains.

    A model trained from scratch gets `LR_FROM_SCRATCH`. A backbone that starts from pretrained weights
    (``pretrained`` or ``weights``) is fine-tuned at `LR_PRETRAINED`, unless the schedule is shorter than
    `SHORT_SCHEDULE_STEPS` optimizer steps, where it gets `LR_FROM_SCRATCH` too. The paper's 1e-4 is a
    fine-tuning rate for 80-epoch schedules and badly underfits models trained from scratch.

    Args:
        cfg: the run's configuration.
        total_steps: optimizer steps of the whole OneCycle schedule (``schedule_epochs`` or ``epochs``
            times the batches per epoch of one process).
    """
    return default_lr_and_reason(cfg, total_steps)[0]


def default_lr_and_reason(cfg: RunConfig, total_steps: int) -> tuple[float, str]:
    """`default_lr` and why it chose that rate, for the start-of-run log."""
    if not (cfg.pretrained or cfg.weights):
        return LR_FROM_SCRATCH, "the default for a model trained from scratch (set --lr to override)"
    if total_steps < SHORT_SCHEDULE_STEPS:
        return LR_FROM_SCRATCH, (f"the default for a pretrained model over a short schedule ({total_steps} optimizer "
                                 f"steps, fewer than {SHORT_SCHEDULE_STEPS}; set --lr to override)")
    return LR_PRETRAINED, (f"the default for fine-tuning a pretrained model over {total_steps} optimizer steps "
                           "(set --lr to override)")


def validate(cfg: RunConfig) -> None:
    """Convert every field to its annotated type (see `coerce_values`), then reject values that cannot
    work, naming the key and the fix."""
    for key, value in coerce_values(cfg.to_dict(), "the configuration").items():
        setattr(cfg, key, value)
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.schedule_epochs is not None and cfg.schedule_epochs < cfg.epochs:
        raise ValueError(f"schedule_epochs ({cfg.schedule_epochs}) must be >= epochs ({cfg.epochs})")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 (or unset for no clipping), got {cfg.grad_clip}")
    for name, weight in cfg.lambdas.items():
        if weight < 0:
            # A negative weight turns a distillation term into a reward for moving away from the teacher.
            raise ValueError(f"lambdas[{name!r}] (--lambda {name}=...) must be >= 0, got {weight}")
    if not 0 <= cfg.seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {cfg.seed}")
    if not 0 <= cfg.warmup < 1:
        raise ValueError(f"warmup is the warm-up fraction of OneCycle and must be in [0, 1), got {cfg.warmup}")
    if cfg.val_split is None and not 0 < cfg.val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1) when no val_split is given, got {cfg.val_fraction}")
    if cfg.img_size < 8:
        raise ValueError(f"img_size must be >= 8, got {cfg.img_size}")
    if cfg.read_size is not None and cfg.read_size < 8:
        raise ValueError(f"read_size must be >= 8 (or unset: the larger of img_size and the teacher's input), "
                         f"got {cfg.read_size}")
    if not cfg.output.strip():
        # Path("") is the current folder: an unset shell variable (--output "$DIR") would write there.
        raise ValueError(f"output is empty ({cfg.output!r}); name a folder, e.g. --output runs/my_run "
                         "(--output . writes into the current folder)")
    if cfg.amp_dtype not in ("bfloat16", "float16"):
        raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got {cfg.amp_dtype!r}")
    if not 0 < cfg.threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {cfg.threshold}")
    if cfg.workers < 0:
        raise ValueError(f"workers must be >= 0, got {cfg.workers}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"threads must be >= 1 (or unset for the automatic choice), got {cfg.threads}")
    if cfg.teacher_views is not None and cfg.teacher_views < 1:
        raise ValueError(f"teacher_views must be >= 1 (or unset), got {cfg.teacher_views}")
    if cfg.teacher_precision not in TEACHER_PRECISIONS:
        raise ValueError(f"teacher_precision must be one of {', '.join(map(repr, TEACHER_PRECISIONS))}, "
                         f"got {cfg.teacher_precision!r}")
    if not cfg.cache_limit_gib > 0:
        raise ValueError(f"cache_limit_gib must be > 0, got {cfg.cache_limit_gib}")
    _validate_teacher(cfg)


def _validate_teacher(cfg: RunConfig) -> None:
    """The teacher settings: one kind of teacher, and options only where they apply (see `RunConfig`)."""
    kinds = [name for name, value in (("teacher", cfg.teacher), ("teacher_model", cfg.teacher_model),
                                      ("teacher_module", cfg.teacher_module), ("fold_teachers", cfg.fold_teachers))
             if value]
    if cfg.hold_out_fold is not None:
        fold = cfg.hold_out_fold
        if len(fold) != 2 or not fold[1] >= 2 or not 0 <= fold[0] < fold[1]:
            raise ValueError(f"hold_out_fold is [k, K], fold k of K >= 2 folds with 0 <= k < K "
                             f"(--hold-out-fold 0/2), got {fold}")
        if cfg.fold_teachers:
            raise ValueError("hold_out_fold trains a cross-fitted teacher; its students train on every fold with "
                             "fold_teachers: drop one of them")
    if cfg.fold_teachers is not None:
        if len(cfg.fold_teachers) < 2:
            raise ValueError(f"fold_teachers (--fold-teachers) names one checkpoint per fold, at least 2, got "
                             f"{cfg.fold_teachers}; with one teacher, use --teacher")
        if len(set(cfg.fold_teachers)) != len(cfg.fold_teachers):
            raise ValueError(f"fold_teachers names a checkpoint twice: {cfg.fold_teachers}; give the best.pt of each "
                             "fold's teacher once")
        if len(kinds) > 1:
            raise ValueError(f"fold_teachers (--fold-teachers) replaces the teacher; drop "
                             f"{' and '.join(k for k in kinds if k != 'fold_teachers')}")
    if len(kinds) > 1:
        if "teacher_module" in kinds:
            raise ValueError(f"the teacher is given twice: as a module (mlkd.distill(teacher=<nn.Module>)) and as "
                             f"{' and '.join(k for k in kinds if k != 'teacher_module')}; pass one teacher")
        raise ValueError("--teacher (a best.pt written by mlkd train) and --teacher-model (a timm classifier trained "
                         "elsewhere, with --teacher-weights) are exclusive: pass one of them")
    if cfg.teacher_model and not cfg.teacher_weights:
        raise ValueError(f"--teacher-model {cfg.teacher_model} needs --teacher-weights FILE, the state dict of the "
                         "trained teacher (a classifier with one output per class); timm's random initialisation "
                         "has nothing to teach")
    if cfg.teacher_weights and not cfg.teacher_model:
        raise ValueError(f"--teacher-weights {cfg.teacher_weights} needs --teacher-model NAME, the timm architecture "
                         "the weights belong to (e.g. --teacher-model resnet50)")
    if cfg.teacher_missing_labels not in TEACHER_MISSING_LABELS:
        raise ValueError(f"teacher_missing_labels (--teacher-missing-labels) must be one of "
                         f"{', '.join(map(repr, TEACHER_MISSING_LABELS))}, got {cfg.teacher_missing_labels!r}")
    external = bool(cfg.teacher_model or cfg.teacher_module)
    if (cfg.teacher or cfg.fold_teachers) and not external:
        # An mlkd checkpoint records its classes and its input; these options would contradict it.
        given = [flag for flag, value in (("--teacher-classes", cfg.teacher_classes),
                                          ("--teacher-img-size", cfg.teacher_img_size),
                                          ("--teacher-mean", cfg.teacher_mean), ("--teacher-std", cfg.teacher_std),
                                          ("--teacher-same-input", cfg.teacher_same_input)) if value]
        if given:
            raise ValueError(f"{', '.join(given)} apply to a teacher trained elsewhere (--teacher-model, or a module "
                             f"given to mlkd.distill); the mlkd checkpoint --teacher {cfg.teacher or cfg.fold_teachers} records its "
                             "own classes, resolution and normalisation: drop them")
    if isinstance(cfg.teacher_classes, list):
        if not cfg.teacher_classes:
            raise ValueError("teacher_classes is an empty list; give the teacher's class names in its output order, "
                             "or leave it unset for the data set's classes")
        repeated = sorted({c for c in cfg.teacher_classes if cfg.teacher_classes.count(c) > 1})
        if repeated:
            raise ValueError(f"teacher_classes names {', '.join(map(repr, repeated))} more than once; each output of "
                             "the teacher has one class")
    elif isinstance(cfg.teacher_classes, str) and not cfg.teacher_classes.strip():
        raise ValueError("teacher_classes (--teacher-classes) is an empty path; name the text file of the teacher's "
                         "classes (one per line, in its output order)")
    if cfg.teacher_img_size is not None and cfg.teacher_img_size < 8:
        raise ValueError(f"teacher_img_size must be >= 8, got {cfg.teacher_img_size}")
    if (cfg.teacher_mean is None) != (cfg.teacher_std is None):
        given, missing = ("teacher_mean", "teacher_std") if cfg.teacher_std is None else ("teacher_std", "teacher_mean")
        raise ValueError(f"{given} is given without {missing}: the teacher's normalisation needs both "
                         "(--teacher-mean R,G,B --teacher-std R,G,B; 0,0,0 and 1,1,1 for none)")
    if cfg.teacher_mean is not None:
        if len(cfg.teacher_mean) != 3 or len(cfg.teacher_std) != 3:
            raise ValueError(f"teacher_mean and teacher_std need one value per colour channel (3), got "
                             f"{cfg.teacher_mean} and {cfg.teacher_std}")
        if not all(s > 0 for s in cfg.teacher_std):
            raise ValueError(f"teacher_std values must be > 0, got {cfg.teacher_std}")

"""Run configuration: one dataclass, YAML load/save, and overrides.

Precedence, lowest first: the dataclass defaults (method.md §5), a YAML file (``--config``), then
explicit flags or keyword arguments. Unknown keys are errors that list the valid ones, so a typo in a
config file never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class RunConfig:
    """Everything one `train` or `distill` run needs.

    The defaults follow the paper's protocol (method.md §5): Adam, lr 1e-4, weight decay 1e-4 on
    weights only, OneCycle with 20 % warm-up, batch 64, 80 epochs, 224 px, summed BCE.
    """

    # Data.
    dataset: str = "fashion_mosaic"
    data_root: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str | None = None  # None: carve `val_fraction` of the training split (seeded)
    test_split: str = "test"
    val_fraction: float = 0.1
    img_size: int = 224
    augment: bool = True  # the paper's Cutout + RandAugment on training images
    normalize: bool | None = None  # None: ImageNet mean/std when the backbone was pretrained
    # Model (the one being trained: a teacher under `train`, the student under `distill`).
    model: str = "resnet34"
    model_options: dict[str, Any] = field(default_factory=dict)  # embed_dim, num_heads, ffn_dim, ...
    weights: str | None = None
    pretrained: bool = False
    # Distillation.
    teacher: str | None = None  # path of a teacher checkpoint written by `mlkd train`
    method: str = "vanilla"
    lambdas: dict[str, float] = field(default_factory=dict)  # {"cd": 50} -> lambda_cd=50
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"temperature": 4}
    cache_teacher: bool = False
    gather_embeddings: bool = False  # DDP: CD/ID see the global batch
    # Optimisation.
    epochs: int = 80
    schedule_epochs: int | None = None  # OneCycle length; None = epochs (the teacher uses 80, stops at 30)
    batch_size: int = 64  # per process under torchrun
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup: float = 0.2
    grad_clip: float | None = None
    seed: int = 0
    # Execution.
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False
    amp_dtype: str = "bfloat16"  # bfloat16 | float16 (float16 uses a gradient scaler)
    workers: int = 0
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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML configuration file into a dict, checking its keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values, got {type(values).__name__}")
    check_keys(values, str(path))
    return values


def make_config(base: RunConfig | dict[str, Any] | str | Path | None = None, **overrides: Any) -> RunConfig:
    """Build a `RunConfig` from a base (config object, dict or YAML path) and keyword overrides.

    Overrides whose value is ``None`` are ignored, so unset CLI flags keep the file's values.
    Dict-valued fields (``lambdas``, ``model_options``, ...) are merged key by key.
    """
    if isinstance(base, RunConfig):
        values = base.to_dict()
    elif isinstance(base, (str, Path)):
        values = load_yaml(base)
    else:
        values = dict(base or {})
        check_keys(values, "the configuration")
    check_keys(overrides, "the arguments")
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    cfg = RunConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Reject values that cannot work, naming the key and the fix."""
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.schedule_epochs is not None and cfg.schedule_epochs < cfg.epochs:
        raise ValueError(f"schedule_epochs ({cfg.schedule_epochs}) must be >= epochs ({cfg.epochs})")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    if not 0 <= cfg.warmup < 1:
        raise ValueError(f"warmup is the warm-up fraction of OneCycle and must be in [0, 1), got {cfg.warmup}")
    if cfg.val_split is None and not 0 < cfg.val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1) when no val_split is given, got {cfg.val_fraction}")
    if cfg.img_size < 8:
        raise ValueError(f"img_size must be >= 8, got {cfg.img_size}")
    if cfg.amp_dtype not in ("bfloat16", "float16"):
        raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got {cfg.amp_dtype!r}")
    if not 0 < cfg.threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {cfg.threshold}")
    if cfg.workers < 0:
        raise ValueError(f"workers must be >= 0, got {cfg.workers}")

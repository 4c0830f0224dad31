"""Registry of data sets: `create_dataset(name, root, split, transform, **options)`, `list_datasets()` and
`own_val_split(name, root)`.

A reader registers its class with ``@register_dataset("name", splits=(...))``. The class is built as
``cls(root, split, transform, **options)``; its keyword-only constructor parameters are its options, so
the registry can reject an unknown split or option with the list of valid ones before any file is read.
"""
from __future__ import annotations

import difflib
import inspect
import os
from typing import Callable, Sequence, TypeVar

import numpy as np
from torch.utils.data import Dataset

from mlkd.data.base import Transform

T = TypeVar("T")


class _Entry:
    def __init__(self, cls: Callable[..., Dataset], splits: tuple[str, ...]) -> None:
        self.cls = cls
        self.splits = splits
        params = inspect.signature(cls).parameters.values()
        self.options = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(name: str, splits: Sequence[str]) -> Callable[[T], T]:
    """Class decorator that makes a data set available to `create_dataset` under ``name``.

    Args:
        name: the registry name.
        splits: the split names the data set accepts.
    """

    def wrap(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"data set {name!r} is registered twice")
        _REGISTRY[name] = _Entry(cls, tuple(splits))  # type: ignore[arg-type]
        return cls

    return wrap


def list_datasets() -> list[str]:
    """Names accepted by `create_dataset`, sorted."""
    return sorted(_REGISTRY)


def dataset_splits(name: str) -> tuple[str, ...]:
    """The splits data set ``name`` accepts (raises like `create_dataset` for an unknown name)."""
    return _entry(name).splits


def dataset_options(name: str) -> dict[str, object]:
    """The options of data set ``name`` with their defaults (raises like `create_dataset`)."""
    return dict(_entry(name).options)


def own_val_split(name: str, root: str | os.PathLike | None) -> str | None:
    """The validation split that data set ``name`` holds under ``root``, or ``None``.

    A run that names no ``val_split`` validates on this split; with ``None`` it carves its validation
    images from the training split. A reader offers one through a static method
    ``own_val_split(root) -> str | None`` that only looks for files (it must not parse them). Only ``csv``
    does (``"val"`` when ``root`` holds ``val.csv``); the other readers' presets carve, and keep doing so.
    """
    hook = getattr(_entry(name).cls, "own_val_split", None)
    return None if hook is None else hook(root)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown data set {name!r}.{hint} Valid names: {', '.join(list_datasets())}") from None


def create_dataset(
    name: str,
    root: str | os.PathLike | None,
    split: str,
    transform: Transform | None = None,
    **options,
) -> Dataset:
    """Build data set ``name`` for ``split``.

    Every data set has ``classes`` (``q`` label names), ``targets`` (``[n, q]`` float32, no image decoded)
    and ``__getitem__(i) -> (transform(PIL RGB image), target [q] float32 in {0, 1})``; with
    ``transform=None`` the image becomes a ``[3, H, W]`` float32 tensor in [0, 1].

    Args:
        name: one of `list_datasets()`.
        root: the data set folder in its official layout (may be ``None`` for ``fashion_mosaic``).
        split: one of `dataset_splits(name)`.
        transform: callable applied to each PIL RGB image (see `build_transforms`).
        **options: the data set's own options (see `dataset_options(name)` and the reader's docs).

    Raises:
        ValueError: unknown name, split or option; the message lists the valid ones.
        FileNotFoundError, DataFormatError: from the reader, naming the file and what is wrong.
    """
    entry = _entry(name)
    if split not in entry.splits:
        raise ValueError(f"data set {name!r} has no split {split!r}. Valid splits: {', '.join(entry.splits)}")
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in entry.options.items()) or "none"
        raise ValueError(f"data set {name!r} has no option {', '.join(map(repr, unknown))}. Valid options: {valid}")
    for key, value in options.items():
        _check_option_type(name, key, value, entry.options[key])
    return entry.cls(root, split, transform, **options)


def _check_option_type(dataset: str, key: str, value: object, default: object) -> None:
    """Refuse a non-boolean value for a switch (``skip_unreadable=maybe`` would be read as true).

    Other kinds of option are checked by their reader, with its own ranges.
    """
    if isinstance(default, bool) and not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"data set {dataset!r} option {key} must be true or false (default {default!r}), "
                         f"got {value!r}")

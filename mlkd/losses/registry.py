"""Registry of distillers: `create_distiller(name, **kwargs)` and `list_distillers()`.

A distiller module registers itself with ``@register_distiller("name")``; the registry only maps names
to constructors and knows nothing about any particular method.
"""
from __future__ import annotations

import difflib
from typing import Callable, TypeVar

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
T = TypeVar("T")


def register_distiller(name: str) -> Callable[[T], T]:
    """Class decorator that makes a distiller available to `create_distiller` under ``name``."""

    def wrap(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"distiller {name!r} is registered twice")
        _REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    return wrap


def list_distillers() -> list[str]:
    """Names accepted by `create_distiller`, sorted."""
    return sorted(_REGISTRY)


def create_distiller(name: str, **kwargs) -> nn.Module:
    """Build the distiller registered as ``name`` with keyword arguments ``kwargs``.

    Raises:
        ValueError: ``name`` is unknown; the message lists the valid names.
    """
    try:
        cls = _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown distiller {name!r}.{hint} Valid names: {', '.join(list_distillers())}"
        ) from None
    return cls(**kwargs)

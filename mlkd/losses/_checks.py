"""Input validation and numeric set-up shared by every loss.

Shape checks always run: they read only metadata and cost nothing. Value checks (labels in {0, 1},
no NaN/inf) read the data and force a host-device synchronisation on GPU, so every loss takes a
``validate`` flag that switches them off.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor


def check_tensor(value: object, name: str, ndim: int, shape_desc: str) -> Tensor:
    """Check that ``value`` is a floating or integer tensor with ``ndim`` non-empty dimensions.

    Args:
        value: the argument to check.
        name: the argument's name as the caller knows it (e.g. ``"student_logits"``).
        ndim: the required number of dimensions.
        shape_desc: the expected shape in words, e.g. ``"[N, q]"``, for the error message.

    Returns:
        ``value`` itself.

    Raises:
        ValueError: ``value`` is not a tensor, has the wrong number of dimensions or an empty one.
    """
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shape_desc}, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(
            f"{name} must be a {ndim}-D tensor of shape {shape_desc}, got {value.dim()}-D shape {tuple(value.shape)}"
        )
    if value.numel() == 0:
        raise ValueError(f"{name} must have shape {shape_desc} with no empty dimension, got {tuple(value.shape)}")
    return value


def check_leading(value: Tensor, name: str, expected: tuple[int, ...], ref_name: str, shape_desc: str) -> None:
    """Check that the first ``len(expected)`` sizes of ``value`` equal ``expected``.

    Args:
        value: tensor to check.
        name: its argument name.
        expected: the leading sizes it must have (taken from ``ref_name``).
        ref_name: the argument the sizes come from, named in the message.
        shape_desc: the expected shape in words, e.g. ``"[N, q, d_t]"``.

    Raises:
        ValueError: the leading sizes differ.
    """
    got = tuple(value.shape[: len(expected)])
    if got != tuple(expected):
        raise ValueError(
            f"{name} must have shape {shape_desc} with leading sizes {tuple(expected)} matching {ref_name}, "
            f"got shape {tuple(value.shape)}"
        )


def check_finite(value: Tensor, name: str) -> None:
    """Raise if ``value`` holds NaN or inf (a data-dependent check: syncs on GPU).

    Raises:
        ValueError: naming ``name`` and how many entries are not finite.
    """
    if not value.is_floating_point():
        return
    # Fast path: any NaN/inf makes the sum non-finite, and one reduction allocates nothing the size
    # of the input. A non-finite sum of finite values (overflow) is ruled out by the exact check.
    if bool(torch.isfinite(value.sum())) or bool(torch.isfinite(value).all()):
        return
    bad = int((~torch.isfinite(value)).sum())
    raise ValueError(f"{name} contains NaN or inf ({bad} of {value.numel()} entries); expected finite values")


def check_binary(targets: Tensor, name: str = "targets") -> None:
    """Raise unless every entry of ``targets`` is 0 or 1 (a data-dependent check: syncs on GPU).

    Raises:
        ValueError: naming ``name`` and one offending value.
    """
    ok = (targets == 0) | (targets == 1)
    if not bool(ok.all()):
        bad = targets[~ok].flatten()[0].item()
        raise ValueError(f"{name} must contain only 0 and 1 (multi-hot labels), found value {bad!r}")


def check_positive(value: float, name: str) -> None:
    """Raise unless ``value`` is a finite number > 0 (temperatures)."""
    if not (isinstance(value, (int, float)) and value > 0 and value != float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_targets(targets: object, n: int, q: int, ref_name: str, validate: bool, name: str = "targets") -> Tensor:
    """Check a ``[N, q]`` multi-hot target tensor against ``(N, q)`` taken from ``ref_name``.

    Returns:
        ``targets`` as a boolean mask ``[N, q]``.
    """
    targets = check_tensor(targets, name, 2, "[N, q]")
    check_leading(targets, name, (n, q), ref_name, "[N, q]")
    if validate:
        check_binary(targets, name)
    return targets.bool() if targets.dtype != torch.bool else targets


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a loss computes in: float64 if any input is float64, else float32.

    Half-precision inputs (autocast, bf16 models) are promoted so that sums over many labels and
    pairs do not lose precision or overflow.
    """
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Context that switches autocast off on ``device`` so that a loss really runs in float32/64."""
    if torch.amp.autocast_mode.is_autocast_available(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield

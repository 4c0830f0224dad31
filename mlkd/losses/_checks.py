"""Input validation and numeric set-up shared by every loss.

Shape, type and device checks always run: they read only metadata and cost nothing. Value checks
(labels in {0, 1}, no NaN/inf) read the data and force a host-device synchronisation on GPU, so every
loss takes a ``validate`` flag that switches them off. Loss weights are checked once, when a
distiller is built (`check_weight`).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from mlkd.outputs import ModelOutput


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


def check_weight(value: object, name: str) -> float:
    """``value`` as a float, if it is a finite number >= 0 (a loss weight: ``lambda_*``, ``bce_weight``).

    A negative weight turns its term into a reward for moving away from the teacher (or, for
    ``bce_weight``, from the labels), and NaN or inf makes every step's loss non-finite; both used to be
    found only at the first training step, if at all. Numeric strings are accepted (YAML and
    ``--method-option`` read ``1e-3`` as a string).

    Args:
        value: the weight as given.
        name: the constructor argument, e.g. ``"lambda_cd"``, for the message.

    Returns:
        ``float(value)``.

    Raises:
        ValueError: ``value`` is not a number, or is negative, NaN or infinite.
    """
    number = None
    if not isinstance(value, bool):
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass
    if number is None or not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} is a loss weight and must be a finite number >= 0 (0 switches its term off), "
                         f"got {value!r}")
    return number


def check_outputs(student: object, teacher: object) -> None:
    """Raise unless ``student`` is a `ModelOutput` and ``teacher`` one or ``None``.

    A distiller reads named fields (``logits``, ``label_embeddings``, ``features``); a bare tensor
    would otherwise fail with an AttributeError deep inside the loss.

    Raises:
        TypeError: naming the argument, the type it got and how to wrap a tensor.
    """
    for who, value, optional in (("student", student, False), ("teacher", teacher, True)):
        if isinstance(value, ModelOutput) or (optional and value is None):
            continue
        raise TypeError(f"{who} must be the model's ModelOutput{' or None' if optional else ''}, got "
                        f"{type(value).__name__}; pass the model's ModelOutput, e.g. ModelOutput(logits=...)")


def check_devices(tensors: Iterable[tuple[str, object]]) -> None:
    """Raise unless every tensor among ``tensors`` lies on one real device (metadata only: no sync).

    Args:
        tensors: ``(name, value)`` pairs as the caller knows them (``"teacher.logits"``); values that are
            not tensors are skipped (their own checks name them).

    Raises:
        ValueError: a tensor on the meta device (a shape without values), or tensors on different
            devices; the message names each tensor and its device.
    """
    named = [(name, value) for name, value in tensors if isinstance(value, Tensor)]
    meta = [name for name, value in named if value.is_meta]
    if meta:
        raise ValueError(f"{', '.join(meta)} {'is' if len(meta) == 1 else 'are'} on the meta device (a shape without "
                         "values), so no loss can be computed; put every input on a real device (a model built on "
                         "the meta device must first be materialised, e.g. model.to_empty(device='cpu'), and its "
                         "weights loaded)")
    if len({value.device for _, value in named}) > 1:
        where = ", ".join(f"{name} on {value.device}" for name, value in named)
        raise ValueError(f"the loss's inputs are on different devices: {where}; move both models and the targets "
                         "to one device (e.g. .to('cuda'))")


def output_tensors(who: str, output: ModelOutput | None, embeddings: bool, features: bool) -> list[tuple[str, object]]:
    """``(name, tensor)`` pairs of the fields of ``output`` that a distiller reads, for `check_devices`.

    Args:
        who: ``"student"`` or ``"teacher"``.
        output: the model's outputs; ``None`` gives no pairs.
        embeddings: include ``label_embeddings``.
        features: include every entry of ``features``.
    """
    if output is None:
        return []
    pairs: list[tuple[str, object]] = [(f"{who}.logits", output.logits)]
    if embeddings:
        pairs.append((f"{who}.label_embeddings", output.label_embeddings))
    if features and isinstance(output.features, (list, tuple)):
        pairs += [(f"{who}.features[{i}]", f) for i, f in enumerate(output.features)]
    return pairs


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

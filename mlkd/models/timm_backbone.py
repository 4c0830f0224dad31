"""Any timm model as an mlkd backbone, through timm's own generic APIs (no per-family code).

mlkd uses three members every timm model has: ``forward_features`` (the final map the classifier would
read, e.g. 1280 channels for MobileNetV2 after its conv head), ``forward_intermediates`` (that final map
plus the stage maps listed in ``feature_info``) and ``num_features``.
"""
from __future__ import annotations

import logging
from typing import Any

import timm
from timm.data import resolve_model_data_config
from torch import nn

logger = logging.getLogger(__name__)


def create_timm_backbone(
    name: str, pretrained: bool, img_size: int | tuple[int, int], in_chans: int, **kwargs: Any
) -> nn.Module:
    """Create a timm model without its classifier.

    ``img_size`` is passed only to models whose constructor takes it (transformers such as Swin or ViT
    build position tables and attention windows for it); convolutional nets accept any size anyway.

    Args:
        name: a timm model name (optionally with a pretrained tag, e.g. ``resnet50.a1_in1k``).
        pretrained: load timm's pretrained weights (needs the internet or a local timm cache).
        img_size: input size the model will see, ``int`` or ``(H, W)``.
        in_chans: input channels.
        **kwargs: passed to `timm.create_model` (e.g. ``drop_path_rate``).

    Returns:
        The timm model with ``num_classes=0`` (classifier removed).

    Raises:
        ValueError: the model class refused ``kwargs`` (an unknown name or a value of the wrong type).
    """
    common = dict(pretrained=pretrained, num_classes=0, in_chans=in_chans, **kwargs)
    try:
        try:
            return timm.create_model(name, img_size=img_size, **common)
        except TypeError as err:
            # timm forwards kwargs to the model class; CNN classes reject img_size with this TypeError.
            if "img_size" not in str(err):
                raise
        return timm.create_model(name, **common)
    except TypeError as err:
        if not kwargs:
            raise
        raise ValueError(f"timm model {name!r} refused the options {', '.join(sorted(kwargs))} ({err}); check the "
                         "--model-option names and values against the model's constructor") from err


def final_layout(backbone: nn.Module) -> str:
    """Layout of ``forward_features``' output: ``"NCHW"``, ``"NHWC"`` (e.g. Swin) or ``"NLC"`` (tokens).

    timm marks channels-last models with an ``output_fmt`` attribute; ViT-style models, whose output is a
    token sequence with prefix (class) tokens, carry ``num_prefix_tokens``.
    """
    fmt = getattr(backbone, "output_fmt", None)
    if fmt is not None:
        return str(getattr(fmt, "value", fmt))
    if hasattr(backbone, "num_prefix_tokens"):
        return "NLC"
    return "NCHW"


def data_config(backbone: nn.Module) -> dict[str, Any]:
    """Preprocessing the backbone's pretrained weights expect, from timm's ``pretrained_cfg``.

    Returns:
        ``{"mean": [...], "std": [...], "input_size": [C, H, W], "interpolation": str, "crop_pct": float,
        "crop_mode": str}`` with lists instead of tuples so that the dict is JSON/YAML-serialisable.
    """
    cfg = resolve_model_data_config(backbone)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}

"""`create_model` and the registry of built-in backbones; every timm model name works as well."""
from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Callable

import timm
from torch import nn

from mlkd.models.head import LabelWiseHead
from mlkd.models.model import MultiLabelModel
from mlkd.models.timm_backbone import create_timm_backbone, data_config, final_layout
from mlkd.models.tiny_cnn import small_cnn, tiny_cnn
from mlkd.models.weights import load_weights

logger = logging.getLogger(__name__)

_BUILTINS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a built-in backbone constructor ``fn(in_chans=3) -> backbone`` as ``name``.

    The backbone must provide ``forward_features``, ``forward_intermediates``, ``num_features`` and
    ``feature_info`` like a timm model (see `mlkd.models.tiny_cnn.BuiltinCNN`).
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILTINS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILTINS[name] = fn
        return fn

    return wrap


register_model("tiny_cnn")(tiny_cnn)
register_model("small_cnn")(small_cnn)


def list_models(include_timm: bool = False) -> list[str]:
    """Names accepted by `create_model`.

    The built-in CNNs are always listed; every timm model name (``timm.list_models()``, optionally with
    a pretrained tag such as ``resnet50.a1_in1k``) works too.

    Args:
        include_timm: also list every timm architecture name.
    """
    names = sorted(_BUILTINS)
    return names + timm.list_models() if include_timm else names


def _check_name(name: str) -> None:
    """Raise a ValueError with close-name suggestions when ``name`` is neither built-in nor timm."""
    if name in _BUILTINS:
        return
    arch, _ = timm.models.split_model_name_tag(name)
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(name, list(_BUILTINS) + timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown model {name!r}.{hint} Use a built-in ({', '.join(sorted(_BUILTINS))}) or any name of "
        "timm.list_models()."
    )


def create_model(
    name: str,
    num_classes: int,
    embed_dim: int | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    learn_queries: bool = False,
    img_size: int | tuple[int, int] | list[int] = 224,
    *,
    num_heads: int | None = None,
    ffn_dim: int | None = None,
    dropout: float = 0.1,
    in_chans: int = 3,
    strict: bool = True,
    **kwargs: Any,
) -> MultiLabelModel:
    """Create a multi-label model: a backbone with the label-wise embedding head (method.md §4).

    ``model(x)`` returns a `ModelOutput` (logits ``[N, q]``, label embeddings ``[N, q, d]``, stage
    features); ``model.forward_logits(x)`` returns only the logits, cheaply.

    Args:
        name: a built-in (`list_models()`) or any timm model name.
        num_classes: number of labels ``q`` (at least 1).
        embed_dim: label-embedding width ``d``; ``None`` follows the backbone (`default_head_dims`:
            the widest of 768, 512, ... 32 whose head is no larger than the backbone; the paper's
            768 for ResNet-18 and larger).
        pretrained: load timm's pretrained weights into the backbone (needs the internet or timm's
            cache; not for built-ins).
        weights: a local checkpoint (``.safetensors``/``.pt``/``.pth``; whole model or backbone only) or
            a packaged name ``"efficientnet-lite0/1/2"``; loaded after ``pretrained``.
        learn_queries: train the label queries instead of keeping them random and frozen.
        img_size: input size, ``int`` or ``(H, W)``; given to timm models that take it (Swin, ViT).
        num_heads: attention heads of the head (``None``: ``d / 32``, at most 8).
        ffn_dim: feed-forward width of the head (``None``: ``8d / 3``, the paper's 2048 at d = 768).
        dropout: dropout of the head.
        in_chans: input channels.
        strict: with ``weights``, raise on any missing, unexpected or mismatched key; if False, load
            what matches and log the rest (the report is kept as ``model.weights_report``).
        **kwargs: passed to `timm.create_model` (timm backbones only).

    Returns:
        The `MultiLabelModel`; ``create_model(**model.model_args)`` rebuilds its architecture.

    Raises:
        ValueError: unknown name (with suggestions), ``num_classes < 1``, invalid head sizes, options a
            built-in does not take, or weights that do not fit.
    """
    if not isinstance(name, str):
        raise ValueError(f"the model name must be a string, got {name!r}")
    _check_name(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    _check_options(embed_dim=embed_dim, num_heads=num_heads, ffn_dim=ffn_dim, in_chans=in_chans, dropout=dropout,
                   img_size=img_size, pretrained=pretrained, learn_queries=learn_queries, strict=strict)
    if isinstance(img_size, list):
        img_size = tuple(img_size)  # type: ignore[assignment]
    if name in _BUILTINS:
        if pretrained:
            raise ValueError(f"built-in model {name!r} has no pretrained weights; pass weights=PATH instead")
        if kwargs:
            raise ValueError(
                f"built-in model {name!r} takes no backbone options, got {', '.join(sorted(kwargs))}; "
                "these are only for timm models"
            )
        backbone = _BUILTINS[name](in_chans=in_chans)
        config = None
    else:
        backbone = create_timm_backbone(name, pretrained, img_size, in_chans, **kwargs)
        config = data_config(backbone)
    embed_dim, num_heads, ffn_dim = default_head_dims(
        sum(p.numel() for p in backbone.parameters()), int(backbone.num_features), num_classes,
        embed_dim, num_heads, ffn_dim)
    head = LabelWiseHead(
        int(backbone.num_features), num_classes, embed_dim=embed_dim, num_heads=num_heads,
        ffn_dim=ffn_dim, dropout=dropout, learn_queries=learn_queries,
    )
    model_args = dict(
        name=name, num_classes=num_classes, embed_dim=embed_dim, learn_queries=learn_queries,
        img_size=list(img_size) if isinstance(img_size, tuple) else img_size,
        num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout, in_chans=in_chans, **kwargs,
    )
    model = MultiLabelModel(backbone, head, final_layout(backbone), in_chans, model_args, config)
    if weights is not None:
        model.weights_report = load_weights(model, weights, strict=strict)
        logger.info("loaded %d tensors from %s into the %s", len(model.weights_report.loaded),
                    model.weights_report.source, model.weights_report.target)
    return model


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_options(*, embed_dim: Any, num_heads: Any, ffn_dim: Any, in_chans: Any, dropout: Any, img_size: Any,
                   pretrained: Any, learn_queries: Any, strict: Any) -> None:
    """Refuse option values of the wrong type before they reach arithmetic (a ``TypeError`` deep inside).

    Options usually come from ``--model-option KEY=VALUE`` or a config's ``model_options``, so each message
    names the option, the type it takes and the command-line form.

    Raises:
        ValueError: the first invalid option, named.
    """
    def refuse(option: str, wants: str, value: Any, example: str) -> ValueError:
        return ValueError(f"model option {option} must be {wants}, got {value!r} "
                          f"(e.g. --model-option {option}={example})")

    for option, value, example in (("embed_dim", embed_dim, "256"), ("num_heads", num_heads, "4"),
                                   ("ffn_dim", ffn_dim, "512")):
        if value is not None and not _is_positive_int(value):
            raise refuse(option, "a positive integer, or unset for the default", value, example)
    if not _is_positive_int(in_chans):
        raise refuse("in_chans", "a positive integer", in_chans, "3")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise refuse("dropout", "a number in [0, 1)", dropout, "0.1")
    sizes = img_size if isinstance(img_size, (tuple, list)) else (img_size,)
    if not 1 <= len(sizes) <= 2 or not all(_is_positive_int(v) for v in sizes):
        raise ValueError(f"img_size must be a positive integer or a pair (H, W) of them, got {img_size!r}")
    for option, value in (("pretrained", pretrained), ("learn_queries", learn_queries), ("strict", strict)):
        if not isinstance(value, bool):
            raise refuse(option, "true or false", value, "true")


# Head widths tried from the widest down; the paper's head (d = 768) is the first.
_HEAD_WIDTHS = (768, 512, 384, 256, 192, 128, 96, 64, 32)


def head_parameter_count(in_features: int, num_classes: int, embed_dim: int, ffn_dim: int) -> int:
    """Trainable parameters of a `LabelWiseHead` with frozen queries (weights and biases)."""
    d = embed_dim
    return ((in_features + 1) * d          # token projection
            + 4 * (d * d + d)              # attention: query, key, value and output projections
            + (d + 1) * ffn_dim + (ffn_dim + 1) * d  # feed-forward
            + 4 * d                        # two LayerNorms
            + num_classes * (d + 1))       # group FC


def default_head_dims(backbone_params: int, in_features: int, num_classes: int, embed_dim: int | None = None,
                      num_heads: int | None = None, ffn_dim: int | None = None) -> tuple[int, int, int]:
    """Head sizes ``(embed_dim, num_heads, ffn_dim)`` that follow the backbone, filling in the ``None`` ones.

    The width is the largest of 768, 512, 384, ..., 32 whose head has no more parameters than the
    backbone, so a small backbone does not carry a head many times its size (a 47 k-parameter
    ``tiny_cnn`` gets d = 64 rather than a 5.6 M-parameter d = 768 head), while ResNet-18 and larger
    get the paper's head (d = 768, 8 heads, feed-forward 2048). Feed-forward width 8d/3 and
    d/32 attention heads (1 to 8) keep the paper's proportions.
    """
    def fill(d: int) -> tuple[int, int, int]:
        heads = num_heads
        if heads is None:  # the largest divisor of d up to d / 32 (at most 8)
            heads = next(h for h in range(max(1, min(8, d // 32)), 0, -1) if d % h == 0)
        ffn = ffn_dim if ffn_dim is not None else int(round(8 * d / 3))
        return d, heads, ffn

    if embed_dim is not None:
        return fill(embed_dim)
    for d in _HEAD_WIDTHS:
        candidate = fill(d)
        if head_parameter_count(in_features, num_classes, d, candidate[2]) <= backbone_params:
            return candidate
    return fill(_HEAD_WIDTHS[-1])

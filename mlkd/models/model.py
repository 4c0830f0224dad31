"""`MultiLabelModel`: a backbone plus the label-wise head, returning a `ModelOutput`."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mlkd.models.head import LabelWiseHead
from mlkd.outputs import ModelOutput


class MultiLabelModel(nn.Module):
    """A multi-label classifier exposing logits, label-wise embeddings and stage features.

    Build it with `mlkd.models.create_model`. For plain inference, ``forward_logits(x)`` is the cheap
    path: it runs the backbone's ``forward_features`` only (no stage maps kept) and the head.

    Args:
        backbone: module with ``forward_features(x)``, ``forward_intermediates(x)``, ``num_features``
            and ``feature_info`` (a timm model without classifier, or a built-in CNN).
        head: the label-wise head reading the backbone's final map.
        layout: layout of the backbone's final output: ``"NCHW"``, ``"NHWC"`` or ``"NLC"`` (tokens).
        in_chans: input channels the backbone expects.
        model_args: keyword arguments of `create_model` that rebuild this architecture.
        data_config: preprocessing of the backbone's pretraining (mean, std, ...) or None.

    Attributes:
        num_classes: number of labels ``q``.
        embed_dim: label-embedding width ``d``.
        feature_channels: channels of each map in ``forward(x).features``, shallow to deep.
        model_args: see Args; JSON/YAML-serialisable when the extra timm kwargs are.
        data_config: see Args.
        weights_report: the `LoadReport` of the ``weights`` given to `create_model`, else None.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: LabelWiseHead,
        layout: str,
        in_chans: int,
        model_args: dict[str, Any],
        data_config: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        if layout not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"unsupported backbone output layout {layout!r}; expected NCHW, NHWC or NLC")
        self.backbone = backbone
        self.head = head
        self.layout = layout
        self.in_chans = in_chans
        self.num_classes = head.num_classes
        self.embed_dim = head.embed_dim
        self.model_args = model_args
        self.data_config = data_config
        self.weights_report = None
        stage_channels = [int(info["num_chs"]) for info in backbone.feature_info]
        self._final_mode = final_map_mode(stage_channels, int(backbone.num_features), layout)
        self.feature_channels = feature_channels(stage_channels, int(backbone.num_features), self._final_mode)

    def _check_input(self, x: Tensor) -> None:
        if torch.jit.is_tracing():  # shapes are fixed by the export's example input
            return
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected images as a tensor [N, {self.in_chans}, H, W], got {shape}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}); "
                f"repeat grayscale images to {self.in_chans} channels or create the model with "
                f"in_chans={x.shape[1]}"
            )

    def _tokens(self, final: Tensor) -> Tensor:
        """Final backbone output -> ``[N, L, C]`` tokens for the head."""
        if self.layout == "NCHW":
            return final.flatten(2).transpose(1, 2)
        if self.layout == "NHWC":
            return final.flatten(1, 2)
        return final

    def forward(self, x: Tensor) -> ModelOutput:
        """Logits, label-wise embeddings and stage features of a batch.

        Args:
            x: ``[N, in_chans, H, W]`` images.

        Returns:
            `ModelOutput` with ``logits [N, q]``, ``label_embeddings [N, q, d]`` and ``features``: the
            stage maps ``[N, C_i, H_i, W_i]`` (always NCHW), shallow to deep, ending with the final map
            the head reads whenever that is a spatial map; ``C_i == feature_channels[i]``.
        """
        self._check_input(x)
        final, stages = self.backbone.forward_intermediates(x)
        features = stage_features(final, stages, self.layout, self._final_mode, len(self.feature_channels))
        embeddings, logits = self.head(self._tokens(final))
        return ModelOutput(logits=logits, label_embeddings=embeddings, features=features)

    def forward_logits(self, x: Tensor) -> Tensor:
        """Logits only, without keeping stage maps: the inference path (used by ONNX export).

        Args:
            x: ``[N, in_chans, H, W]`` images.

        Returns:
            ``[N, q]`` logits, equal to ``forward(x).logits``.
        """
        self._check_input(x)
        return self.head.logits(self.head.embed(self._tokens(self.backbone.forward_features(x))))


def final_map_mode(stage_channels: list[int], final_channels: int, layout: str) -> str:
    """How a backbone's final map (what a head reads) joins its stage maps in ``ModelOutput.features``.

    The final map ends the feature list when it is a spatial map: it replaces the deepest stage map when
    the widths agree (the same map, or the same map after a final norm as in Swin), and is appended when
    a conv head changes the width (EfficientNet, MobileNetV2: 1280). A token sequence with prefix tokens
    (ViT) is not a map; its stage maps are then used as timm gives them.

    Args:
        stage_channels: channels of the stage maps of ``feature_info``, shallow to deep.
        final_channels: channels of the final map (``num_features``).
        layout: ``"NCHW"``, ``"NHWC"`` or ``"NLC"`` (see `mlkd.models.timm_backbone.final_layout`).

    Returns:
        ``"replace"``, ``"append"`` or ``"none"``.
    """
    if layout == "NLC":
        return "none"
    if stage_channels and stage_channels[-1] == final_channels:
        return "replace"
    return "append"


def feature_channels(stage_channels: list[int], final_channels: int, mode: str) -> list[int]:
    """Channels of each map of ``ModelOutput.features`` under `final_map_mode` ``mode``."""
    return list(stage_channels) + ([final_channels] if mode == "append" else [])


def stage_features(final: Tensor, stages: list[Tensor], layout: str, mode: str, expected: int) -> list[Tensor]:
    """The feature list of a `ModelOutput`: stage maps, shallow to deep, ending with the final map.

    Args:
        final: the backbone's final output (``forward_features``), in ``layout``.
        stages: the stage maps of ``forward_intermediates``, each ``[N, C_i, H_i, W_i]``.
        layout: the layout of ``final``.
        mode: `final_map_mode`'s answer for this backbone.
        expected: the number of maps ``feature_info`` promises (checked).

    Returns:
        The maps, all NCHW; the last is the final map whenever that is a spatial map.

    Raises:
        RuntimeError: the backbone's maps do not fit its own ``feature_info``.
    """
    features = list(stages)
    if mode != "none":
        final_map = final.permute(0, 3, 1, 2) if layout == "NHWC" else final
        if mode == "replace":
            if final_map.shape[2:] != features[-1].shape[2:]:
                raise RuntimeError(
                    f"backbone final map {tuple(final_map.shape)} does not match its deepest stage "
                    f"map {tuple(features[-1].shape)}; this backbone is not supported"
                )
            features[-1] = final_map
        else:
            features.append(final_map)
    if len(features) != expected:
        raise RuntimeError(
            f"backbone returned {len(features)} feature maps but feature_info lists "
            f"{expected}; this backbone is not supported"
        )
    return features

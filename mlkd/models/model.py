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
        final_channels = int(backbone.num_features)
        # The final map (what the head reads) ends the feature list when it is a spatial map: it replaces
        # the deepest stage map when the widths agree (same map, or the same map after a final norm as in
        # Swin), and is appended when a conv head changes the width (EfficientNet, MobileNetV2: 1280).
        # A token sequence with prefix tokens (ViT) is not a map; its stage maps are then used as timm
        # gives them.
        if layout == "NLC":
            self._final_mode = "none"
        elif stage_channels and stage_channels[-1] == final_channels:
            self._final_mode = "replace"
        else:
            self._final_mode = "append"
        self.feature_channels = stage_channels + ([final_channels] if self._final_mode == "append" else [])

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
        features = list(stages)
        if self._final_mode != "none":
            final_map = final.permute(0, 3, 1, 2) if self.layout == "NHWC" else final
            if self._final_mode == "replace":
                if final_map.shape[2:] != features[-1].shape[2:]:
                    raise RuntimeError(
                        f"backbone final map {tuple(final_map.shape)} does not match its deepest stage "
                        f"map {tuple(features[-1].shape)}; this backbone is not supported"
                    )
                features[-1] = final_map
            else:
                features.append(final_map)
        if len(features) != len(self.feature_channels):
            raise RuntimeError(
                f"backbone returned {len(features)} feature maps but feature_info lists "
                f"{len(self.feature_channels)}; this backbone is not supported"
            )
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

"""The two small data types that flow between models, losses and the training engine.

`ModelOutput` is the one currency between models and distillers: a distiller never reaches into a
model, and a model never knows which distiller uses it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """What every mlkd model returns.

    Attributes:
        logits: ``[N, q]`` per-label logits; probabilities are ``sigmoid(logits)``.
        label_embeddings: ``[N, q, d]`` label-wise embeddings read out linearly to the logits,
            or ``None`` for a model without a label-wise head.
        features: the backbone's stage feature maps, shallow to deep, each ``[N, C_i, H_i, W_i]``.
    """

    logits: Tensor
    label_embeddings: Tensor | None = None
    features: list[Tensor] = field(default_factory=list)


@dataclass
class LossOutput:
    """What every distiller returns.

    Attributes:
        total: scalar tensor to back-propagate (the task loss plus every weighted term).
        terms: the unweighted-by-nothing-hidden parts of ``total`` for logging, by name
            (e.g. ``{"bce": ..., "mld": ..., "cd": ..., "id": ...}``), each a detached-or-not scalar
            already multiplied by its weight, so that ``sum(terms.values()) == total``.
    """

    total: Tensor
    terms: dict[str, Tensor]

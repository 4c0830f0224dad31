"""The interface every registered distiller implements."""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from mlkd.outputs import LossOutput, ModelOutput


class Distiller(nn.Module):
    """Base class of every registered distiller: the whole training objective of one batch.

    ``forward(student, teacher, targets)`` returns a `LossOutput` whose ``total`` is the task loss
    (binary cross-entropy summed over batch and labels, weighted by ``bce_weight``) plus the method's
    weighted distillation terms, and whose ``terms`` holds each weighted part by name
    (``"bce"`` first), so that the parts add up to ``total``. The constructor refuses a weight
    (``bce_weight``, ``lambda_*``) that is not a finite number >= 0 (`mlkd.losses._checks.check_weight`),
    and ``forward`` a student or teacher that is not a `ModelOutput` or inputs on the meta device or on
    different devices (``check_outputs``, ``check_devices``).

    Class attributes tell the training engine what a distiller needs:
        requires_teacher: False only for ``vanilla`` (the teacher is then not run at all).
        uses_features: True when the distiller reads ``ModelOutput.features``.
        uses_embeddings: True when it reads ``ModelOutput.label_embeddings``.
        teacher_terms: each distillation term's name and the part of the teacher's `ModelOutput` it
            reads (``"logits"``, ``"label_embeddings"`` or ``"features"``), e.g. ``{"mld": "logits"}``; the
            run summary says from it where each term's teacher signal comes from (a teacher trained
            elsewhere may get its label-wise embeddings from a fitted head).
        batch_mean_terms: names of the terms that are averaged over the batch (e.g. ``"mld"``);
            every other term, ``"bce"`` included, is a sum over samples or groups. Data-parallel
            training needs this to combine per-device values exactly (sum the sums, average the means).

    Distillers with trainable parts whose sizes depend on the models (projections, fusion modules)
    create them in `build`, which the engine calls once with sample outputs of both models before
    it builds the optimizer; their parameters are then trained together with the student's.
    """

    requires_teacher: bool = True
    uses_features: bool = False
    uses_embeddings: bool = False
    teacher_terms: dict[str, str] = {}
    batch_mean_terms: frozenset[str] = frozenset()
    # How many of the teacher's deepest stage maps a feature distiller reads (None: all of them); the
    # engine's teacher cache keeps no more than that.
    teacher_feature_levels: int | None = None
    # Set by the engine under torchrun with --gather-embeddings: maps the local
    # (student_emb [N, q, d_s], teacher_emb [N, q, d_t], targets [N, q]) to the global batch's, so that
    # the label-wise embedding losses (CD, ID) see groups across all processes.
    embedding_gather: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]] | None = None

    def build(self, student: ModelOutput, teacher: ModelOutput) -> None:
        """Create size-dependent trainable parts from sample outputs; the default needs none."""

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, targets: Tensor) -> LossOutput:
        raise NotImplementedError

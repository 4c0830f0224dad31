"""ReviewKD: distilling knowledge via knowledge review (Chen, Liu, Zhao, Jia; CVPR 2021).

The student's stage features are fused from deep to shallow by attention-based fusion (ABF) modules,
and each fused map is compared with the teacher's feature map of the same stage by the hierarchical
context loss (HCL).

Stage matching (explicit, for any pair of backbones): with ``k = min(#student stages, #teacher stages)``
the last ``k`` maps of each side are paired in order (deepest with deepest). Maps are NCHW
(`ModelOutput.features`), so CNN and transformer backbones mix freely. Each ABF output is resized to
its teacher map's spatial size when the two differ.

ABF for paired stage ``i`` (deepest first), with student map ``s_i`` and the fused map ``r_{i+1}`` of
the next deeper stage:

    x   = BN(Conv1x1(s_i))                                   # student width -> mid_channels
    r_i = x                                                  # deepest stage: no fusion
    r_i = a_0 * x + a_1 * up(r_{i+1}),  [a_0, a_1] = sigmoid(Conv1x1([x, up(r_{i+1})]))   # otherwise
    f_i = BN(Conv3x3(resize(r_i, teacher size)))             # mid_channels -> teacher width

where ``up`` is nearest-neighbour upsampling to ``s_i``'s size and the attention maps ``a_0, a_1`` are
``[N, 1, H, W]``. HCL of one pair, for levels ``(4, 2, 1)`` by default:

    HCL(f, t) = [ MSE(f, t) + Σ_j 2^-(j+1) · MSE(pool_{l_j}(f), pool_{l_j}(t)) ] / (1 + Σ_j 2^-(j+1))

with ``pool_l`` an adaptive average pool to ``l × l`` and MSE the mean over all elements; a level is
used only when ``l < min(H, W)`` of the map, and the weights of the used levels halve in order. The
distillation term is the sum of HCL over the paired stages; each HCL is a mean over the batch.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlkd.losses._checks import check_devices, check_finite, check_outputs, check_weight, output_tensors
from mlkd.losses.base import Distiller
from mlkd.losses.registry import register_distiller
from mlkd.outputs import LossOutput, ModelOutput


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``[N, C, H, W]`` to ``size``: average pooling when shrinking, bilinear when enlarging."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class AttentionFusion(nn.Module):
    """One ABF module: student stage map (+ deeper fused map) -> map of the teacher stage's width.

    Args:
        in_channels: student stage width.
        mid_channels: width of the fused maps passed between stages.
        out_channels: teacher stage width.
        fuse: whether a deeper fused map is combined (False for the deepest stage).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False),
                                    nn.BatchNorm2d(mid_channels))
        self.expand = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_channels))
        self.attention = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None)
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.expand[0].weight, a=1)

    def forward(self, x: Tensor, deeper: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Fuse one stage.

        Args:
            x: ``[N, C_s, H, W]`` student stage map.
            deeper: ``[N, mid, H', W']`` fused map of the next deeper stage, or None for the deepest.
            out_size: ``(H_t, W_t)`` of the teacher map this stage is compared with.

        Returns:
            ``(out [N, C_t, H_t, W_t], fused [N, mid, H, W])``: the map compared with the teacher and
            the fused map handed to the next shallower stage.
        """
        x = self.reduce(x)
        if self.attention is not None:
            if deeper is None:
                raise ValueError("a fusing ABF stage needs the deeper stage's fused map")
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([x, deeper], dim=1))  # [N, 2, H, W]
            x = x * weights[:, 0:1] + deeper * weights[:, 1:2]
        return self.expand(_resize(x, out_size)), x


def hcl_loss(student: Tensor, teacher: Tensor, levels: Sequence[int] = (4, 2, 1)) -> Tensor:
    """Hierarchical context loss between two ``[N, C, H, W]`` maps of the same shape (module docstring).

    Returns:
        Scalar: weighted mean of the full-resolution MSE and the MSEs of the pooled pyramid levels.
    """
    loss = F.mse_loss(student, teacher)
    weight, total = 1.0, 1.0
    for level in levels:
        if level >= min(student.shape[-2:]):
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, level),
                                          F.adaptive_avg_pool2d(teacher, level))
        total += weight
    return loss / total


@register_distiller("reviewkd")
class ReviewKD(Distiller):
    """ReviewKD (attention-based fusion + hierarchical context loss) with the BCE task loss.

    ``total = bce_weight · BCE_sum(student.logits, targets) + lambda_reviewkd · Σ_stages HCL``.
    The fusion modules are created by `build` from sample outputs and trained with the student
    (they are this module's parameters).

    Args:
        bce_weight: weight of the binary cross-entropy, summed over batch and labels.
        lambda_reviewkd: weight of the summed HCL over the paired stages.
        mid_channels: width of the fused maps (the paper uses 256 on ImageNet).
        levels: pooled pyramid sizes of the HCL.
        validate: check the finished total (one host sync) and, when it is not finite, name the
            input holding NaN/inf, like the other distillers.
    """

    uses_features = True
    teacher_terms = {"reviewkd": "features"}
    batch_mean_terms = frozenset({"reviewkd"})

    def __init__(self, *, bce_weight: float = 1.0, lambda_reviewkd: float = 1.0, mid_channels: int = 256,
                 levels: Sequence[int] = (4, 2, 1), validate: bool = True) -> None:
        super().__init__()
        self.validate = bool(validate)
        if mid_channels < 1:
            raise ValueError(f"mid_channels must be >= 1, got {mid_channels}")
        self.bce_weight = check_weight(bce_weight, "bce_weight")
        self.lambda_reviewkd = check_weight(lambda_reviewkd, "lambda_reviewkd")
        self.mid_channels = mid_channels
        self.levels = tuple(levels)
        self.fusions: nn.ModuleList | None = None  # deepest stage first, created by build()
        self._pairs: list[tuple[int, int]] = []  # (student channels, teacher channels), deepest first

    @staticmethod
    def _stages(out: ModelOutput | None, who: str) -> list[Tensor]:
        if out is None or not out.features:
            raise ValueError(
                f"reviewkd needs stage features, but the {who}'s ModelOutput.features is empty; use models "
                "from mlkd.models.create_model, which return their stage maps"
            )
        for i, f in enumerate(out.features):
            if f.ndim != 4:
                raise ValueError(f"reviewkd needs NCHW stage maps; the {who}'s feature {i} has shape "
                                 f"{tuple(f.shape)}")
        return list(out.features)

    def _paired(self, student: ModelOutput, teacher: ModelOutput | None) -> tuple[list[Tensor], list[Tensor]]:
        """The last ``k`` stage maps of each side, deepest first."""
        s, t = self._stages(student, "student"), self._stages(teacher, "teacher")
        k = min(len(s), len(t))
        return s[::-1][:k], t[::-1][:k]

    def build(self, student: ModelOutput, teacher: ModelOutput) -> None:
        """Create one ABF per paired stage, on the device of the student's features.

        Args:
            student: sample student output (only the feature channels are read).
            teacher: sample teacher output.
        """
        s, t = self._paired(student, teacher)
        self._pairs = [(a.shape[1], b.shape[1]) for a, b in zip(s, t)]
        self.fusions = nn.ModuleList(
            AttentionFusion(cs, self.mid_channels, ct, fuse=i > 0) for i, (cs, ct) in enumerate(self._pairs)
        ).to(s[0].device)

    def review(self, student: ModelOutput, teacher: ModelOutput) -> tuple[list[Tensor], list[Tensor]]:
        """Fused student maps and their teacher targets.

        Returns:
            ``(fused, targets)``: deepest first; ``fused[i]`` has ``targets[i]``'s shape and the targets
            are detached.
        """
        if self.fusions is None:
            raise RuntimeError("ReviewKD.build(student_out, teacher_out) must be called before forward")
        s, t = self._paired(student, teacher)
        pairs = [(a.shape[1], b.shape[1]) for a, b in zip(s, t)]
        if pairs != self._pairs:
            raise ValueError(f"stage widths (student, teacher) {pairs} differ from those seen by build() "
                             f"{self._pairs}; call build() again for a new model pair")
        fused, deeper = [], None
        for x, target, fusion in zip(s, t, self.fusions):
            out, deeper = fusion(x, deeper, tuple(target.shape[-2:]))
            fused.append(out)
        # Targets never carry gradient into the teacher; cast for mixed precision (student in fp32).
        return fused, [target.detach().to(out.dtype) for target, out in zip(t, fused)]

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, targets: Tensor) -> LossOutput:
        """BCE plus the weighted ReviewKD term.

        Args:
            student: student output with ``logits [N, q]`` and stage ``features``.
            teacher: teacher output with stage ``features``.
            targets: ``[N, q]`` binary labels.

        Returns:
            `LossOutput` with terms ``bce`` and ``reviewkd`` (each weighted) adding up to ``total``.

        Raises:
            TypeError: ``student`` or ``teacher`` is not a `ModelOutput`.
            ValueError: inputs on the meta device or on different devices, missing or non-NCHW stage
                features, or (with ``validate``) a non-finite total, naming the input that caused it.
        """
        check_outputs(student, teacher)
        check_devices([*output_tensors("student", student, False, True),
                       *output_tensors("teacher", teacher, False, True), ("targets", targets)])
        bce = self.bce_weight * F.binary_cross_entropy_with_logits(
            student.logits, targets.to(student.logits.dtype), reduction="sum")
        fused, target_maps = self.review(student, teacher)  # type: ignore[arg-type]
        term = self.lambda_reviewkd * sum(hcl_loss(f, t, self.levels) for f, t in zip(fused, target_maps))
        total = bce + term
        if self.validate and not bool(torch.isfinite(total)):
            self._explain_nonfinite(student, teacher)  # type: ignore[arg-type]
        return LossOutput(total=total, terms={"bce": bce, "reviewkd": term})

    def _explain_nonfinite(self, student: ModelOutput, teacher: ModelOutput) -> None:
        """Raise a `ValueError` naming the first input that holds NaN/inf (the inputs are read only
        here, after a non-finite total), or saying that the values overflowed."""
        s, t = self._paired(student, teacher)
        fields = [("student.logits", student.logits)]
        fields += [(f"student.features[{len(student.features) - 1 - i}]", x) for i, x in enumerate(s)]
        fields += [(f"teacher.features[{len(teacher.features) - 1 - i}]", x) for i, x in enumerate(t)]
        for name, value in fields:
            check_finite(value, name)
        raise ValueError("the 'reviewkd' objective is not finite although its inputs are: the features are too "
                         "large for the hierarchical context loss; check the models and the lr")

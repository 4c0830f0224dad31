"""The registered distillers: each one is the whole training objective of a batch.

``total = bce_weight · BCE_sum(student.logits, targets) + Σ weighted distillation terms``; BCE is
**summed** over batch and labels (method.md §3.5), about N·q times a mean. The paper's weights (``l2d``
and its parts) assume exactly the reductions documented in `logits` and `label_embedding`.

Default weights of the baselines: their papers tuned them against a cross-entropy that is a mean over
the batch; our BCE sum is about N times such a mean (a per-image BCE summed over labels is of the same
order as a per-image softmax CE). Terms that are means over the batch (MSE, RKD, PKT) therefore get
their paper's weight times 64 (the reference batch size), which keeps the paper's balance at batch 64.
PS reduces like MLD (sum over labels, mean over images) and uses the paper form's MLD weight, 10. KD and PKT had
their papers' weights until issue 19 gave them the same validation search as L2D's weights: KD now uses τ = 1 at
λ_KD = 192 (the balanced MLD's 3 per image at batch 64), PKT 15000.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from mlkd.losses._checks import (
    check_devices,
    check_finite,
    check_leading,
    check_outputs,
    check_targets,
    check_tensor,
    check_weight,
    full_precision,
    output_tensors,
)
from mlkd.losses.base import Distiller
from mlkd.losses.balanced_embedding import balanced_structure_terms
from mlkd.losses.fused_l2d import _NUMPY_FLOAT, FusedL2DFunction, host_pair_plan
from mlkd.losses.features import mse_loss, pkt_loss, rkd_angle_loss, rkd_distance_loss
from mlkd.losses.label_embedding import _label_embedding_terms, scale_free_copy
from mlkd.losses.logits import bce_sum_loss, kd_loss, mld_loss, ps_loss
from mlkd.losses.registry import register_distiller
from mlkd.outputs import LossOutput, ModelOutput


class _Objective(Distiller):
    """BCE plus the terms of `distill_terms`; validates the outputs once per call.

    Every weight (``bce_weight`` and each ``lambda_*`` of the subclasses) must be a finite number >= 0
    (`check_weight`), checked when the distiller is built, whichever way it is built (CLI, config, API).

    Args:
        bce_weight: weight of the summed BCE task loss.
        validate: run the data-dependent checks (labels in {0, 1}, finite values; GPU syncs).
    """

    name = "vanilla"
    teacher_feature_levels = 1  # the feature baselines here read the deepest map only (`_deepest`)

    def __init__(self, *, bce_weight: float = 1.0, validate: bool = True) -> None:
        super().__init__()
        self.bce_weight = check_weight(bce_weight, "bce_weight")
        self.validate = bool(validate)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, targets: Tensor) -> LossOutput:
        """Compute the objective.

        Args:
            student: the student's outputs; ``logits`` ``[N, q]`` always, plus what the method reads.
            teacher: the teacher's outputs (may be ``None`` only when ``requires_teacher`` is False).
            targets: ``[N, q]`` multi-hot labels in {0, 1}.

        Returns:
            `LossOutput` with ``terms["bce"]`` first and one entry per weighted term.

        Raises:
            TypeError: ``student`` or ``teacher`` is not a `ModelOutput` (e.g. a bare logits tensor).
            ValueError: a missing teacher or output field, mismatched shapes, inputs on the meta device or
                on different devices, labels outside {0, 1}, NaN/inf values.
        """
        check_outputs(student, teacher)
        read = (self.uses_embeddings, self.uses_features)
        check_devices([*output_tensors("student", student, *read),
                       *output_tensors("teacher", teacher if self.requires_teacher else None, *read),
                       ("targets", targets)])
        logits = check_tensor(student.logits, "student.logits", 2, "[N, q]")
        mask = check_targets(targets, logits.shape[0], logits.shape[1], "student.logits", self.validate)
        if self.validate:
            check_finite(logits, "student.logits")
        if self.requires_teacher and teacher is None:
            raise ValueError(f"teacher is None, but the {self.name!r} distiller needs the teacher's ModelOutput; "
                             f"pass the frozen teacher's outputs (or use 'vanilla' to train without one)")
        total, terms = self._objective(student, teacher, mask)
        # Label-wise embeddings are checked on the finished total (one host sync), not by a pass over
        # [N, q, d]; only a non-finite total inspects them (label_embedding.finite_or_rescaled).
        if self.validate and self.uses_embeddings and not bool(torch.isfinite(total)):
            total, terms = self._objective(*self._explain_nonfinite(student, teacher), mask)
            if not bool(torch.isfinite(total)):
                self._raise_logits_too_large(logits)
        return LossOutput(total=total, terms=terms)

    def _raise_logits_too_large(self, logits: Tensor) -> None:
        raise ValueError(f"the {self.name!r} objective is not finite although every input is finite: "
                         f"the logits are too large (largest |student.logits| "
                         f"{float(logits.detach().abs().max()):.3g}); check the model and the lr")

    def _objective(self, student: ModelOutput, teacher: ModelOutput | None, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``(total, terms)``: BCE plus `distill_terms`, computed in full precision."""
        with full_precision(student.logits.device):
            terms = {"bce": self.bce_weight * bce_sum_loss(student.logits, mask, validate=False)}
            terms.update(self.distill_terms(student, teacher, mask))
        total = terms["bce"]
        for name, value in terms.items():
            if name != "bce":
                total = total + value
        return total, terms

    def _explain_nonfinite(self, student: ModelOutput, teacher: ModelOutput | None) -> tuple[ModelOutput, ModelOutput | None]:
        """The total is not finite though the logits are: name a label-wise embedding with NaN/inf, or
        return both outputs with their embeddings exactly rescaled (finite inputs whose squared
        distances overflowed; the structure losses are scale-free, see `scale_free_copy`)."""
        outputs = [("student", student), ("teacher", teacher)]
        for who, o in outputs:
            if o is not None and o.label_embeddings is not None:
                check_finite(o.label_embeddings, f"{who}.label_embeddings")
        if self.embedding_gather is not None:
            # Recomputing would gather again on this process only; every process stops here instead.
            raise ValueError(f"the {self.name!r} objective is not finite: the label-wise embeddings gathered from "
                             f"all processes hold NaN/inf (see the other processes' errors) or overflow")
        scaled = [o if o is None or o.label_embeddings is None
                  else replace(o, label_embeddings=scale_free_copy(o.label_embeddings)) for _, o in outputs]
        return scaled[0], scaled[1]

    def distill_terms(self, student: ModelOutput, teacher: ModelOutput | None, mask: Tensor) -> dict[str, Tensor]:
        """The weighted distillation terms by name; none for the task loss alone."""
        return {}

    # Helpers that fetch and check one field of both outputs, naming it as the caller sees it.
    def _logits(self, student: ModelOutput, teacher: ModelOutput) -> tuple[Tensor, Tensor]:
        t = check_tensor(teacher.logits, "teacher.logits", 2, "[N, q]")
        check_leading(t, "teacher.logits", tuple(student.logits.shape), "student.logits", "[N, q]")
        if self.validate:
            check_finite(t, "teacher.logits")
        return student.logits, t

    def _embeddings(self, student: ModelOutput, teacher: ModelOutput) -> tuple[Tensor, Tensor]:
        """Both outputs' label-wise embeddings, shapes checked; their values are left to the check of
        the finished total in `forward` (no pass over ``[N, q, d]``; every embedding term propagates NaN)."""
        n, q = student.logits.shape
        out = []
        for who, o in (("student", student), ("teacher", teacher)):
            field = f"{who}.label_embeddings"
            if o.label_embeddings is None:
                raise ValueError(f"{field} is None, but the {self.name!r} distiller needs label-wise embeddings "
                                 f"[N, q, d]; use a model with a label-wise head")
            e = check_tensor(o.label_embeddings, field, 3, "[N, q, d]")
            check_leading(e, field, (n, q), "student.logits", "[N, q, d]")
            out.append(e)
        return out[0], out[1]

    def _deepest(self, output: ModelOutput, who: str, n: int) -> Tensor:
        field = f"{who}.features"
        if not output.features:
            without = (" (or --lambda pkt=0, lambda_pkt=0: L2D without its relation term, which reads them)"
                       if getattr(self, "lambda_pkt", 0) else "")
            raise ValueError(f"{field} is empty, but the {self.name!r} distiller needs feature maps "
                             f"[N, C, H, W]; use a model that returns its stage features{without}")
        f = output.features[-1]
        if not isinstance(f, Tensor) or f.dim() not in (2, 4):
            shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(f"{field}[-1] must be a [N, C, H, W] map or [N, C] vector, got {shape}")
        check_leading(f, f"{field}[-1]", (n,), "student.logits", "[N, C, H, W]")
        if self.validate:
            check_finite(f, f"{field}[-1]")
        return f

    def _structure_terms(self, es: Tensor, et: Tensor, mask: Tensor,
                         terms: tuple[str, ...] = ("cd", "id")) -> dict[str, Tensor]:
        """Unweighted CD/ID over the batch, or over the global batch when ``embedding_gather`` is set."""
        if self.embedding_gather is not None:
            es, et, mask = self.embedding_gather(es, et, mask)
        return _label_embedding_terms(es, et, mask, terms)

    def _pooled(self, student: ModelOutput, teacher: ModelOutput) -> tuple[Tensor, Tensor]:
        """Deepest maps of both models, global-average-pooled to ``[N, C]``."""
        n = student.logits.shape[0]
        fs, ft = self._deepest(student, "student", n), self._deepest(teacher, "teacher", n)
        return (fs.mean(dim=(2, 3)) if fs.dim() == 4 else fs), (ft.mean(dim=(2, 3)) if ft.dim() == 4 else ft)


@register_distiller("vanilla")
class VanillaDistiller(_Objective):
    """The student alone: ``bce_weight · BCE_sum``; the teacher is not needed (nor run)."""

    name = "vanilla"
    requires_teacher = False


# Weights of the balanced form (``form="balanced"``), in units of the per-logit mean BCE:
# BCE_sum + N·q·(λ_MLD·MLD/q + λ_LED·(λ_CD·CD_pos + λ_ID·ID_pos)). docs/method.md derives the values
# that reproduce the paper's balance at MS-COCO statistics and records the search that chose these.
BALANCED_WEIGHTS = {"mld": 3.0, "led": 0.1, "cd": 3.6, "id": 36.0}
# The relation term's weight in `--method l2d` (per image: N·λ·PKT_mean), half PKT's paper weight of 30000 at
# batch 64; chosen on the validation splits of clutter, posters_scratch and lowres (docs/results.md, issue 19).
# The PKT baseline's own search later chose the same half (15000 at batch 64).
DEFAULT_LAMBDA_PKT = 234.375
PAPER_WEIGHTS = {"mld": 10.0, "led": 1.0, "cd": 100.0, "id": 1000.0}
L2D_FORMS = ("paper", "balanced")


class L2DLoss(_Objective):
    """The full L2D objective (method.md §3.5), in the paper's form or the balanced one.

    ``form="paper"`` (the default of this class: bit-for-bit the reference objective)::

        L = bce_weight·BCE_sum + λ_MLD·L_MLD + λ_LED·(λ_CD·L_CD + λ_ID·L_ID)

    with the reference weights 10, 1, 100, 1000; MLD is a mean over images, CD and ID are sums over
    labels and images, so the balance between the terms moves with batch size, label count and label
    density. ``form="balanced"`` (what ``mlkd distill --method l2d`` runs) keeps the summed BCE and
    normalises every distillation term per unit (docs/method.md, "The balanced form")::

        L = bce_weight·BCE_sum + N·q·(λ_MLD·L_MLD/q + λ_LED·(λ_CD·CD_pos + λ_ID·ID_pos))

    where ``L_MLD/q`` is the binary KL per logit and ``CD_pos``/``ID_pos`` are the structure losses
    averaged per positive (`balanced_structure_terms`). Relative to the BCE, its weights mean the same
    on any data set; ``BALANCED_WEIGHTS`` holds the defaults. Terms ``bce``, ``mld``, ``cd``, ``id``,
    each already weighted.

    The balanced form can add a batch-level relation term next to the label-wise ones,
    ``N·λ_PKT·L_PKT`` on the pooled deepest features (`pkt_loss`, a mean over the images; term ``pkt``):
    L2D's terms compare each label's embedding, PKT the images' global geometry. ``λ_PKT = 468.75``
    is PKT's paper weight (30000 at batch 64) in these units, 234.375 the PKT baseline's default; 0 (this class's
    default) leaves it out.

    Args:
        lambda_mld: weight of MLD (default by form: 10 paper, ``BALANCED_WEIGHTS`` balanced).
        lambda_led: weight of the LED pair (1 paper).
        lambda_cd: weight of CD inside LED (100 paper).
        lambda_id: weight of ID inside LED (1000 paper).
        form: ``"paper"`` or ``"balanced"``.
        temperature: MLD temperature (1 = reference).
        lambda_pkt: weight of the relation term (balanced form only; 0 = none).
        bce_weight: weight of the summed BCE.
        validate: data-dependent input checks.
    """

    name = "l2d"
    uses_embeddings = True
    teacher_terms = {"mld": "logits", "cd": "label_embeddings", "id": "label_embeddings"}
    batch_mean_terms = frozenset({"mld"})

    def __init__(self, lambda_mld: float | None = None, lambda_led: float | None = None,
                 lambda_cd: float | None = None, lambda_id: float | None = None, *, form: str = "paper",
                 temperature: float = 1.0, lambda_pkt: float = 0.0, bce_weight: float = 1.0,
                 validate: bool = True) -> None:
        super().__init__(bce_weight=bce_weight, validate=validate)
        if form not in L2D_FORMS:
            raise ValueError(f"unknown L2D form {form!r}; use one of {', '.join(L2D_FORMS)} "
                             "(--method l2d_paper, or --method-option form=paper, for the paper's exact objective)")
        self.form = form
        self.lambda_pkt = check_weight(lambda_pkt, "lambda_pkt")
        if self.lambda_pkt and form != "balanced":
            raise ValueError("lambda_pkt (the relation term) is an addition to the balanced form; the paper's "
                             "objective (l2d_paper, form=paper) has no such term: drop --lambda pkt=...")
        if self.lambda_pkt:
            # Instance attributes: the teacher cache then keeps the feature maps, the summary names the term.
            self.uses_features = True
            self.teacher_terms = {**type(self).teacher_terms, "pkt": "features"}
        defaults = PAPER_WEIGHTS if form == "paper" else BALANCED_WEIGHTS
        given = {"mld": lambda_mld, "led": lambda_led, "cd": lambda_cd, "id": lambda_id}
        weights = {k: check_weight(defaults[k] if v is None else v, f"lambda_{k}") for k, v in given.items()}
        self.lambda_mld, self.lambda_led = weights["mld"], weights["led"]
        self.lambda_cd, self.lambda_id = weights["cd"], weights["id"]
        self.temperature = float(temperature)
        if form == "balanced":
            self.batch_mean_terms = frozenset()  # every balanced term is scaled by the batch size N

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, targets: Tensor) -> LossOutput:
        """Compute the objective (see `_Objective.forward`).

        Both forms run as one autograd node (`fused_l2d`) when the embeddings are not gathered across
        processes and the inputs are float32/float64 CPU tensors without autocast, or CUDA tensors of
        any float dtype (half precision is computed in float32, as on the general path); anything else
        (and any input that fails a shape check, so that the error is the usual one) takes the
        general path.
        """
        check_outputs(student, teacher)  # before the fused path reads their fields
        out = self._fused_forward(student, teacher, targets) if self.embedding_gather is None else None
        if out is None:
            out = super().forward(student, teacher, targets)
        if not self.lambda_pkt:
            return out
        fs, ft = self._pooled(student, teacher)
        pkt = (self.lambda_pkt * fs.shape[0]) * pkt_loss(fs, ft, validate=False)
        return LossOutput(total=out.total + pkt, terms={**out.terms, "pkt": pkt})

    def _fused_forward(self, student: ModelOutput, teacher: ModelOutput | None, targets: Tensor) -> LossOutput | None:
        """The objective through `fused_l2d.FusedL2DFunction`, or None where it does not apply.

        Checks as on the general path: labels in {0, 1} before anything is computed; the finished
        total (one host sync) after. A total that is not finite names the input holding NaN/inf
        (logits first, then label-wise embeddings), or, for finite embeddings so large that squared
        distances overflow, is computed again from exactly rescaled embeddings (`scale_free_copy`).
        """
        if teacher is None or not (0.0 < self.temperature < math.inf):
            return None
        zs, es, zt, et = student.logits, student.label_embeddings, teacher.logits, teacher.label_embeddings
        if not all(isinstance(t, Tensor) for t in (zs, es, zt, et, targets)):
            return None
        dev = zs.device
        if (dev.type not in ("cpu", "cuda") or any(t.device != dev for t in (es, zt, et, targets))
                or zs.dim() != 2 or es.dim() != 3 or et.dim() != 3 or zs.numel() == 0 or es.numel() == 0
                or et.numel() == 0):
            return None
        n, q = zs.shape
        if (zt.shape != zs.shape or es.shape[:2] != (n, q) or et.shape[:2] != (n, q) or targets.shape != (n, q)
                or targets.dtype in (torch.bfloat16, torch.complex64, torch.complex128)):
            return None
        if dev.type == "cpu":
            # On the CPU half precision stays on the general path, which converts only the member rows.
            dtype = zs.dtype
            if (dtype not in _NUMPY_FLOAT or any(t.dtype != dtype for t in (es, zt, et))
                    or torch.is_autocast_enabled("cpu")):
                return None
        else:
            # On a GPU the node's few kernels and two syncs replace the general path's ~180 kernel
            # launches (docs/benchmarks.md, gpu section); half precision is computed in float32.
            if not all(t.is_floating_point() for t in (zs, es, zt, et)):
                return None
            dtype = torch.float64 if torch.float64 in (zs.dtype, es.dtype, zt.dtype, et.dtype) else torch.float32
            zs, es, zt, et = (t.to(dtype) for t in (zs, es, zt, et))
        # The labels on the host: a view on the CPU, one small copy (a sync) from a GPU.
        labels = targets.detach().cpu().numpy()
        mask = labels if labels.dtype == np.bool_ else labels != 0
        if self.validate and labels.dtype != np.bool_ and not np.array_equal(mask, labels):
            check_targets(targets, n, q, "student.logits", True)  # raises, naming the bad value
            return None
        if labels.dtype != np.bool_ and targets.dtype == dtype and (self.validate or np.array_equal(mask, labels)):
            y = targets.detach()
        else:
            y = torch.from_numpy(np.ascontiguousarray(mask)).to(device=dev, dtype=dtype)
        weight_cd, weight_id = self.lambda_led * self.lambda_cd, self.lambda_led * self.lambda_id
        lambda_mld = self.lambda_mld
        balanced = self.form == "balanced"
        if balanced:
            # N·q·λ·(per-positive average) and N·λ_MLD·MLD (`distill_terms`): N·q/n₊ (n₊ positives)
            # and N folded into the weights that the node applies to the paper-form sums.
            units = n * q / max(int(np.count_nonzero(mask)), 1)
            weight_cd, weight_id, lambda_mld = weight_cd * units, weight_id * units, lambda_mld * n
        plan = host_pair_plan(mask, weight_cd, weight_id, dtype, balanced).to(dev)
        weights = (self.bce_weight, lambda_mld, self.temperature)

        def run(es: Tensor, et: Tensor) -> LossOutput:
            with torch.autocast(dev.type, enabled=False):  # the node computes in `dtype` throughout
                total, bce, mld, cd, id_ = FusedL2DFunction.apply(zs, es.to(dtype), zt.detach(), et.detach().to(dtype),
                                                                  y, plan, weights)
            return LossOutput(total=total, terms={"bce": bce, "mld": mld, "cd": cd, "id": id_})

        out = run(es, et)
        if self.validate and not math.isfinite(out.total.item()):
            check_finite(zs, "student.logits")
            check_finite(zt, "teacher.logits")
            scaled_student, scaled_teacher = self._explain_nonfinite(student, teacher)
            out = run(scaled_student.label_embeddings, scaled_teacher.label_embeddings)
            if not math.isfinite(out.total.item()):
                self._raise_logits_too_large(zs)
        return out

    def describe(self) -> str:
        """One line naming the form and the weights, as printed at the start of a run."""
        w = f"λ_MLD={self.lambda_mld:g}, λ_LED={self.lambda_led:g}, λ_CD={self.lambda_cd:g}, λ_ID={self.lambda_id:g}"
        if self.form == "paper":
            return f"L2D, the paper's form: BCE_sum + λ_MLD·MLD + λ_LED·(λ_CD·CD + λ_ID·ID), {w}"
        relation = f" + N·λ_PKT·PKT, λ_PKT={self.lambda_pkt:g}" if self.lambda_pkt else ""
        return (f"L2D, balanced form: BCE_sum + N·q·(λ_MLD·MLD/q + λ_LED·(λ_CD·CD_pos + λ_ID·ID_pos)){relation}, "
                f"{w} (--method l2d_paper for the paper's objective)")

    def distill_terms(self, student: ModelOutput, teacher: ModelOutput | None, mask: Tensor) -> dict[str, Tensor]:
        zs, zt = self._logits(student, teacher)
        es, et = self._embeddings(student, teacher)
        mld = mld_loss(zs, zt, self.temperature, validate=False)
        if self.form == "paper":
            led = self._structure_terms(es, et, mask)
            return {
                "mld": self.lambda_mld * mld,
                "cd": self.lambda_led * self.lambda_cd * led["cd"],
                "id": self.lambda_led * self.lambda_id * led["id"],
            }
        n, q = mask.shape
        wanted = tuple(t for t, lam in (("cd", self.lambda_cd), ("id", self.lambda_id)) if lam != 0)
        if self.embedding_gather is not None:
            # Global groups: the per-positive averages are over the global batch, and so is their
            # scale (every process computes the same value; `TrainStep` and DDP turn it into the
            # global batch's gradient, as for the paper's summed CD/ID).
            es, et, mask = self.embedding_gather(es, et, mask)
        led = balanced_structure_terms(es, et, mask, wanted)
        n_led = mask.shape[0]
        zero = mld.new_zeros(())
        return {
            "mld": (self.lambda_mld * n) * mld,
            "cd": (self.lambda_led * self.lambda_cd * n_led * q) * led.get("cd", zero),
            "id": (self.lambda_led * self.lambda_id * n_led * q) * led.get("id", zero),
        }


@register_distiller("l2d")
class DefaultL2D(L2DLoss):
    """`L2DLoss` as the registry builds it for ``--method l2d``: the balanced form with the relation term
    (``lambda_pkt`` `DEFAULT_LAMBDA_PKT`; ``--lambda pkt=0`` leaves it out), unless ``form="paper"`` is passed
    (``--method-option form=paper``: the paper's objective, no relation term). See `L2DLoss` for the arguments."""

    def __init__(self, lambda_mld: float | None = None, lambda_led: float | None = None,
                 lambda_cd: float | None = None, lambda_id: float | None = None, *, form: str = "balanced",
                 temperature: float = 1.0, lambda_pkt: float | None = None, bce_weight: float = 1.0,
                 validate: bool = True) -> None:
        if lambda_pkt is None:
            lambda_pkt = DEFAULT_LAMBDA_PKT if form == "balanced" else 0.0
        super().__init__(lambda_mld, lambda_led, lambda_cd, lambda_id, form=form, temperature=temperature,
                         lambda_pkt=lambda_pkt, bce_weight=bce_weight, validate=validate)


@register_distiller("l2d_paper")
class PaperL2D(L2DLoss):
    """`L2DLoss` in the paper's form under its own name (``--method l2d_paper``), so that a comparison
    can list the reference objective beside the default ``l2d``. See `L2DLoss` for the arguments."""

    name = "l2d_paper"

    def __init__(self, lambda_mld: float | None = None, lambda_led: float | None = None,
                 lambda_cd: float | None = None, lambda_id: float | None = None, *,
                 temperature: float = 1.0, bce_weight: float = 1.0, validate: bool = True) -> None:
        super().__init__(lambda_mld, lambda_led, lambda_cd, lambda_id, form="paper", temperature=temperature,
                         bce_weight=bce_weight, validate=validate)


@register_distiller("mld")
class MLDDistiller(_Objective):
    """``bce_weight·BCE_sum + λ_MLD·L_MLD`` (the logits half of L2D); MLD is a mean over images.

    Args:
        lambda_mld: weight of MLD (reference 10).
        temperature: MLD temperature (1 = reference).
        bce_weight: weight of the summed BCE.
        validate: data-dependent input checks.
    """

    name = "mld"
    teacher_terms = {"mld": "logits"}
    batch_mean_terms = frozenset({"mld"})

    def __init__(self, *, lambda_mld: float = 10.0, temperature: float = 1.0, bce_weight: float = 1.0,
                 validate: bool = True) -> None:
        super().__init__(bce_weight=bce_weight, validate=validate)
        self.lambda_mld, self.temperature = check_weight(lambda_mld, "lambda_mld"), float(temperature)

    def distill_terms(self, student: ModelOutput, teacher: ModelOutput | None, mask: Tensor) -> dict[str, Tensor]:
        zs, zt = self._logits(student, teacher)
        return {"mld": self.lambda_mld * mld_loss(zs, zt, self.temperature, validate=False)}


@register_distiller("led")
class LEDDistiller(_Objective):
    """``bce_weight·BCE_sum + λ_LED·(λ_CD·L_CD + λ_ID·L_ID)`` (the embedding half of L2D).

    Terms ``cd`` and ``id`` are each already multiplied by λ_LED; both are sums over groups.

    Args:
        lambda_led: weight of the pair (reference 1).
        lambda_cd: weight of CD (reference 100).
        lambda_id: weight of ID (reference 1000).
        bce_weight: weight of the summed BCE.
        validate: data-dependent input checks.
    """

    name = "led"
    uses_embeddings = True
    teacher_terms = {"cd": "label_embeddings", "id": "label_embeddings"}

    def __init__(self, *, lambda_led: float = 1.0, lambda_cd: float = 100.0, lambda_id: float = 1000.0,
                 bce_weight: float = 1.0, validate: bool = True) -> None:
        super().__init__(bce_weight=bce_weight, validate=validate)
        self.lambda_led = check_weight(lambda_led, "lambda_led")
        self.lambda_cd, self.lambda_id = check_weight(lambda_cd, "lambda_cd"), check_weight(lambda_id, "lambda_id")

    def distill_terms(self, student: ModelOutput, teacher: ModelOutput | None, mask: Tensor) -> dict[str, Tensor]:
        es, et = self._embeddings(student, teacher)
        led = self._structure_terms(es, et, mask)
        return {"cd": self.lambda_led * self.lambda_cd * led["cd"], "id": self.lambda_led * self.lambda_id * led["id"]}


@register_distiller("cd")
class CDDistiller(_Objective):
    """``bce_weight·BCE_sum + λ_CD·L_CD`` (class-aware structure only; a sum over labels).

    Args:
        lambda_cd: weight of CD (reference 100).
        bce_weight: weight of the summed BCE.
        validate: data-dependent input checks.
    """

    name = "cd"
    uses_embeddings = True
    teacher_terms = {"cd": "label_embeddings"}

    def __init__(self, *, lambda_cd: float = 100.0, bce_weight: float = 1.0, validate: bool = True) -> None:
        super().__init__(bce_weight=bce_weight, validate=validate)
        self.lambda_cd = check_weight(lambda_cd, "lambda_cd")

    def distill_terms(self, student: ModelOutput, teacher: ModelOutput | None, mask: Tensor) -> dict[str, Tensor]:
        es, et = self._embeddings(student, teacher)
        return {"cd": self.lambda_cd * self._structure_terms(es, et, mask, ("cd",))["cd"]}


@register_distiller("id")
class IDDistiller(_Objective):
    """``bce_weight·BCE_sum + λ_ID·L_ID`` (instance-aware structure only; a sum over images).

    Args:
        lambda_id: weight of ID (reference 1000).
        bce_weight: weight of the summed BCE.
        validate: data-dependent input checks.
    """

    name = "id"
    uses_embeddings = True
    teacher_terms = {"id": "label_embeddings"}

    def __init__(self, *, lambda_id: float = 1000.0, bce_weight: float = 1.0, validate: bool = True) -> None:
        super().__init__(bce_weight=bce_weight, validate=validate)
        self.lambda_id = check_weight(lambda_id, "lambda_id")

    def distill_terms(self, student: ModelOutput, teacher: ModelOutput | None, mask: Tensor) -> dict[str, Tensor]:
        es, et = self._embeddings(student, teacher)
        return {"id": self.lambda_id * self._structure_terms(es, et, mask, ("id",))["id"]}


@register_distiller("kd")
class KDDistiller(_Objective):
    """``bce_weight·BCE_sum + λ_KD·L_KD``: sigmoid soft-target KD (see `kd_loss`), a mean over images.

    The defaults, τ = 1 and λ_KD = 192 (3 per image at batch 64, the balanced L2D's MLD weight), were chosen on
    validation by the same search as L2D's weights (docs/results.md, "the baselines given the same weight
    search"); until then they were Hinton's τ = 4 and the paper form's MLD weight, 10, under which KD pulled a fifth
    as hard as the labels. At τ = 1 this is MLD plus the teacher's entropy, a constant: the same gradient.

    Args:
        lambda_kd: weight on the batch mean (default 192).
        temperature: softening temperature τ (default 1; the loss carries τ²).
        bce_weight: weight of the summed BCE.
        validate: data-dependent input checks.
    """

    name = "kd"
    teacher_terms = {"kd": "logits"}
    batch_mean_terms = frozenset({"kd"})

    def __init__(self, *, lambda_kd: float = 192.0, temperature: float = 1.0, bce_weight: float = 1.0,
                 validate: bool = True) -> None:
        super().__init__(bce_weight=bce_weight, validate=validate)
        self.lambda_kd, self.temperature = check_weight(lambda_kd, "lambda_kd"), float(temperature)

    def distill_terms(self, student: ModelOutput, teacher: ModelOutput | None, mask: Tensor) -> dict[str, Tensor]:
        zs, zt = self._logits(student, teacher)
        return {"kd": self.lambda_kd * kd_loss(zs, zt, self.temperature, validate=False)}


@register_distiller("ps")
class PSDistiller(_Objective):
    """``bce_weight·BCE_sum + λ_PS·L_PS``: partial softmax (see `ps_loss`), a mean over images.

    Args:
        lambda_ps: weight (default 10, MLD's weight: same reduction).
        temperature: softmax temperature τ (default 1; the loss carries τ²).
        bce_weight: weight of the summed BCE.
        validate: data-dependent input checks.
    """

    name = "ps"
    teacher_terms = {"ps": "logits"}
    batch_mean_terms = frozenset({"ps"})

    def __init__(self, *, lambda_ps: float = 10.0, temperature: float = 1.0, bce_weight: float = 1.0,
                 validate: bool = True) -> None:
        super().__init__(bce_weight=bce_weight, validate=validate)
        self.lambda_ps, self.temperature = check_weight(lambda_ps, "lambda_ps"), float(temperature)

    def distill_terms(self, student: ModelOutput, teacher: ModelOutput | None, mask: Tensor) -> dict[str, Tensor]:
        zs, zt = self._logits(student, teacher)
        return {"ps": self.lambda_ps * ps_loss(zs, zt, mask, self.temperature, validate=False)}


@register_distiller("mse")
class MSEDistiller(_Objective):
    """``bce_weight·BCE_sum + λ_MSE·MSE``: FitNet-style feature matching or logit matching.

    ``target="features"`` compares the deepest feature maps. When the channel widths differ, `build`
    creates a learned projection of the student map to the teacher's width (a bias-free 1×1 conv, or
    a linear layer for ``[N, C]`` vectors), trained with the student. When the spatial sizes differ,
    the teacher map is adaptive-average-pooled to the student's size. ``target="logits"`` compares
    ``[N, q]`` logits. MSE is a mean over elements (``batch_mean_terms``).

    Args:
        target: ``"features"`` or ``"logits"``.
        lambda_mse: weight; ``None`` picks 6400 for features (FitNet's usual 100 × 64) and 64 for
            logits (plain logit matching, weight 1 × 64).
        bce_weight: weight of the summed BCE.
        validate: data-dependent input checks.
    """

    name = "mse"
    uses_features = True  # cleared on instances built with target="logits"
    batch_mean_terms = frozenset({"mse"})

    def __init__(self, *, target: str = "features", lambda_mse: float | None = None, bce_weight: float = 1.0,
                 validate: bool = True) -> None:
        super().__init__(bce_weight=bce_weight, validate=validate)
        if target not in ("features", "logits"):
            raise ValueError(f"target must be 'features' or 'logits', got {target!r}")
        self.target = target
        self.uses_features = target == "features"
        self.teacher_terms = {"mse": target}
        default = 6400.0 if target == "features" else 64.0
        self.lambda_mse = check_weight(default if lambda_mse is None else lambda_mse, "lambda_mse")
        self.projection: nn.Module | None = None

    def build(self, student: ModelOutput, teacher: ModelOutput) -> None:
        """Create the projection when the deepest student and teacher maps differ in width.

        Args:
            student: sample student outputs (``features[-1]`` ``[N, C_s, H, W]`` or ``[N, C_s]``).
            teacher: sample teacher outputs (``features[-1]`` ``[N, C_t, ...]``).
        """
        if self.target != "features":
            return
        n = student.logits.shape[0]
        fs, ft = self._deepest(student, "student", n), self._deepest(teacher, "teacher", n)
        if fs.dim() != ft.dim():
            raise ValueError(f"student.features[-1] {tuple(fs.shape)} and teacher.features[-1] {tuple(ft.shape)} "
                             f"must both be [N, C, H, W] maps or both [N, C] vectors")
        c_s, c_t = fs.shape[1], ft.shape[1]
        if c_s == c_t:
            self.projection = None
            return
        layer = nn.Conv2d(c_s, c_t, kernel_size=1, bias=False) if fs.dim() == 4 else nn.Linear(c_s, c_t, bias=False)
        self.projection = layer.to(fs.device)

    def distill_terms(self, student: ModelOutput, teacher: ModelOutput | None, mask: Tensor) -> dict[str, Tensor]:
        if self.target == "logits":
            zs, zt = self._logits(student, teacher)
            return {"mse": self.lambda_mse * mse_loss(zs, zt, validate=False)}
        n = student.logits.shape[0]
        fs, ft = self._deepest(student, "student", n), self._deepest(teacher, "teacher", n)
        if self.projection is not None:
            fs = self.projection(fs.to(self.projection.weight.dtype))
        if fs.shape[1] != ft.shape[1]:
            raise ValueError(f"student.features[-1] has {fs.shape[1]} channels and teacher.features[-1] has "
                             f"{ft.shape[1]}; call build(student, teacher) first so that the 'mse' distiller "
                             f"creates its projection")
        if fs.dim() == 4 and fs.shape[2:] != ft.shape[2:]:
            ft = nn.functional.adaptive_avg_pool2d(ft.detach(), fs.shape[2:])
        return {"mse": self.lambda_mse * mse_loss(fs, ft, validate=False)}


@register_distiller("rkd")
class RKDDistiller(_Objective):
    """``bce_weight·BCE_sum + λ_D·RKD_distance + λ_A·RKD_angle`` on pooled deepest features.

    The deepest feature maps are global-average-pooled to ``[N, C]``; terms ``rkd_distance`` (mean over
    pairs) and ``rkd_angle`` (mean over triplets). Defaults are the RKD paper's 25 and 50, times 64.

    Args:
        lambda_distance: weight of the distance term (default 1600).
        lambda_angle: weight of the angle term (default 3200).
        bce_weight: weight of the summed BCE.
        validate: data-dependent input checks.
    """

    name = "rkd"
    uses_features = True
    teacher_terms = {"rkd_distance": "features", "rkd_angle": "features"}
    batch_mean_terms = frozenset({"rkd_distance", "rkd_angle"})

    def __init__(self, *, lambda_distance: float = 1600.0, lambda_angle: float = 3200.0, bce_weight: float = 1.0,
                 validate: bool = True) -> None:
        super().__init__(bce_weight=bce_weight, validate=validate)
        self.lambda_distance = check_weight(lambda_distance, "lambda_distance")
        self.lambda_angle = check_weight(lambda_angle, "lambda_angle")

    def distill_terms(self, student: ModelOutput, teacher: ModelOutput | None, mask: Tensor) -> dict[str, Tensor]:
        fs, ft = self._pooled(student, teacher)
        return {
            "rkd_distance": self.lambda_distance * rkd_distance_loss(fs, ft, validate=False),
            "rkd_angle": self.lambda_angle * rkd_angle_loss(fs, ft, validate=False),
        }


@register_distiller("pkt")
class PKTDistiller(_Objective):
    """``bce_weight·BCE_sum + λ_PKT·L_PKT`` on pooled deepest features (see `pkt_loss`).

    The default 15000 is half the weight of the CRD benchmark (30000 on a mean over N² entries, i.e. 30000/N on our
    per-image mean, times 64 for the summed BCE: 30000 at batch 64). The half was chosen on validation by the same
    search as L2D's weights (docs/results.md, "the baselines given the same weight search"); it equals the
    relation term of the default ``l2d`` (234.375 per image × 64).

    Args:
        lambda_pkt: weight on the batch mean (default 15000).
        bce_weight: weight of the summed BCE.
        validate: data-dependent input checks.
    """

    name = "pkt"
    uses_features = True
    teacher_terms = {"pkt": "features"}
    batch_mean_terms = frozenset({"pkt"})

    def __init__(self, *, lambda_pkt: float = 15000.0, bce_weight: float = 1.0, validate: bool = True) -> None:
        super().__init__(bce_weight=bce_weight, validate=validate)
        self.lambda_pkt = check_weight(lambda_pkt, "lambda_pkt")

    def distill_terms(self, student: ModelOutput, teacher: ModelOutput | None, mask: Tensor) -> dict[str, Tensor]:
        fs, ft = self._pooled(student, teacher)
        return {"pkt": self.lambda_pkt * pkt_loss(fs, ft, validate=False)}

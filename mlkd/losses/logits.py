"""Logit-level losses: the task BCE, MLD (one-versus-all KL), sigmoid soft-target KD and PS.

Every function takes logits ``[N, q]`` (never probabilities), computes in float32 (float64 if an input
is float64) with autocast off, and detaches the teacher. Reductions are stated per function; the
``l2d`` preset's weights assume exactly these reductions (method.md §3.5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mlkd.losses._checks import (
    check_finite,
    check_leading,
    check_positive,
    check_targets,
    check_tensor,
    compute_dtype,
    full_precision,
)


def _logit_pair(student_logits: Tensor, teacher_logits: Tensor, validate: bool) -> tuple[Tensor, Tensor]:
    """Validate a student/teacher logit pair and return both in the compute dtype, teacher detached."""
    check_tensor(student_logits, "student_logits", 2, "[N, q]")
    check_tensor(teacher_logits, "teacher_logits", 2, "[N, q]")
    check_leading(teacher_logits, "teacher_logits", tuple(student_logits.shape), "student_logits", "[N, q]")
    if validate:
        check_finite(student_logits, "student_logits")
        check_finite(teacher_logits, "teacher_logits")
    dtype = compute_dtype(student_logits, teacher_logits)
    return student_logits.to(dtype), teacher_logits.detach().to(dtype)


def bce_sum_loss(logits: Tensor, targets: Tensor, *, validate: bool = True) -> Tensor:
    """Binary cross-entropy of per-label sigmoids, **summed** over batch and labels (method.md §3.5).

    Args:
        logits: ``[N, q]`` student logits.
        targets: ``[N, q]`` multi-hot labels in {0, 1} (any dtype).
        validate: check targets are in {0, 1} and logits finite (syncs on GPU).

    Returns:
        Scalar tensor (float32, or float64 for float64 logits).
    """
    check_tensor(logits, "logits", 2, "[N, q]")
    mask = check_targets(targets, logits.shape[0], logits.shape[1], "logits", validate)
    if validate:
        check_finite(logits, "logits")
    with full_precision(logits.device):
        z = logits.to(compute_dtype(logits))
        return F.binary_cross_entropy_with_logits(z, mask.to(z.dtype), reduction="sum")


def mld_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, *,
             validate: bool = True) -> Tensor:
    """Multi-label logits distillation (method.md §3.1): a binary KL(teacher ‖ student) per label.

    ``L = τ² · (1/N) Σ_i Σ_k KL(Bern(σ(z^t_ik/τ)) ‖ Bern(σ(z^s_ik/τ)))``, computed from logits with
    ``logsigmoid`` so that saturated probabilities need no clamping. τ = 1 is the reference (no
    temperature, no τ² factor change). Reduction: sum over labels, **mean over the batch**.

    Args:
        student_logits: ``[N, q]``.
        teacher_logits: ``[N, q]``; detached.
        temperature: τ > 0.
        validate: check for NaN/inf (syncs on GPU).

    Returns:
        Scalar tensor, ≥ 0.
    """
    check_positive(temperature, "temperature")
    zs, zt = _logit_pair(student_logits, teacher_logits, validate)
    with full_precision(zs.device):
        zs, zt = zs / temperature, zt / temperature
        # log p and log(1-p) straight from logits: exact for |z| large, where σ(z) rounds to 0 or 1.
        log_ps, log_qs = F.logsigmoid(zs), F.logsigmoid(-zs)
        log_pt, log_qt = F.logsigmoid(zt), F.logsigmoid(-zt)
        kl = torch.sigmoid(zt) * (log_pt - log_ps) + torch.sigmoid(-zt) * (log_qt - log_qs)
        return kl.sum(dim=1).mean() * (temperature * temperature)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, *,
            validate: bool = True) -> Tensor:
    """Sigmoid soft-target KD: per-label binary cross-entropy against the teacher's probabilities.

    ``L = τ² · (1/N) Σ_i Σ_k BCE(σ(z^s_ik/τ), target σ(z^t_ik/τ))`` (Hinton's τ² keeps gradient scale
    independent of τ). It equals MLD plus the teacher's entropy, a constant for the student, so at the same τ
    their gradients are equal. The default τ = 1 is the KD baseline's (chosen on validation in issue 19);
    Hinton's τ = 4, made for a softmax, mostly rescales confident per-label logits (docs/results.md). Reduction:
    sum over labels, **mean over the batch** (like MLD, so the same weights are comparable).

    Args:
        student_logits: ``[N, q]``.
        teacher_logits: ``[N, q]``; detached.
        temperature: τ > 0.
        validate: check for NaN/inf (syncs on GPU).

    Returns:
        Scalar tensor.
    """
    check_positive(temperature, "temperature")
    zs, zt = _logit_pair(student_logits, teacher_logits, validate)
    with full_precision(zs.device):
        zs, zt = zs / temperature, zt / temperature
        bce = F.binary_cross_entropy_with_logits(zs, torch.sigmoid(zt), reduction="none")
        return bce.sum(dim=1).mean() * (temperature * temperature)


def ps_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float = 1.0, *,
            validate: bool = True) -> Tensor:
    """Partial softmax distillation (method.md §5): one softmax per positive label.

    For image i with positive labels P_i and negatives N_i, and each c ∈ P_i, the set S = N_i ∪ {c}
    gets a softmax over logits/τ for teacher and student, and ``KL(p^t_S ‖ p^s_S)`` is taken.
    ``L = τ² · (1/N) Σ_i Σ_{c ∈ P_i} KL_ic``. Reduction: sum over positives, **mean over the batch**.
    An image without positives adds 0; an image whose labels are all positive adds 0 (each S has one
    element).

    Computed in closed form in O(N·q), no loop: with ``Λ_i = logsumexp_{j∈N_i} z_ij``,
    ``Z_ic = logaddexp(Λ_i, z_ic)``, ``δ = z^t − z^s``, ``w_ij = softmax_{N_i}(z^t_i)_j`` and
    ``r_ic = σ(Λ^t_i − z^t_ic)`` (the teacher's mass on the negatives),
    ``KL_ic = r_ic Σ_{j∈N_i} w_ij δ_ij + (1 − r_ic) δ_ic + Z^s_ic − Z^t_ic``.

    Args:
        student_logits: ``[N, q]``.
        teacher_logits: ``[N, q]``; detached.
        targets: ``[N, q]`` multi-hot labels in {0, 1}.
        temperature: τ > 0.
        validate: check labels and NaN/inf (syncs on GPU).

    Returns:
        Scalar tensor, ≥ 0 up to rounding.
    """
    check_positive(temperature, "temperature")
    zs, zt = _logit_pair(student_logits, teacher_logits, validate)
    pos = check_targets(targets, zs.shape[0], zs.shape[1], "student_logits", validate)
    with full_precision(zs.device):
        zs, zt = zs / temperature, zt / temperature
        neg = ~pos
        has_neg = neg.any(dim=1, keepdim=True)

        def neg_logsumexp(z: Tensor) -> tuple[Tensor, Tensor]:
            # Rows without negatives would take logsumexp of an empty set (-inf) whose backward is
            # NaN; compute a finite stand-in there and swap in -inf only after, through `where`.
            safe = torch.where(has_neg, z.masked_fill(pos, float("-inf")), torch.zeros_like(z))
            lse_safe = torch.logsumexp(safe, dim=1, keepdim=True)
            return lse_safe, torch.where(has_neg, lse_safe, torch.full_like(lse_safe, float("-inf")))

        lse_t_safe, lse_t = neg_logsumexp(zt)
        _, lse_s = neg_logsumexp(zs)
        delta = zt - zs
        w = torch.where(neg, torch.exp(zt - lse_t_safe), torch.zeros_like(zt))
        neg_term = (w * delta).sum(dim=1, keepdim=True)
        kl = (torch.sigmoid(lse_t - zt) * neg_term + torch.sigmoid(zt - lse_t) * delta
              + torch.logaddexp(lse_s, zs) - torch.logaddexp(lse_t, zt))
        kl = torch.where(pos, kl, torch.zeros_like(kl))
        return kl.sum() / zs.shape[0] * (temperature * temperature)

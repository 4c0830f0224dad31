"""Feature-level baselines: MSE (FitNet-style hint), RKD (distance and angle) and PKT.

The relational losses (RKD, PKT) take one vector per image, ``[N, C]`` (the distillers pass the
global-average-pooled deepest feature map); student and teacher widths may differ. MSE compares
tensors of the same shape (features after an optional projection, or logits). All three compute in
float32 (float64 for float64 inputs) with autocast off and detach the teacher. Distances come from
exact differences, so equal vectors are at distance exactly 0 (no Gram-matrix rounding residue).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mlkd.losses._checks import check_finite, check_leading, check_tensor, compute_dtype, full_precision
from mlkd.losses.label_embedding import padded_structure_losses


def _vector_pair(student: Tensor, teacher: Tensor, validate: bool) -> None:
    """Validate a ``[N, C_s]`` / ``[N, C_t]`` pair of per-image vectors."""
    check_tensor(student, "student_feat", 2, "[N, C_s]")
    check_tensor(teacher, "teacher_feat", 2, "[N, C_t]")
    check_leading(teacher, "teacher_feat", (student.shape[0],), "student_feat", "[N, C_t]")
    if validate:
        check_finite(student, "student_feat")
        check_finite(teacher, "teacher_feat")


def mse_loss(student: Tensor, teacher: Tensor, *, validate: bool = True) -> Tensor:
    """Mean squared error between student and (detached) teacher tensors of the same shape.

    Reduction: **mean over every element** (as ``torch.nn.MSELoss``), so the value does not depend on
    the feature map's size.

    Args:
        student: ``[N, ...]`` student features (already projected to the teacher's width) or logits.
        teacher: same shape as ``student``; detached.
        validate: check for NaN/inf (syncs on GPU).

    Returns:
        Scalar tensor.
    """
    if not isinstance(student, Tensor) or student.dim() < 2 or student.numel() == 0:
        raise ValueError(f"student must be a non-empty tensor [N, ...] with at least 2 dimensions, got "
                         f"{tuple(student.shape) if isinstance(student, Tensor) else type(student).__name__}")
    check_tensor(teacher, "teacher", student.dim(), "the student's shape")
    if teacher.shape != student.shape:
        raise ValueError(f"teacher must have the student's shape {tuple(student.shape)}, got {tuple(teacher.shape)}")
    if validate:
        check_finite(student, "student")
        check_finite(teacher, "teacher")
    with full_precision(student.device):
        dtype = compute_dtype(student, teacher)
        return F.mse_loss(student.to(dtype), teacher.detach().to(dtype), reduction="mean")


def rkd_distance_loss(student_feat: Tensor, teacher_feat: Tensor, *, validate: bool = True) -> Tensor:
    """RKD distance term (Park et al., 2019): match mean-normalised pairwise distances.

    ``L = (1/N²) Σ_{i,j} smoothL1(D̂^s_ij − D̂^t_ij)`` with ``D̂ = D / mean_{i≠j} D_ij``; this is the
    structure function H of the whole batch divided by N. Reduction: **mean over the N² pairs**.
    A batch with N < 2 or with all-equal vectors on either side gives 0.

    Args:
        student_feat: ``[N, C_s]`` per-image vectors.
        teacher_feat: ``[N, C_t]``; detached.
        validate: check for NaN/inf (syncs on GPU).

    Returns:
        Scalar tensor.
    """
    _vector_pair(student_feat, teacher_feat, validate)
    n = student_feat.shape[0]
    with full_precision(student_feat.device):
        valid = torch.ones(1, n, dtype=torch.bool, device=student_feat.device)
        return padded_structure_losses(student_feat.unsqueeze(0), teacher_feat.unsqueeze(0), valid)[0] / n


def _angles(x: Tensor) -> Tensor:
    """``[N, C]`` → ``[N, N, N]`` cosines ``cos∠(x_j − x_i, x_k − x_i)`` (0 where a side has length 0).

    Dot products come from the Gram matrix G, ``⟨x_j − x_i, x_k − x_i⟩ = G_jk − G_ij − G_ik + G_ii``,
    so memory is N³, never N²·C. Lengths come from ``cdist`` without the Gram shortcut: it returns an
    exact 0 for equal vectors, where the Gram form leaves a residue whose "direction" is noise.
    """
    x = x.to(torch.float32 if x.device.type == "mps" else torch.float64)
    x = x - x.mean(dim=0, keepdim=True)  # exact for differences; shrinks the Gram's cancellation
    g = x @ x.t()
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")  # [i, j] = |x_j − x_i|
    live = dist > 0
    dot = g.unsqueeze(0) - g.unsqueeze(2) - g.unsqueeze(1) + g.diagonal().view(-1, 1, 1)  # [i, j, k]
    denom = dist.unsqueeze(2) * dist.unsqueeze(1)
    both = live.unsqueeze(2) & live.unsqueeze(1)
    return torch.where(both, dot / torch.where(both, denom, torch.ones_like(denom)), torch.zeros_like(denom))


def rkd_angle_loss(student_feat: Tensor, teacher_feat: Tensor, *, validate: bool = True) -> Tensor:
    """RKD angle term (Park et al., 2019): match the angles of every triplet.

    ``L = (1/N³) Σ_{i,j,k} smoothL1(ψ^s_ijk − ψ^t_ijk)`` with ``ψ_ijk = cos∠(x_j − x_i, x_k − x_i)``
    (0 when x_j = x_i or x_k = x_i). Reduction: **mean over the N³ triplets**.

    Args:
        student_feat: ``[N, C_s]`` per-image vectors.
        teacher_feat: ``[N, C_t]``; detached.
        validate: check for NaN/inf (syncs on GPU).

    Returns:
        Scalar tensor.
    """
    _vector_pair(student_feat, teacher_feat, validate)
    with full_precision(student_feat.device):
        dtype = compute_dtype(student_feat, teacher_feat)
        a_s = _angles(student_feat)
        with torch.no_grad():
            a_t = _angles(teacher_feat.detach())
        return F.smooth_l1_loss(a_s, a_t, reduction="mean", beta=1.0).to(dtype)


def pkt_loss(student_feat: Tensor, teacher_feat: Tensor, *, eps: float = 1e-7, validate: bool = True) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, 2018) with the cosine kernel.

    Each side's cosine similarities are mapped to [0, 1] (``(cos + 1)/2``, a zero vector has cosine 0
    with everything) and each row is normalised into a conditional distribution ``P_{j|i}``;
    ``L = (1/N) Σ_i Σ_j P^t_{j|i} log((P^t_{j|i} + ε) / (P^s_{j|i} + ε))``. Reduction: sum over j,
    **mean over the N images**. ε keeps the log finite when a similarity is exactly 0.

    Args:
        student_feat: ``[N, C_s]`` per-image vectors.
        teacher_feat: ``[N, C_t]``; detached.
        eps: the ε above.
        validate: check for NaN/inf (syncs on GPU).

    Returns:
        Scalar tensor.
    """
    _vector_pair(student_feat, teacher_feat, validate)
    with full_precision(student_feat.device):
        dtype = compute_dtype(student_feat, teacher_feat)

        def conditional(x: Tensor) -> Tensor:
            norm = x.norm(dim=1, keepdim=True)
            unit = torch.where(norm > 0, x / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(x))
            sim = (unit @ unit.t() + 1) / 2
            return sim / sim.sum(dim=1, keepdim=True)

        p_s = conditional(student_feat.to(dtype))
        p_t = conditional(teacher_feat.detach().to(dtype))
        return (p_t * (torch.log(p_t + eps) - torch.log(p_s + eps))).sum(dim=1).mean()

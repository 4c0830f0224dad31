"""Balanced CD and ID: the label-wise structure losses normalised per positive (docs/method.md).

The paper's CD and ID (`mlkd.losses.label_embedding`) are *sums* over groups of a structure loss that
itself grows with the group's size, so their size relative to the task loss depends on the batch
size, the number of labels and the label density. The balanced forms here are averages that depend
on none of these:

    Ĥ(A, B) = (1/m²) Σ_{a,b} smoothL1( D(A)_ab / μ_A − D(B)_ab / μ_B ),   μ_A = (1/m²) Σ_{a,b} D(A)_ab
    CD_pos  = Σ_c n_c · Ĥ_c / Σ_c n_c       (groups: the positives of each label c, n_c of them)
    ID_pos  = Σ_i k_i · Ĥ_i / Σ_i k_i       (groups: the positive labels of each image i, k_i of them)

Both the normalising mean μ and the loss average over all m² ordered pairs, the zero diagonal
included (a V-statistic), and each group is weighted by its number of positives, so the value is an
average *per positive (image, label) instance*: duplicating every image of a batch leaves it exactly
unchanged (the duplicate pairs have distance 0 on both sides). Groups of one member, and groups whose
distances are all 0, contribute 0 but still count as positives. Distances are scale-free after the
division by μ, so each group is rescaled by its largest entry first: finite inputs of any magnitude
(1e20 or 1e-20) give finite values.

Groups are gathered into padded ``[G, m_max, d]`` blocks (one host sync reads m_max) and their
pairwise distances come from one batched Gram product; the teacher side runs without autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _padded_groups(emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Gather the members of each group (row of ``mask``) to the front of a padded block.

    Args:
        emb: ``[G, M, d]`` candidates of every group (may be a non-contiguous view).
        mask: ``[G, M]`` bool, which candidates are members.

    Returns:
        ``[G, m_max, d]`` members (padding holds arbitrary members) and the ``[G, m_max]`` validity mask.
    """
    counts = mask.sum(dim=1)
    m_max = int(counts.max()) if counts.numel() else 0
    # A stable sort on "not a member" puts each group's members first, in their original order.
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :m_max]
    members = emb.gather(1, order.unsqueeze(-1).expand(-1, -1, emb.shape[-1]))
    valid = torch.arange(m_max, device=mask.device) < counts.unsqueeze(1)
    return members, valid


def _normalised_distances(x: Tensor, valid: Tensor, pair_mask: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pairwise distances of each group divided by their mean over all m² ordered pairs.

    Args:
        x: ``[G, n, d]`` group members.
        valid: ``[G, n]`` float, 1 for valid members.
        pair_mask: ``[G, n, n]`` float, 1 for pairs of two valid members.
        m: ``[G]`` group sizes (float).

    Returns:
        ``[G, n, n]`` normalised distances (0 outside valid pairs and in degenerate groups), the
        ``[G]`` bool mask of groups whose mean distance is positive, and the ``[G]`` bool mask of
        groups whose members are all finite (NaN/inf would otherwise vanish in the masks above).
    """
    # Distances do not change under a shift: centring each group keeps the Gram form below accurate
    # (less cancellation); they are scale-free after the division by the mean, so each group is
    # also divided by its largest magnitude, and squares never overflow or underflow.
    x = x - ((x * valid.unsqueeze(-1)).sum(dim=1, keepdim=True) / m.view(-1, 1, 1)).detach()
    scale = x.detach().abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    x = x / scale
    sq = (x * x).sum(dim=-1)
    norms = sq.unsqueeze(2) + sq.unsqueeze(1)
    d2 = norms - 2.0 * (x @ x.transpose(1, 2))
    # The Gram form leaves rounding noise of order eps·|x|² where the distance is 0 (the diagonal,
    # duplicated images): below that level a distance is taken as exactly 0.
    positive = (d2 > 16 * torch.finfo(x.dtype).eps * norms) & (pair_mask > 0)
    # sqrt only where positive: zero distances (diagonal, duplicates) get gradient 0, never NaN.
    dist = torch.where(positive, d2.clamp_min(torch.finfo(x.dtype).tiny).sqrt(), 0.0)
    mean = dist.sum(dim=(1, 2)) / (m * m)
    live = mean > 0
    return dist / torch.where(live, mean, 1.0).view(-1, 1, 1), live, torch.isfinite(scale).view(-1)


def _structure_per_group(es: Tensor, et: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Ĥ of every group with at least two members, and each group's member count.

    Args:
        es: ``[G, M, d_s]`` student candidates; et: ``[G, M, d_t]`` teacher candidates.
        mask: ``[G, M]`` bool membership.

    Returns:
        ``[G']`` values of Ĥ (groups with m ≥ 2) and their ``[G']`` sizes (float).
    """
    counts = mask.sum(dim=1)
    keep = (counts >= 2).nonzero().squeeze(1)
    if keep.numel() == 0:
        return es.new_zeros(0), es.new_zeros(0)
    mask = mask.index_select(0, keep)
    s, valid = _padded_groups(es.index_select(0, keep), mask)
    with torch.no_grad():
        t, _ = _padded_groups(et.index_select(0, keep), mask)
    m = counts.index_select(0, keep).to(es.dtype)
    pair_mask = (valid.unsqueeze(2) & valid.unsqueeze(1)).to(es.dtype)
    valid_f = valid.to(es.dtype)
    s_hat, s_live, s_finite = _normalised_distances(s, valid_f, pair_mask, m)
    with torch.no_grad():
        t_hat, t_live, t_finite = _normalised_distances(t.to(es.dtype), valid_f, pair_mask, m)
    huber = F.smooth_l1_loss(s_hat, t_hat, reduction="none", beta=1.0) * pair_mask
    value = huber.sum(dim=(1, 2)) / (m * m)
    # A degenerate group (all distances 0 on either side) has no structure to match; a group with a
    # NaN/inf member gives NaN, so the caller's one check of the finished total catches it.
    value = torch.where(s_live & t_live, value, 0.0)
    return torch.where(s_finite & t_finite, value, float("nan")), m


def balanced_structure_terms(student: Tensor, teacher: Tensor, targets: Tensor,
                             terms: tuple[str, ...] = ("cd", "id")) -> dict[str, Tensor]:
    """CD_pos and ID_pos: per-positive averages of the balanced structure loss (see module docstring).

    Args:
        student: ``[N, q, d_s]`` student label-wise embeddings.
        teacher: ``[N, q, d_t]`` teacher label-wise embeddings (no gradient flows into them).
        targets: ``[N, q]`` bool (or {0, 1}) label mask; checked by the caller.
        terms: which of ``"cd"``, ``"id"`` to compute.

    Returns:
        ``{"cd": scalar, "id": scalar}`` (the requested ones); 0 when the batch has no positive.
    """
    mask = targets.bool()
    positives = mask.sum().to(student.dtype).clamp_min(1.0)
    teacher = teacher.detach()
    out: dict[str, Tensor] = {}
    for name in terms:
        if name == "cd":  # groups: labels; members: the images holding the label
            value, m = _structure_per_group(student.transpose(0, 1), teacher.transpose(0, 1), mask.t())
        elif name == "id":  # groups: images; members: their positive labels
            value, m = _structure_per_group(student, teacher, mask)
        else:
            raise ValueError(f"unknown structure term {name!r}; use 'cd' or 'id'")
        out[name] = (m * value).sum() / positives
    return out

"""Label-wise embedding distillation (method.md §3.2–3.4): the structure function, CD, ID and LED.

All groups (labels for CD, images for ID) are computed at once, without a Python loop:

1. count the positives of every group; one host sync reads the sizes needed below (the only sync
   of a call);
2. gather all positive embeddings once into compact ``[P, d]`` rows, and list each kept group's
   members in a padded ``[G, n_max]`` index with a validity mask (``topk`` on the 0/1 mask puts the
   positives first, so no ``nonzero``);
3. list every pair of members of every group, take exact distances from row differences, and
   reduce per group with ``index_add`` (masked means, smooth-L1 sums).

Cost therefore follows the positives and their pairs, not q² or N²: a 1,000-label batch with a few
positives per image costs about as much as an 80-label one. Memory is (pairs × d); a label present
in m images of the batch adds m(m − 1)/2 pairs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mlkd.losses._checks import (
    check_finite,
    check_leading,
    check_targets,
    check_tensor,
    compute_dtype,
    full_precision,
)


def _select(flags: Tensor, count: int) -> Tensor:
    """Positions of the True entries of a 1-D bool tensor whose number of Trues (``count``) is known.

    Each True entry is scattered to its rank; the False ones all land in a spare slot that is
    dropped. Unlike ``nonzero()`` this needs no host sync, because ``count`` is already known.
    """
    rank = flags.cumsum(0) - 1
    slot = torch.where(flags, rank, torch.full_like(rank, count))
    out = torch.zeros(count + 1, dtype=torch.long, device=flags.device)
    return out.scatter_(0, slot, torch.arange(flags.numel(), device=flags.device))[:count]


def _structure_from_pairs(rows_s: Tensor, rows_t: Tensor, members: Tensor, valid: Tensor, n_pairs: int) -> Tensor:
    """The structure function H of G sets whose members are rows of compact arrays.

    Every unordered pair {a, b} of distinct members of a set is listed once (``n_pairs`` in all),
    its distance taken from the exact difference ``rows[a] − rows[b]`` (an exact 0 for equal
    embeddings, where the Gram form would leave rounding residue), and per-set means and sums are
    accumulated with ``index_add``. Work and memory are ``n_pairs · d``: what exact distances need.

    Args:
        rows_s: ``[P, d_s]`` student embeddings.
        rows_t: ``[P, d_t]`` teacher embeddings (same rows); used without gradient.
        members: ``[G, n]`` row index of each member of each set (padding slots arbitrary).
        valid: ``[G, n]`` bool member mask; real members first.
        n_pairs: ``Σ_g m_g (m_g − 1) / 2`` for the set sizes ``m_g`` of ``valid``.

    Returns:
        ``[G]`` values of H; 0 for sets with m < 2 or all-zero distances on either side.
    """
    g_sets, n = valid.shape
    dtype = compute_dtype(rows_s, rows_t)
    upper = torch.ones(n, n, dtype=torch.bool, device=valid.device).triu(diagonal=1)
    pair_flags = (valid.unsqueeze(2) & valid.unsqueeze(1) & upper).reshape(-1)
    pair = _select(pair_flags, n_pairs)  # flat index into [G, n, n]
    set_idx, a, b = pair // (n * n), (pair // n) % n, pair % n
    row_a, row_b = members[set_idx, a], members[set_idx, b]
    m = valid.sum(dim=1).to(dtype)
    n_ordered = (m * (m - 1)).clamp_min(1)

    def normalised(rows: Tensor) -> tuple[Tensor, Tensor]:
        rows = rows.to(dtype)
        diff = rows[row_a] - rows[row_b]  # [n_pairs, d]
        d2 = (diff * diff).sum(dim=1)
        live = d2 > 0
        # sqrt only where d2 > 0: the gradient of sqrt at 0 is infinite and would turn into NaN.
        dist = torch.where(live, torch.sqrt(torch.where(live, d2, torch.ones_like(d2))), torch.zeros_like(d2))
        mean = 2 * torch.zeros(g_sets, dtype=dtype, device=dist.device).index_add(0, set_idx, dist) / n_ordered
        ok = mean > 0
        return dist / torch.where(ok, mean, torch.ones_like(mean))[set_idx], ok

    d_s, ok_s = normalised(rows_s)
    with torch.no_grad():
        d_t, ok_t = normalised(rows_t.detach())
    huber = F.smooth_l1_loss(d_s, d_t, reduction="none", beta=1.0)
    # Each unordered pair stands for the two ordered pairs of H's double sum (the diagonal adds 0).
    per_set = 2 * torch.zeros(g_sets, dtype=dtype, device=huber.device).index_add(0, set_idx, huber) / m.clamp_min(1)
    return torch.where(ok_s & ok_t & (m >= 2), per_set, torch.zeros_like(per_set))


def padded_structure_losses(student: Tensor, teacher: Tensor, valid: Tensor) -> Tensor:
    """The structure function H (method.md §3.2) of G padded sets at once.

    ``H(A, B) = (1/m) Σ_{a,b} smoothL1_β=1(Â_ab − B̂_ab)`` with ``Â = D(A) / mean_{a≠b} D(A)_ab``.
    A set with fewer than 2 members, or whose student or teacher distances are all 0 (its
    normalisation is undefined; the reference would divide by zero), contributes 0.

    Args:
        student: ``[G, n, d_s]`` padded student sets.
        teacher: ``[G, n, d_t]`` padded teacher sets, same member order; detached here.
        valid: ``[G, n]`` bool member mask; the real members of a set must come first.

    Returns:
        ``[G]`` per-set values in the compute dtype of the inputs (float32 or float64).
    """
    g_sets, n = valid.shape
    m = valid.sum(dim=1)
    n_pairs = int((m * (m - 1) // 2).sum())  # host sync: the size of the pair list
    members = torch.arange(g_sets * n, device=valid.device).view(g_sets, n)
    return _structure_from_pairs(student.reshape(g_sets * n, -1), teacher.reshape(g_sets * n, -1),
                                 members, valid, n_pairs)


def _check_embeddings(student_emb: Tensor, teacher_emb: Tensor, targets: Tensor,
                      validate: bool) -> Tensor:
    """Validate an embedding pair and targets; return the boolean label mask ``[N, q]``."""
    check_tensor(student_emb, "student_emb", 3, "[N, q, d_s]")
    check_tensor(teacher_emb, "teacher_emb", 3, "[N, q, d_t]")
    n, q = student_emb.shape[:2]
    check_leading(teacher_emb, "teacher_emb", (n, q), "student_emb", "[N, q, d_t]")
    mask = check_targets(targets, n, q, "student_emb", validate)
    if validate:
        check_finite(student_emb, "student_emb")
        check_finite(teacher_emb, "teacher_emb")
    return mask


def _empty_loss(student_emb: Tensor) -> Tensor:
    """Exact zero that is still attached to the student graph (no NaN even for inf inputs)."""
    return student_emb.flatten()[:0].sum().to(compute_dtype(student_emb))


def _padded_groups(rank: Tensor, groups: Tensor, counts: Tensor, n_groups: int, n_max: int,
                   by_label: bool) -> tuple[Tensor, Tensor]:
    """Compact-row indices ``[G, n_max]`` and member mask of the groups with ≥ 2 positives.

    Args:
        rank: ``[N, q]`` index of each positive in the compact positives array (garbage elsewhere).
        groups: ``[G_all, M]`` bool mask, one row per candidate group.
        counts: ``[G_all]`` positives per group, already zeroed for groups with fewer than 2.
        n_groups: number of groups with ≥ 2 positives; n_max: the largest of them.
        by_label: groups are labels (CD, members are images) rather than images (ID).
    """
    # Kept groups have count ≥ 2 > 0, so the n_groups largest counts are exactly them.
    group_idx = torch.topk(counts, n_groups).indices  # [G]
    # topk of a 0/1 row lists its positives first; the remaining slots are padding.
    top = torch.topk(groups[group_idx].to(torch.uint8), n_max, dim=1)
    member, valid = top.indices, top.values.bool()  # [G, n_max]
    g = group_idx.unsqueeze(1)
    compact = rank[member, g] if by_label else rank[g, member]
    return compact.clamp_min(0), valid  # padding slots may hold -1; they are masked anyway


def _label_embedding_terms(student_emb: Tensor, teacher_emb: Tensor, mask: Tensor,
                           terms: tuple[str, ...] = ("cd", "id")) -> dict[str, Tensor]:
    """``{"cd": L_CD, "id": L_ID}`` (those named in ``terms``): sums over labels / images with ≥ 2
    positives of H(student positives, teacher positives).

    The positives of both tensors are gathered once into compact ``[P, d]`` arrays (P = number of
    positives); CD and ID then index those, so the backward pass writes into the full ``[N, q, d]``
    gradient once, as the floor does, and everything else costs in proportion to the pairs of
    positives that share a label (CD) or an image (ID).

    Args:
        student_emb: ``[N, q, d_s]``.
        teacher_emb: ``[N, q, d_t]``; detached.
        mask: ``[N, q]`` bool labels.
        terms: which of ``"cd"`` and ``"id"`` to compute.
    """
    n_img, q = mask.shape
    flat = mask.reshape(-1)
    cd_counts, id_counts = mask.sum(dim=0), mask.sum(dim=1)
    cd_counts = torch.where(cd_counts >= 2, cd_counts, torch.zeros_like(cd_counts))
    id_counts = torch.where(id_counts >= 2, id_counts, torch.zeros_like(id_counts))
    # The one host sync of a call: the sizes of the compact rows, padded groups and pair lists.
    stats = torch.stack([flat.sum(),
                         (cd_counts > 0).sum(), cd_counts.max(), (cd_counts * (cd_counts - 1) // 2).sum(),
                         (id_counts > 0).sum(), id_counts.max(), (id_counts * (id_counts - 1) // 2).sum()])
    n_pos, g_cd, n_cd, p_cd, g_id, n_id, p_id = (int(v) for v in stats.tolist())
    g_cd, g_id = (g_cd if "cd" in terms else 0), (g_id if "id" in terms else 0)
    out = {name: _empty_loss(student_emb) for name in terms}
    if g_cd == 0 and g_id == 0:
        return out
    order = _select(flat, n_pos)  # rows of the positives in [N*q], row-major
    rows_s = student_emb.reshape(n_img * q, -1).index_select(0, order)  # [P, d_s]
    rows_t = teacher_emb.detach().reshape(n_img * q, -1).index_select(0, order)  # [P, d_t]
    rank = (flat.cumsum(0) - 1).view(n_img, q)  # position of each positive among the P rows
    for name, groups, counts, n_groups, n_max, n_pairs in (("cd", mask.t(), cd_counts, g_cd, n_cd, p_cd),
                                                            ("id", mask, id_counts, g_id, n_id, p_id)):
        if n_groups > 0:
            members, valid = _padded_groups(rank, groups, counts, n_groups, n_max, by_label=name == "cd")
            out[name] = _structure_from_pairs(rows_s, rows_t, members, valid, n_pairs).sum()
    return out


def structure_loss(student_set: Tensor, teacher_set: Tensor, *, validate: bool = True) -> Tensor:
    """The structure function H of one set (method.md §3.2).

    Args:
        student_set: ``[m, d_s]`` embeddings.
        teacher_set: ``[m, d_t]`` embeddings in the same order; detached.
        validate: check for NaN/inf (syncs on GPU).

    Returns:
        Scalar tensor; 0 when m < 2 or when either side's distances are all 0.
    """
    check_tensor(student_set, "student_set", 2, "[m, d_s]")
    check_tensor(teacher_set, "teacher_set", 2, "[m, d_t]")
    check_leading(teacher_set, "teacher_set", (student_set.shape[0],), "student_set", "[m, d_t]")
    if validate:
        check_finite(student_set, "student_set")
        check_finite(teacher_set, "teacher_set")
    with full_precision(student_set.device):
        valid = torch.ones(1, student_set.shape[0], dtype=torch.bool, device=student_set.device)
        return padded_structure_losses(student_set.unsqueeze(0), teacher_set.unsqueeze(0), valid)[0]


def cd_loss(student_emb: Tensor, teacher_emb: Tensor, targets: Tensor, *, validate: bool = True) -> Tensor:
    """Class-aware label-wise embedding distillation (method.md §3.3).

    ``L_CD = Σ_{c : n_c ≥ 2} H({e^s_ic : y_ic = 1}, {e^t_ic : y_ic = 1})``: for every label, the
    structure among the images where it is a ground-truth positive. Reduction: **sum over labels**.

    Args:
        student_emb: ``[N, q, d_s]`` label-wise embeddings.
        teacher_emb: ``[N, q, d_t]``; detached.
        targets: ``[N, q]`` multi-hot labels in {0, 1}.
        validate: check labels and NaN/inf (syncs on GPU).

    Returns:
        Scalar tensor, 0 when no label has two positives.
    """
    mask = _check_embeddings(student_emb, teacher_emb, targets, validate)
    with full_precision(student_emb.device):
        return _label_embedding_terms(student_emb, teacher_emb, mask, ("cd",))["cd"]


def id_loss(student_emb: Tensor, teacher_emb: Tensor, targets: Tensor, *, validate: bool = True) -> Tensor:
    """Instance-aware label-wise embedding distillation (method.md §3.4).

    ``L_ID = Σ_{i : k_i ≥ 2} H({e^s_ic : y_ic = 1}, {e^t_ic : y_ic = 1})``: for every image, the
    structure among its positive labels' embeddings. Reduction: **sum over images**.

    Args:
        student_emb: ``[N, q, d_s]`` label-wise embeddings.
        teacher_emb: ``[N, q, d_t]``; detached.
        targets: ``[N, q]`` multi-hot labels in {0, 1}.
        validate: check labels and NaN/inf (syncs on GPU).

    Returns:
        Scalar tensor, 0 when no image has two positives.
    """
    mask = _check_embeddings(student_emb, teacher_emb, targets, validate)
    with full_precision(student_emb.device):
        return _label_embedding_terms(student_emb, teacher_emb, mask, ("id",))["id"]


def led_loss(student_emb: Tensor, teacher_emb: Tensor, targets: Tensor, lambda_cd: float = 100.0,
             lambda_id: float = 1000.0, *, validate: bool = True) -> Tensor:
    """Label-wise embedding distillation: ``λ_CD · L_CD + λ_ID · L_ID`` (method.md §3.5).

    Args:
        student_emb: ``[N, q, d_s]``.
        teacher_emb: ``[N, q, d_t]``; detached.
        targets: ``[N, q]`` multi-hot labels in {0, 1}.
        lambda_cd: weight of CD (reference 100).
        lambda_id: weight of ID (reference 1000).
        validate: check labels and NaN/inf once (syncs on GPU).

    Returns:
        Scalar tensor.
    """
    mask = _check_embeddings(student_emb, teacher_emb, targets, validate)
    with full_precision(student_emb.device):
        terms = _label_embedding_terms(student_emb, teacher_emb, mask)
        return lambda_cd * terms["cd"] + lambda_id * terms["id"]

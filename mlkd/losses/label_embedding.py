"""Label-wise embedding distillation (method.md §3.2–3.4): the structure function, CD, ID and LED.

All groups (labels for CD, images for ID) are computed at once, without a Python loop:

1. count the positives of every group; one host sync reads the sizes needed below (the number of
   positives and of pairs; the only sync of a call);
2. list the positives of every group, group after group (``nonzero_static``, which needs no sync
   once the count is known), with each one's rank inside its group;
3. list every unordered pair of members of every group straight from those ranks: a member of
   rank r pairs with the r members before it (``repeat_interleave`` with a known output size), so
   no padded ``[G, n, n]`` grid is built;
4. gather both ends of every pair with **one** ``index_select`` from the full ``[N·q, d]`` tensor
   (its backward is the single scatter into the ``[N, q, d]`` gradient that any CD/ID needs), take
   exact distances from the row differences, and reduce per group with ``index_add`` (masked means,
   smooth-L1 sums). The teacher side runs without autograd.

CD and ID share one pair list (CD's groups first, then ID's), so the whole of LED is one pass.
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


def _members(groups: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """The True entries of a ``[G, M]`` bool mask, group after group, with their rank in the group.

    Args:
        groups: ``[G, M]`` bool, one row per group, True for its members.
        count: number of True entries (already known, so ``nonzero_static`` needs no host sync).

    Returns:
        ``group``, ``member`` and ``rank`` (position among the group's members), each ``[count]``.
    """
    width = groups.shape[1]
    flat = torch.nonzero_static(groups.reshape(-1), size=count).squeeze(1)
    group, member = flat // width, flat % width
    sizes = groups.sum(dim=1)
    rank = torch.arange(count, device=groups.device) - (sizes.cumsum(0) - sizes).index_select(0, group)
    return group, member, rank


def _pair_ends(rank: Tensor, n_pairs: int) -> tuple[Tensor, Tensor]:
    """Both ends of every unordered pair of members within a group, from a group-sorted member list.

    The member at position p with rank r in its group pairs with the r members before it
    (positions p − r … p − 1), so the pairs are listed without any padded grid.

    Args:
        rank: ``[P]`` rank of each member in its group; members of a group are contiguous.
        n_pairs: ``Σ rank`` (= Σ_g m_g (m_g − 1) / 2), known, so no host sync.

    Returns:
        ``(a, b)``, each ``[n_pairs]``: positions in the member list, pairs in group order.
    """
    a = torch.repeat_interleave(rank, output_size=n_pairs)
    first = (rank.cumsum(0) - rank).index_select(0, a)  # first pair slot of member a
    rank_a = rank.index_select(0, a)
    b = a - rank_a + (torch.arange(n_pairs, device=rank.device) - first)
    return a, b


def _structure_from_pairs(src_s: Tensor, src_t: Tensor, row_a: Tensor, row_b: Tensor, group: Tensor,
                          sizes: Tensor) -> Tensor:
    """The structure function H of G sets whose members are rows of ``[R, d]`` arrays.

    Every unordered pair {a, b} of distinct members of a set is listed once; its distance is taken
    from the exact difference ``src[a] − src[b]`` (an exact 0 for equal embeddings, where the Gram
    form would leave rounding residue), and per-set means and sums are accumulated with
    ``index_add``. Both ends of all pairs are gathered with one ``index_select``, whose backward is
    a single ``index_add`` into the ``[R, d_s]`` gradient. Work and memory are ``pairs · d``.

    Args:
        src_s: ``[R, d_s]`` student rows.
        src_t: ``[R, d_t]`` teacher rows (same row order); used without gradient.
        row_a, row_b: ``[n_pairs]`` rows of the two ends of each pair.
        group: ``[n_pairs]`` set of each pair.
        sizes: ``[G]`` members per set (int).

    Returns:
        ``[G]`` values of H; 0 for sets with m < 2 or all-zero distances on either side.
    """
    dtype = compute_dtype(src_s, src_t)
    n_pairs, n_sets = row_a.numel(), sizes.numel()
    ends = torch.cat([row_a, row_b])
    m = sizes.to(dtype)
    inv_pairs = 2 / (m * (m - 1)).clamp_min(1)  # 1 / (number of unordered pairs)

    def distances(src: Tensor) -> tuple[Tensor, Tensor]:
        rows = src.index_select(0, ends).to(dtype)  # [2 · n_pairs, d]
        # vector_norm's backward is 0 (not NaN) where the distance is exactly 0.
        dist = torch.linalg.vector_norm(rows[:n_pairs] - rows[n_pairs:], dim=1)
        mean = torch.zeros(n_sets, dtype=dtype, device=dist.device).index_add(0, group, dist) * inv_pairs
        return dist, mean

    with torch.no_grad():
        dist_t, mean_t = distances(src_t.detach())
        ok_t = mean_t > 0
        target = dist_t * torch.where(ok_t, mean_t, torch.ones_like(mean_t)).reciprocal().index_select(0, group)
    dist_s, mean_s = distances(src_s)
    live = (mean_s > 0) & ok_t  # sets with pairs only; m < 2 leaves the mean at 0
    scale = torch.where(live, mean_s, torch.ones_like(mean_s)).reciprocal()
    huber = F.smooth_l1_loss(dist_s * scale.index_select(0, group), target, reduction="none", beta=1.0)
    # Each unordered pair stands for the two ordered pairs of H's double sum (the diagonal adds 0).
    weight = torch.where(live, 2 / m.clamp_min(1), torch.zeros_like(m))
    return torch.zeros(n_sets, dtype=dtype, device=huber.device).index_add(0, group, huber) * weight


def padded_structure_losses(student: Tensor, teacher: Tensor, valid: Tensor) -> Tensor:
    """The structure function H (method.md §3.2) of G padded sets at once.

    ``H(A, B) = (1/m) Σ_{a,b} smoothL1_β=1(Â_ab − B̂_ab)`` with ``Â = D(A) / mean_{a≠b} D(A)_ab``.
    A set with fewer than 2 members, or whose student or teacher distances are all 0 (its
    normalisation is undefined; the reference would divide by zero), contributes 0.

    Args:
        student: ``[G, n, d_s]`` padded student sets.
        teacher: ``[G, n, d_t]`` padded teacher sets, same member order; detached here.
        valid: ``[G, n]`` bool member mask (members are taken in slot order; padding may sit anywhere).

    Returns:
        ``[G]`` per-set values in the compute dtype of the inputs (float32 or float64).
    """
    g_sets, n = valid.shape
    valid = valid.bool()
    m = valid.sum(dim=1)
    n_members, n_pairs = (int(v) for v in torch.stack([m.sum(), (m * (m - 1) // 2).sum()]).tolist())  # host sync
    group, member, rank = _members(valid, n_members)
    a, b = _pair_ends(rank, n_pairs)
    rows = group * n + member
    return _structure_from_pairs(student.reshape(g_sets * n, -1), teacher.reshape(g_sets * n, -1),
                                 rows.index_select(0, a), rows.index_select(0, b), group.index_select(0, a), m)


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


def _label_embedding_terms(student_emb: Tensor, teacher_emb: Tensor, mask: Tensor,
                           terms: tuple[str, ...] = ("cd", "id")) -> dict[str, Tensor]:
    """``{"cd": L_CD, "id": L_ID}`` (those named in ``terms``): sums over labels / images with ≥ 2
    positives of H(student positives, teacher positives).

    CD's sets (one per label, members = its positive images) and ID's sets (one per image, members
    = its positive labels) go into one pair list over the rows of the flat ``[N·q, d]`` tensors, so
    one gather serves both terms and the backward pass writes into the full ``[N, q, d]`` gradient
    once, as the floor does; everything else costs in proportion to the pairs of positives that
    share a label (CD) or an image (ID).

    Args:
        student_emb: ``[N, q, d_s]``.
        teacher_emb: ``[N, q, d_t]``; detached.
        mask: ``[N, q]`` bool labels.
        terms: which of ``"cd"`` and ``"id"`` to compute.
    """
    n_img, q = mask.shape
    cd_sizes, id_sizes = mask.sum(dim=0), mask.sum(dim=1)
    # The one host sync of a call: the number of positives and of pairs in each term.
    stats = torch.stack([id_sizes.sum(), (cd_sizes * (cd_sizes - 1) // 2).sum(), (id_sizes * (id_sizes - 1) // 2).sum()])
    n_pos, p_cd, p_id = (int(v) for v in stats.tolist())
    p_cd, p_id = (p_cd if "cd" in terms else 0), (p_id if "id" in terms else 0)
    out = {name: _empty_loss(student_emb) for name in terms}
    if p_cd + p_id == 0:
        return out
    rows, ranks, groups, sizes = [], [], [], []
    if p_cd:  # sets = labels (group c), members = images (i): row i·q + c
        label, image, rank = _members(mask.t(), n_pos)
        rows.append(image * q + label)
        ranks.append(rank)
        groups.append(label)
        sizes.append(cd_sizes)
    if p_id:  # sets = images, members = labels; row-major, so the flat position is the row itself
        image, label, rank = _members(mask, n_pos)
        rows.append(image * q + label)
        ranks.append(rank)
        groups.append(image + (q if p_cd else 0))
        sizes.append(id_sizes)
    row, rank, group = torch.cat(rows), torch.cat(ranks), torch.cat(groups)
    a, b = _pair_ends(rank, p_cd + p_id)
    per_set = _structure_from_pairs(student_emb.reshape(n_img * q, -1), teacher_emb.reshape(n_img * q, -1),
                                    row.index_select(0, a), row.index_select(0, b), group.index_select(0, a),
                                    torch.cat(sizes))
    if p_cd:
        out["cd"] = per_set[:q].sum()
    if p_id:
        out["id"] = per_set[q:].sum() if p_cd else per_set.sum()
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

"""Label-wise embedding distillation (method.md §3.2–3.4): the structure function, CD, ID and LED.

All groups (labels for CD, images for ID) are computed at once, without a Python loop:

1. count the positives of every group; one host sync reads the sizes needed below (the number of
   positives and of pairs; the only sync of a call);
2. list the positives of every group, group after group (``nonzero_static``, which needs no sync
   once the count is known), with each one's rank inside its group;
3. list every unordered pair of members of every group straight from those ranks: a member of
   rank r pairs with the r members before it (``repeat_interleave`` with a known output size), so
   no padded ``[G, n, n]`` grid is built;
4. form the exact difference of every pair straight from the full ``[N·q, d]`` tensor with one
   ``embedding_bag`` (sum, weights ±1: no gathered copies), take norms, and reduce per group with
   ``index_add`` (masked means, smooth-L1 sums). The backward pass is written by hand
   (``_StructureFunction``): a few ``[pairs]``-sized operations and one more ``embedding_bag`` that
   writes the full ``[N, q, d]`` gradient in one go (the floor's own cost). The teacher side never
   enters autograd.

CD and ID share one pair list (CD's groups first, then ID's), so the whole of LED is one pass.
Cost therefore follows the positives and their pairs, not q² or N²: a 1,000-label batch with a few
positives per image costs about as much as an 80-label one. Memory is (pairs × d); a label present
in m images of the batch adds m(m − 1)/2 pairs.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from mlkd.losses._checks import (
    check_finite,
    check_leading,
    check_targets,
    check_tensor,
    compute_dtype,
    full_precision,
)


def _pair_rows(rank: Tensor, row: Tensor, group: Tensor, n_pairs: int) -> tuple[Tensor, Tensor]:
    """Every unordered pair of members within a set, from a set-sorted member list.

    The member at position p with rank r in its set pairs with the r members before it
    (positions p − r … p − 1). Its pairs fill slots ``S_p … S_p + r − 1`` with
    ``S_p = Σ_{p' < p} r_p'``, so slot s holds the pair (p, s + p − r − S_p). No padded grid.

    Args:
        rank: ``[P]`` rank of each member in its set; members of a set are contiguous.
        row: ``[P]`` embedding row of each member.
        group: ``[P]`` set of each member.
        n_pairs: ``Σ rank`` (= Σ_g m_g (m_g − 1) / 2), known, so no host sync.

    Returns:
        ``ends`` ``[2 · n_pairs]`` (rows of both ends of pair k at 2k and 2k + 1) and the set of
        each pair ``[n_pairs]``, pairs in set order.
    """
    a = torch.repeat_interleave(rank, output_size=n_pairs)
    shift = torch.arange(rank.numel(), device=rank.device) - rank.cumsum(0)  # p − r − S_p
    b = torch.arange(n_pairs, device=rank.device) + shift.index_select(0, a)
    return row.index_select(0, torch.stack([a, b], dim=1).view(-1)), group.index_select(0, a)


@functools.lru_cache(maxsize=8)
def _unit_signs(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[1, −1]``, made once per dtype and device (no host-to-device copy per call)."""
    return torch.tensor([1.0, -1.0], dtype=dtype, device=device)


def _difference_bags(ends: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``embedding_bag`` (sum) arguments whose bag k is ``table[ends[2k]] − table[ends[2k + 1]]``."""
    n_pairs = ends.numel() // 2
    offsets = torch.arange(0, 2 * n_pairs, 2, device=ends.device)
    return ends, offsets, _unit_signs(dtype, ends.device).repeat(n_pairs)


def _pair_distances(table: Tensor, bags: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Exact differences (0 for equal rows) and their norms, ``[pairs, d]`` and ``[pairs]``."""
    index, offsets, signs = bags
    diff = F.embedding_bag(index, table, offsets, mode="sum", per_sample_weights=signs)
    return diff, torch.linalg.vector_norm(diff, dim=1)


class _StructureFunction(torch.autograd.Function):
    """Per-set values of H for sets given as pair lists over the rows of two tables.

    Forward (no autograd inside): pair distances of both sides, per-set means, normalised
    distances, smooth-L1, per-set sums. Backward by hand, for the student table only: with
    ``ŝ = d / μ`` and ``μ_g = Σ_{p∈g} d_p / n_g`` (n_g unordered pairs),
    ``∂L/∂d_p = (ĝ_p − Σ_{p'∈g} ĝ_p' ŝ_p' / n_g) / μ_g`` where ``ĝ_p = w_g · clamp(ŝ_p − t_p, −1, 1)``
    is the gradient at the normalised distance; then ``∂L/∂x_r = Σ_{p ∋ r} ±(∂L/∂d_p / d_p) diff_p``
    is one ``embedding_bag`` over the differences with one bag per table row, which writes the full
    gradient at once. A zero distance gets gradient 0 (the subgradient ``vector_norm`` also picks),
    never NaN. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, table_s: Tensor, table_t: Tensor, bags_s: tuple[Tensor, Tensor, Tensor],
                bags_t: tuple[Tensor, Tensor, Tensor], group: Tensor, counts: Tensor) -> Tensor:
        n_sets = counts.shape[1]
        dtype = table_s.dtype
        # [2/m, 1/(unordered pairs)] per set (clamped where m < 2: those sets are masked below).
        per_set = counts.clamp_min(1).to(dtype).reciprocal_().mul_(2)
        _, dist_t = _pair_distances(table_t, bags_t)
        diff, dist = _pair_distances(table_s, bags_s)
        dists = torch.stack([dist, dist_t])  # [student, teacher] × pairs
        mean = torch.zeros(2, n_sets, dtype=dtype, device=dist.device).index_add_(1, group, dists).mul_(per_set[1])
        live = (mean > 0).all(dim=0)  # m < 2 leaves a mean at 0; so does a degenerate set
        hat = dists * torch.where(live, mean, 1.0).reciprocal_().index_select(1, group)  # normalised
        huber = F.smooth_l1_loss(hat[0], hat[1], reduction="none", beta=1.0)
        # Each unordered pair stands for the two ordered pairs of H's double sum (the diagonal adds 0).
        weight = torch.where(live, per_set[0], 0.0)
        ctx.save_for_backward(diff, dist, hat, mean[0], group, weight, per_set[1], bags_s[0], bags_s[2])
        ctx.n_rows = table_s.shape[0]
        return torch.zeros(n_sets, dtype=dtype, device=dist.device).index_add_(0, group, huber).mul_(weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sets: Tensor):
        diff, dist, hat, mean, group, weight, inv_pairs, index, signs = ctx.saved_tensors
        s_hat = hat[0]
        g_hat = (grad_sets * weight).index_select(0, group) * (s_hat - hat[1]).clamp_(-1, 1)
        centre = torch.zeros_like(weight).index_add_(0, group, g_hat * s_hat).mul_(inv_pairs)
        # Dead sets have g_hat = 0; their mean (possibly 0) is replaced by 1 so nothing divides by 0.
        coef = (g_hat - centre.index_select(0, group)).div_(torch.where(mean > 0, mean, 1.0).index_select(0, group))
        coef.div_(dist).masked_fill_(dist == 0, 0)
        # One bag per table row: the pair ends sorted by row; end e is 2k (+) or 2k + 1 (−) of pair k.
        # (searchsorted, unlike bincount, needs no host sync on GPU.)
        rows, order = torch.sort(index, stable=True)
        starts = torch.searchsorted(rows, torch.arange(ctx.n_rows, device=rows.device))
        pair = order // 2
        signed = coef.index_select(0, pair).mul_(signs.index_select(0, order))
        grad = F.embedding_bag(pair, diff, starts, mode="sum", per_sample_weights=signed)
        return grad, None, None, None, None, None


def _structure_from_pairs(src_s: Tensor, src_t: Tensor, rows: Tensor, ends: Tensor, group: Tensor,
                          counts: Tensor) -> Tensor:
    """The structure function H of G sets whose members are rows of ``[R, d]`` arrays.

    Every unordered pair {a, b} of distinct members of a set is listed once; its distance is taken
    from the exact difference of the two rows (an exact 0 for equal embeddings, where the Gram form
    would leave rounding residue). Work and memory are ``pairs · d``.

    Args:
        src_s: ``[R, d_s]`` student rows.
        src_t: ``[R, d_t]`` teacher rows (same row order); used without gradient.
        rows: ``[P]`` the distinct rows that are members of some set.
        ends: ``[2 · n_pairs]`` rows of the two ends of pair k at 2k and 2k + 1.
        group: ``[n_pairs]`` set of each pair.
        counts: ``[2, G]`` int: members m and m(m − 1) per set.

    Returns:
        ``[G]`` values of H; 0 for sets with m < 2 or all-zero distances on either side.
    """
    dtype = compute_dtype(src_s, src_t)
    direct = _difference_bags(ends, dtype)

    def table(src: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        if src.dtype == dtype:  # differences straight from the full tensor
            return src, direct
        # Half precision, or float32 beside float64: convert only the member rows.
        where = torch.zeros(src.shape[0], dtype=torch.long, device=rows.device)
        where[rows] = torch.arange(rows.numel(), device=rows.device)
        return src.index_select(0, rows).to(dtype), _difference_bags(where.index_select(0, ends), dtype)

    table_s, bags_s = table(src_s)
    table_t, bags_t = table(src_t.detach())
    return _StructureFunction.apply(table_s, table_t, bags_s, bags_t, group, counts)


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
    counts = torch.stack([m, m * (m - 1)])
    n_members, twice_pairs = (int(v) for v in counts.sum(dim=1).tolist())  # the one host sync
    rows = torch.nonzero_static(valid.view(-1), size=n_members).view(-1)
    group = rows // n
    rank = torch.arange(n_members, device=rows.device) - (m.cumsum(0) - m).index_select(0, group)
    ends, pair_group = _pair_rows(rank, rows, group, twice_pairs // 2)
    return _structure_from_pairs(student.reshape(g_sets * n, -1), teacher.reshape(g_sets * n, -1),
                                 rows, ends, pair_group, counts)


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


@functools.lru_cache(maxsize=16)
def _slot_table(n_img: int, q: int, do_cd: bool, do_id: bool, device: torch.device) -> Tensor:
    """``[2, slots]``: the embedding row and the set of every slot of the CD and/or ID masks.

    CD slots are ``c · N + i`` of ``mask.t()`` (set c, row i·q + c); ID slots follow, ``i · q + c``
    of ``mask`` (set q + i when CD comes first, row i·q + c). Depends on the shape only, so it is
    built once per (N, q, device) and reused.
    """
    rows = torch.arange(n_img * q, device=device).view(n_img, q)
    parts = []
    if do_cd:
        parts.append(torch.stack([rows.t().reshape(-1), torch.arange(q, device=device).repeat_interleave(n_img)]))
    if do_id:
        first = q if do_cd else 0
        parts.append(torch.stack([rows.reshape(-1), torch.arange(first, first + n_img, device=device).repeat_interleave(q)]))
    return torch.cat(parts, dim=1)


def _label_embedding_terms(student_emb: Tensor, teacher_emb: Tensor, mask: Tensor,
                           terms: tuple[str, ...] = ("cd", "id")) -> dict[str, Tensor]:
    """``{"cd": L_CD, "id": L_ID}`` (those named in ``terms``): sums over labels / images with ≥ 2
    positives of H(student positives, teacher positives).

    CD's sets (one per label, members = its positive images) and ID's sets (one per image, members
    = its positive labels) share one pair list over the rows of the flat ``[N·q, d]`` tensors, so
    one pass serves both terms and the backward pass writes the full ``[N, q, d]`` gradient once, as
    the floor does; everything else costs in proportion to the pairs of positives that share a
    label (CD) or an image (ID).

    Args:
        student_emb: ``[N, q, d_s]``.
        teacher_emb: ``[N, q, d_t]``; detached.
        mask: ``[N, q]`` bool labels.
        terms: which of ``"cd"`` and ``"id"`` to compute.
    """
    n_img, q = mask.shape
    do_cd, do_id = "cd" in terms, "id" in terms
    # Sets: CD's q labels (members: images, slots c·N + i of mask.t()), then ID's N images (members:
    # labels, slots i·q + c of mask, i.e. the embedding rows themselves).
    sizes = torch.cat([mask.sum(dim=0)] * do_cd + [mask.sum(dim=1)] * do_id)
    counts = torch.stack([sizes, sizes * (sizes - 1)])
    # The one host sync of a call: the number of members and of pairs.
    n_members, twice_pairs = (int(v) for v in counts.sum(dim=1).tolist())
    if twice_pairs == 0:
        return {name: _empty_loss(student_emb) for name in terms}
    slots = torch.cat([mask.t().reshape(-1)] * do_cd + [mask.view(-1)] * do_id)
    member = torch.nonzero_static(slots, size=n_members).view(-1)  # set after set
    row, group = _slot_table(n_img, q, do_cd, do_id, mask.device).index_select(1, member)
    rank = torch.arange(n_members, device=mask.device) - (sizes.cumsum(0) - sizes).index_select(0, group)
    ends, pair_group = _pair_rows(rank, row, group, twice_pairs // 2)
    distinct = row[n_members // 2:] if do_cd and do_id else row  # each positive once
    per_set = _structure_from_pairs(student_emb.reshape(n_img * q, -1), teacher_emb.reshape(n_img * q, -1),
                                    distinct, ends, pair_group, counts)
    out = {}
    if do_cd:
        out["cd"] = per_set[:q].sum()
    if do_id:
        out["id"] = per_set[q * do_cd:].sum()
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

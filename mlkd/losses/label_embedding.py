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
   (``_StructureFunction``): a few ``[pairs]``-sized operations and two ``index_add_`` of the
   scaled differences into one zeroed ``[N, q, d]`` gradient (the floor's own cost; the only
   full-size buffer of a call). The teacher side never enters autograd.

Value checks never pass over the ``[N, q, d]`` inputs: the finished terms are checked (one host
sync), and only when one is not finite are the inputs inspected, to name the culprit. A NaN or inf
in an embedding a term reads makes that term non-finite; entries the terms do not read (negative
labels) cannot change the result. Finite inputs so large that squared distances overflow (about
1e19 in float32) are recomputed with each side scaled by a power of two, which is exact, and H is
scale-free, so the values are those of exact arithmetic.

CD and ID share one pair list (CD's groups first, then ID's), so the whole of LED is one pass.
Cost therefore follows the positives and their pairs, not q² or N²: a 1,000-label batch with a few
positives per image costs about as much as an 80-label one. Memory is (pairs × d); a label present
in m images of the batch adds m(m − 1)/2 pairs.
"""
from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

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

T = TypeVar("T")


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
    shift = _ramp(rank.numel(), rank.device) - rank.cumsum(0)  # p − r − S_p
    b = _ramp(n_pairs, rank.device) + shift.index_select(0, a)
    return row.index_select(0, torch.stack([a, b], dim=1).view(-1)), group.index_select(0, a)


# Constant index vectors (0, 1, 2, ...; 0, 2, 4, ...; +1, −1, +1, ...) are sliced from buffers that
# grow by doubling, instead of being allocated and filled on every call.
_PREFIX_BUFFERS: dict[tuple, Tensor] = {}


def _prefix(key: tuple, n: int, make: Callable[[int], Tensor]) -> Tensor:
    """The first ``n`` entries of the cached buffer ``key`` (a view), built by ``make(size)``."""
    buf = _PREFIX_BUFFERS.get(key)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):  # an ordinary tensor, usable later outside inference mode
            buf = make(max(n, 1024, 0 if buf is None else 2 * buf.numel()))
        _PREFIX_BUFFERS[key] = buf
    return buf[:n]


def _ramp(n: int, device: torch.device) -> Tensor:
    """``arange(n)`` (int64) as a view of a cached buffer."""
    return _prefix(("ramp", device), n, lambda size: torch.arange(size, device=device))


def _difference_bags(ends: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``embedding_bag`` (sum) arguments whose bag k is ``table[ends[2k]] − table[ends[2k + 1]]``."""
    n_pairs = ends.numel() // 2
    dev = ends.device
    offsets = _prefix(("even", dev), n_pairs, lambda size: torch.arange(0, 2 * size, 2, device=dev))
    signs = _prefix(("signs", dtype, dev), 2 * n_pairs,
                    lambda size: torch.tensor([1.0, -1.0], dtype=dtype, device=dev).repeat((size + 1) // 2))
    return ends, offsets, signs


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
    is the gradient at the normalised distance; then ``∂L/∂x_r = Σ_{p ∋ r} ±(∂L/∂d_p / d_p) diff_p``,
    two ``index_add_`` into one zeroed full-size gradient. A zero distance gets gradient 0 (the subgradient ``vector_norm`` also picks),
    never NaN. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, table_s: Tensor, table_t: Tensor, bags_s: tuple[Tensor, Tensor, Tensor],
                bags_t: tuple[Tensor, Tensor, Tensor], group: Tensor, counts: Tensor,
                backward_done: list[bool] | None = None) -> Tensor:
        n_sets = counts.shape[1]
        dtype = table_s.dtype
        # [2/m, 1/(unordered pairs)] per set (clamped where m < 2: those sets are masked below).
        per_set = counts.clamp_min(1).to(dtype).reciprocal_().mul_(2)
        _, dist_t = _pair_distances(table_t, bags_t)
        diff, dist = _pair_distances(table_s, bags_s)
        dists = torch.stack([dist, dist_t])  # [student, teacher] × pairs
        mean = torch.zeros(2, n_sets, dtype=dtype, device=dist.device).index_add_(1, group, dists).mul_(per_set[1])
        # m < 2 leaves a mean at 0; so does a degenerate set. (A NaN mean stays live, so that a NaN
        # input shows in the result instead of silently dropping its set.)
        live = (mean != 0).all(dim=0)
        hat = dists * torch.where(live, mean, 1.0).reciprocal_().index_select(1, group)  # normalised
        huber = F.smooth_l1_loss(hat[0], hat[1], reduction="none", beta=1.0)
        # Each unordered pair stands for the two ordered pairs of H's double sum (the diagonal adds 0).
        weight = torch.where(live, per_set[0], 0.0)
        ctx.save_for_backward(diff, dist, hat, mean[0], group, weight, per_set[1], bags_s[0])
        ctx.n_rows = table_s.shape[0]
        ctx.backward_done = backward_done  # set in backward: the graph may be freed from then on
        return torch.zeros(n_sets, dtype=dtype, device=dist.device).index_add_(0, group, huber).mul_(weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sets: Tensor):
        diff, dist, hat, mean, group, weight, inv_pairs, ends = ctx.saved_tensors
        s_hat = hat[0]
        g_hat = (grad_sets * weight).index_select(0, group) * (s_hat - hat[1]).clamp_(-1, 1)
        centre = torch.zeros_like(weight).index_add_(0, group, g_hat * s_hat).mul_(inv_pairs)
        # Dead sets have g_hat = 0; their mean (possibly 0) is replaced by 1 so nothing divides by 0.
        coef = (g_hat - centre.index_select(0, group)).div_(torch.where(mean > 0, mean, 1.0).index_select(0, group))
        coef.div_(dist).masked_fill_(dist == 0, 0)
        # The full gradient: one zeroed buffer (the floor's own cost) and two index_add_ of the scaled
        # pair differences, + at the first end of each pair and - at the second.
        scaled = diff * coef.unsqueeze(1)
        pairs = ends.view(-1, 2)
        grad = torch.zeros(ctx.n_rows, diff.shape[1], dtype=diff.dtype, device=diff.device)
        grad.index_add_(0, pairs[:, 0], scaled).index_add_(0, pairs[:, 1], scaled, alpha=-1)
        if ctx.backward_done is not None:
            ctx.backward_done[0] = True
        return grad, None, None, None, None, None, None


def _structure_from_pairs(src_s: Tensor, src_t: Tensor, rows: Tensor, ends: Tensor, group: Tensor,
                          counts: Tensor, backward_done: list[bool] | None = None) -> Tensor:
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
    return _StructureFunction.apply(table_s, table_t, bags_s, bags_t, group, counts, backward_done)


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
    """Check shapes (and labels when ``validate``); return the boolean label mask ``[N, q]``.

    The embeddings' values are checked after the loss is computed (`finite_or_rescaled`).
    """
    check_tensor(student_emb, "student_emb", 3, "[N, q, d_s]")
    check_tensor(teacher_emb, "teacher_emb", 3, "[N, q, d_t]")
    n, q = student_emb.shape[:2]
    check_leading(teacher_emb, "teacher_emb", (n, q), "student_emb", "[N, q, d_t]")
    return check_targets(targets, n, q, "student_emb", validate)


# Rescaled inputs have their largest magnitude just under 2^40: squared distances then stay far
# from overflow in float32 for any width up to 2^40 (and from underflow for entries above ~1e-26).
_SAFE_EXPONENT = 40


def scale_free_copy(x: Tensor) -> Tensor:
    """``x`` times a power of two (exact) so that its largest magnitude is below ``2^40``.

    The structure function H is scale-free on each side (distances are divided by their mean), so
    H of the copies equals H of the originals in exact arithmetic; the copies only keep squared
    distances inside the floating-point range. Gradients flow through the scaling.

    Args:
        x: any finite floating tensor.

    Returns:
        ``x`` itself when it is already small enough, else the scaled copy.
    """
    largest = x.detach().abs().amax()
    exponent = int(torch.frexp(largest if largest.dtype == torch.float64 else largest.float()).exponent)
    shift = exponent - _SAFE_EXPONENT
    return x * (2.0 ** -shift) if shift > 0 else x


def finite_or_rescaled(compute: Callable[[Tensor, Tensor], T], student: Tensor, teacher: Tensor,
                       names: tuple[str, str], values: Callable[[T], Tensor]) -> T:
    """Run ``compute(student, teacher)``, check its finished result, and explain or repair it.

    The check reads only the result (one host sync), never the ``[N, q, d]`` inputs. When the result
    is not finite: an input holding NaN/inf is named in a ``ValueError``; otherwise the inputs are
    finite but so large that squared distances overflowed, and the result is computed again from
    `scale_free_copy` of both sides (the same value in exact arithmetic).

    Args:
        compute: ``(student, teacher) -> result``.
        student: ``[..., d_s]`` student embeddings.
        teacher: ``[..., d_t]`` teacher embeddings.
        names: the two arguments' names as the caller knows them, for the error message.
        values: ``result -> Tensor`` whose entries must all be finite (non-negative terms, so a sum).

    Raises:
        ValueError: an input contains NaN or inf, or (never expected) the rescaled result is still
            not finite.
    """
    result = compute(student, teacher)
    if bool(torch.isfinite(values(result)).all()):
        return result
    check_finite(student, names[0])
    check_finite(teacher, names[1])
    result = compute(scale_free_copy(student), scale_free_copy(teacher.detach()))
    if not bool(torch.isfinite(values(result)).all()):
        raise ValueError(f"the structure loss of {names[0]} and {names[1]} is not finite although both are "
                         f"finite, even after exact rescaling; please report this with the inputs")
    return result


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
                           terms: tuple[str, ...] = ("cd", "id"),
                           backward_done: list[bool] | None = None) -> dict[str, Tensor]:
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
    rank = _ramp(n_members, mask.device) - (sizes.cumsum(0) - sizes).index_select(0, group)
    ends, pair_group = _pair_rows(rank, row, group, twice_pairs // 2)
    distinct = row[n_members // 2:] if do_cd and do_id else row  # each positive once
    per_set = _structure_from_pairs(student_emb.reshape(n_img * q, -1), teacher_emb.reshape(n_img * q, -1),
                                    distinct, ends, pair_group, counts, backward_done)
    out = {}
    if do_cd:
        out["cd"] = per_set[:q].sum()
    if do_id:
        out["id"] = per_set[q * do_cd:].sum()
    return out


def _same(x: Tensor) -> Tensor:
    return x


def _term_sum(terms: dict[str, Tensor]) -> Tensor:
    values = list(terms.values())
    return values[0] if len(values) == 1 else values[0] + values[1]  # terms are ≥ 0: finite iff the sum is


def label_embedding_terms(student_emb: Tensor, teacher_emb: Tensor, mask: Tensor,
                          terms: tuple[str, ...] = ("cd", "id"), *, validate: bool = True,
                          names: tuple[str, str] = ("student_emb", "teacher_emb")) -> dict[str, Tensor]:
    """Unweighted ``{"cd": L_CD, "id": L_ID}`` (those in ``terms``), value-checked on the result.

    Args:
        student_emb: ``[N, q, d_s]``.
        teacher_emb: ``[N, q, d_t]``; detached.
        mask: ``[N, q]`` bool labels (already checked).
        terms: which of ``"cd"`` and ``"id"`` to compute.
        validate: check the finished terms (one host sync) and, when one is not finite, name the
            input with NaN/inf or recompute overflowing finite inputs exactly (`finite_or_rescaled`).
            Without it, non-finite inputs give non-finite terms.
        names: the embeddings' names for error messages.

    Raises:
        ValueError: ``validate`` and an embedding the terms read holds NaN or inf.
    """
    def compute(s: Tensor, t: Tensor) -> dict[str, Tensor]:
        return _label_embedding_terms(s, t, mask, terms)

    if not validate:
        return compute(student_emb, teacher_emb)
    return finite_or_rescaled(compute, student_emb, teacher_emb, names, _term_sum)


# `cd_loss` and `id_loss` of the same tensors share one pass: the first call computes both terms with
# one autograd node and keeps the other term here (per thread) for the matching call, so that the
# user's ``cd_loss(...) + id_loss(...)`` back-propagates one full-size gradient, not two plus their sum.
_shared = threading.local()


def _shared_key(*tensors: Tensor) -> tuple | None:
    """What identifies a call's inputs: the tensors themselves, their versions and the grad mode."""
    if any(t.is_inference() for t in tensors):  # no version counter to tell in-place changes
        return None
    return tuple((weakref.ref(t), t._version) for t in tensors) + (torch.is_grad_enabled(),)


def _same_call(key: tuple, other: tuple) -> bool:
    return (key[-1] == other[-1]
            and all(a() is not None and a() is b() and va == vb for (a, va), (b, vb) in zip(key[:-1], other[:-1])))


def _shared_term(name: str, student_emb: Tensor, teacher_emb: Tensor, targets: Tensor, validate: bool) -> Tensor:
    """L_CD or L_ID (``name``), from the pass of a previous matching call when there is one."""
    mask = _check_embeddings(student_emb, teacher_emb, targets, validate)
    other = "id" if name == "cd" else "cd"
    key = _shared_key(student_emb, teacher_emb, targets)
    pending, _shared.pending = getattr(_shared, "pending", None), None
    kept = None
    if key is not None and pending is not None and pending[0] == name and _same_call(pending[1], key) \
            and not pending[3][0]:  # its backward has not run (which may have freed the graph)
        kept = pending[2]

    def compute(s: Tensor, t: Tensor) -> dict[str, Tensor]:
        nonlocal kept
        if kept is not None:
            value, kept = kept, None
            return {name: value}
        done = [False]
        both = _label_embedding_terms(s, t, mask, ("cd", "id"), done)
        if key is not None:
            _shared.pending = (other, key, both[other], done)
        return both

    with full_precision(student_emb.device):
        if not validate:
            return compute(student_emb, teacher_emb)[name]
        return finite_or_rescaled(compute, student_emb, teacher_emb, ("student_emb", "teacher_emb"),
                                  lambda result: result[name])[name]


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
    valid = torch.ones(1, student_set.shape[0], dtype=torch.bool, device=student_set.device)

    def compute(s: Tensor, t: Tensor) -> Tensor:
        return padded_structure_losses(s.unsqueeze(0), t.unsqueeze(0), valid)[0]

    with full_precision(student_set.device):
        if not validate:
            return compute(student_set, teacher_set)
        return finite_or_rescaled(compute, student_set, teacher_set, ("student_set", "teacher_set"), _same)


def cd_loss(student_emb: Tensor, teacher_emb: Tensor, targets: Tensor, *, validate: bool = True) -> Tensor:
    """Class-aware label-wise embedding distillation (method.md §3.3).

    ``L_CD = Σ_{c : n_c ≥ 2} H({e^s_ic : y_ic = 1}, {e^t_ic : y_ic = 1})``: for every label, the
    structure among the images where it is a ground-truth positive. Reduction: **sum over labels**.

    `cd_loss` and `id_loss` called on the same tensors share one pass: the first computes both terms
    (one autograd node) and the second returns the other term, so their sum back-propagates one
    ``[N, q, d]`` gradient. An in-place change of an input in between, or a backward pass through the
    first, makes the second compute afresh.

    Args:
        student_emb: ``[N, q, d_s]`` label-wise embeddings.
        teacher_emb: ``[N, q, d_t]``; detached.
        targets: ``[N, q]`` multi-hot labels in {0, 1}.
        validate: check labels and NaN/inf (syncs on GPU).

    Returns:
        Scalar tensor, 0 when no label has two positives.
    """
    return _shared_term("cd", student_emb, teacher_emb, targets, validate)


def id_loss(student_emb: Tensor, teacher_emb: Tensor, targets: Tensor, *, validate: bool = True) -> Tensor:
    """Instance-aware label-wise embedding distillation (method.md §3.4).

    ``L_ID = Σ_{i : k_i ≥ 2} H({e^s_ic : y_ic = 1}, {e^t_ic : y_ic = 1})``: for every image, the
    structure among its positive labels' embeddings. Reduction: **sum over images**.

    `cd_loss` and `id_loss` called on the same tensors share one pass: the first computes both terms
    (one autograd node) and the second returns the other term, so their sum back-propagates one
    ``[N, q, d]`` gradient. An in-place change of an input in between, or a backward pass through the
    first, makes the second compute afresh.

    Args:
        student_emb: ``[N, q, d_s]`` label-wise embeddings.
        teacher_emb: ``[N, q, d_t]``; detached.
        targets: ``[N, q]`` multi-hot labels in {0, 1}.
        validate: check labels and NaN/inf (syncs on GPU).

    Returns:
        Scalar tensor, 0 when no image has two positives.
    """
    return _shared_term("id", student_emb, teacher_emb, targets, validate)


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
        terms = label_embedding_terms(student_emb, teacher_emb, mask, validate=validate)
        return lambda_cd * terms["cd"] + lambda_id * terms["id"]

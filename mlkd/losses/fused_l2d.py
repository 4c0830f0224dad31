"""The L2D objective as one autograd node (issue 11): fewer small operations per step.

``L = bce_weight·BCE_sum + λ_MLD·MLD + λ_LED·λ_CD·CD + λ_LED·λ_ID·ID`` (method.md §3.5), the value of
`mlkd.losses.L2DLoss` in the paper's form, and the balanced form's value (`balanced_embedding`: the
same pairs, other weights and mean normalisers; see `host_pair_plan`), computed in one
`torch.autograd.Function` whose forward pass also prepares the whole backward pass, so that a
training step runs a few dozen tensor operations
instead of about eighty (at MS-COCO-like sizes the terms cost about as much in per-operation overhead
as in data):

- **index structures on the host.** The label mask is read once as a NumPy array (free on the CPU,
  where alone it runs: `L2DLoss` keeps CUDA tensors on the general path) and every index
  the terms need is built there: the positives of each CD set (label) and ID set (image), every
  unordered pair of members of each set (CD's pairs first, then ID's), the set of each pair, the
  number of pairs of each set and each pair's weight ``λ·2/m`` (H's ``1/m`` over the two ordered
  pairs that each unordered pair stands for, times the term's weight). They reach the device in one
  integer and one floating array.
- **CD and ID** as in `label_embedding`: the exact difference of every pair straight from the full
  ``[N·q, d]`` tensors (one ``embedding_bag`` per side), norms, per-set means, normalised distances,
  smooth-L1, and each term as one dot product with the pair weights. A set whose student or teacher
  distances are all 0 gets normaliser 0 on both sides, so it adds 0 and gets gradient 0 (method.md:
  the reference would divide by zero); a NaN stays NaN.
- **BCE and MLD** from one ``log1p(exp(−|z|))`` of the stacked student and teacher logits:
  ``log σ(z) = min(z, 0) − log1p(e^{−|z|})`` and ``log σ(−z) = −max(z, 0) − log1p(e^{−|z|})``, exact
  for saturated logits, like ``logsigmoid``.
- **the backward pass** is prepared in the forward pass (only when an input needs a gradient): the
  logits' gradient for a unit output gradient, and the scaled pair differences ``c_p·diff_p``
  (``c_p = ∂L/∂d_p / d_p``, see `label_embedding._StructureFunction`). The backward pass itself is
  the logits' gradient and one ``embedding_bag`` that writes the whole ``[N, q, d]`` gradient at once:
  one bag per embedding row, holding the pairs with an end there (``+`` for a first end, ``−`` for a
  second, times the output gradient); rows without a pair get 0. That replaces a zeroed buffer plus
  ``index_add_`` of the rows, which is slow on the CPU when many pairs share a row (large CD sets).

The node returns the total and the four weighted terms; the backward pass accepts gradients on any of
them (data-parallel training back-propagates the terms with different scales).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from mlkd.losses.label_embedding import _difference_bags

_NUMPY_FLOAT = {torch.float32: np.float32, torch.float64: np.float64}


def host_pair_plan(mask: np.ndarray, weight_cd: float, weight_id: float,
                   dtype: np.dtype, balanced: bool = False) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Every index CD and ID need, from the ``[N, q]`` bool label mask on the host.

    Sets: CD's q labels (members: the images where the label is positive, in image order), then ID's
    N images (members: their positive labels, in label order). Members are embedding rows
    ``i·q + c`` of the flat ``[N·q, d]`` tensors.

    Both forms weight each unordered pair of a set of m members by ``2/m`` times the term's weight and
    divide a set's distances by their mean over ``K`` pairs. The paper's H averages over the
    ``K = m(m−1)/2`` unordered pairs; the balanced Ĥ (`balanced_embedding`) is a V-statistic over all
    m² ordered pairs, whose zero diagonal adds nothing to the sums, so ``K = m²/2``; its per-positive
    average (weight ``m/n₊`` on ``Ĥ = (2/m²)·Σ_pairs``, n₊ the batch's positives) is the same ``2/m``
    per pair with the term's weight divided by n₊, which the caller folds into ``weight_cd``/``weight_id``.

    Args:
        mask: ``[N, q]`` bool.
        weight_cd: weight of L_CD in the objective (``λ_LED·λ_CD``; balanced: ``λ_LED·λ_CD·N·q/n₊``).
        weight_id: weight of L_ID (``λ_LED·λ_ID``; balanced: ``λ_LED·λ_ID·N·q/n₊``).
        dtype: the floating dtype of the weights.
        balanced: normalise by the balanced form's ``K = m²/2`` instead of the paper's ``m(m−1)/2``.

    Returns:
        ``ints`` = ``[ends (2·P), pair of each end in row order (2·P), offsets of each row's ends
        (N·q), set of each pair (P)]`` (``ends``: the rows of both ends of pair k at 2k and 2k + 1),
        ``floats`` = ``[pair weight (P), K per set (G), 1 / K per set (G, 0 without pairs),
        sign of each end in row order (2·P)]`` with ``G = q + N``, the number of pairs P and of CD
        pairs.
    """
    n, q = mask.shape
    label_sizes, image_sizes = mask.sum(axis=0), mask.sum(axis=1)
    sizes = np.concatenate([label_sizes, image_sizes])
    cd = np.flatnonzero(mask.T)  # c·N + i, label after label
    label = cd // n
    id_rows = np.flatnonzero(mask)  # i·q + c, image after image
    rows = np.concatenate([(cd - label * n) * q + label, id_rows])
    group = np.concatenate([label, q + id_rows // q])
    members = np.arange(rows.size)
    rank = members - (np.cumsum(sizes) - sizes)[group]  # rank of each member in its set
    n_pairs = int(rank.sum())
    # Member p of rank r pairs with the r members before it; its pairs fill slots S_p … S_p + r − 1.
    first = np.repeat(members, rank)
    second = np.arange(n_pairs) + (members - rank - (np.cumsum(rank) - rank))[first]
    ends = np.empty(2 * n_pairs, dtype=np.int64)
    ends[0::2] = rows[first]
    ends[1::2] = rows[second]
    # The gradient as one embedding_bag over the scaled pair differences: bag r (every row of
    # [N·q, d], most of them empty) holds the pairs with an end at row r, + for a first end, − for
    # a second one.
    by_row = np.argsort(ends.astype(np.uint16) if n * q <= 1 << 16 else ends, kind="stable")  # radix sort for 16 bits
    row_offsets = np.searchsorted(ends[by_row], np.arange(n * q))
    pair_set = group[first]
    n_cd = int((label_sizes * (label_sizes - 1)).sum()) // 2
    mean_count = (sizes * (sizes - 1) // 2).astype(np.float64)
    if balanced:  # the mean distance over m² ordered pairs; sets without pairs keep K = 0 (unused)
        mean_count = np.where(sizes >= 2, sizes.astype(np.float64) ** 2 / 2.0, 0.0)
    per_set_weight = 2.0 / np.maximum(sizes, 1)
    per_set_weight[:q] *= weight_cd
    per_set_weight[q:] *= weight_id
    floats = np.concatenate([per_set_weight[pair_set], mean_count,
                             np.divide(1.0, mean_count, out=np.zeros_like(mean_count),
                                       where=mean_count > 0),
                             1.0 - 2.0 * (by_row & 1)]).astype(dtype)
    return np.concatenate([ends, by_row >> 1, row_offsets, pair_set]), floats, n_pairs, n_cd


class FusedL2DFunction(torch.autograd.Function):
    """``(total, bce, mld, cd, id)`` of the L2D objective, weighted; see the module docstring.

    Inputs: student logits ``zs`` and embeddings ``es`` (differentiable), teacher logits and
    embeddings (constants), ``y`` the float labels, the device copies of `host_pair_plan`'s arrays,
    its pair counts, and ``(bce_weight, λ_MLD, τ)``. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, zs: Tensor, es: Tensor, zt: Tensor, et: Tensor, y: Tensor, ints: Tensor, floats: Tensor,
                n_pairs: int, n_cd: int, weights: tuple[float, float, float]):
        ctx.set_materialize_grads(False)
        need_z, need_e = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        bce_weight, lambda_mld, tau = weights
        n, q = zs.shape
        dtype, dev = zs.dtype, zs.device

        # BCE and MLD: log σ(±z) of student and teacher from one log1p(e^{-|z|}).
        zs_t, zt_t = (zs, zt) if tau == 1.0 else (zs / tau, zt / tau)
        z = torch.stack([zs_t, zt_t])
        soft = z.abs().neg_().exp().log1p_()  # log(1 + e^{-|z|})
        log_p = z.clamp_max(0).sub_(soft)  # log σ(z)
        softplus = z.clamp_min(0).add_(soft)  # −log σ(−z) = log(1 + e^z)
        sig = torch.sigmoid(z)
        p_t, q_t = sig[1], torch.sigmoid(zt_t.neg())
        kl = (log_p[1] - log_p[0]).mul_(p_t).add_((softplus[0] - softplus[1]).mul_(q_t))
        mld = kl.sum() * (lambda_mld * tau * tau / n)
        if tau == 1.0:
            bce = torch.addcmul(softplus[0], y, zs, value=-1.0).sum()  # log(1 + e^z) − y·z ≥ 0
        else:
            bce = F.binary_cross_entropy_with_logits(zs, y, reduction="sum")
        if bce_weight != 1.0:
            bce = bce * bce_weight

        # CD and ID over the pair list.
        g_sets = n + q
        n_rows = n * q
        if n_pairs > 0:
            ends, pair_set = ints[:2 * n_pairs], ints[4 * n_pairs + n_rows:]
            pair_weight, mean_count = floats[:n_pairs], floats[n_pairs:n_pairs + g_sets]
            bags = _difference_bags(ends, dtype)
            diff = F.embedding_bag(ends, es.reshape(n_rows, -1), bags[1], mode="sum", per_sample_weights=bags[2])
            diff_t = F.embedding_bag(ends, et.reshape(n_rows, -1), bags[1], mode="sum", per_sample_weights=bags[2])
            dist = torch.stack([torch.linalg.vector_norm(diff, dim=1), torch.linalg.vector_norm(diff_t, dim=1)], dim=1)
            sums = torch.zeros(g_sets, 2, dtype=dtype, device=dev).index_add_(0, pair_set, dist)
            # 1 / mean distance of each set and side; 0 on both sides of a set where either side's
            # distances are all 0 (no structure to match: it adds 0 and gets gradient 0). NaN stays.
            inv_mean = torch.where((sums != 0).all(dim=1, keepdim=True), mean_count.unsqueeze(1) / sums, 0.0)
            inv_pair = inv_mean.index_select(0, pair_set)
            hat = dist * inv_pair  # [pairs, (student, teacher)]
            huber = F.smooth_l1_loss(hat[:, 0], hat[:, 1], reduction="none", beta=1.0)
            cd = torch.dot(huber[:n_cd], pair_weight[:n_cd])
            id_ = torch.dot(huber[n_cd:], pair_weight[n_cd:])
        else:
            cd = id_ = torch.zeros((), dtype=dtype, device=dev)
        total = bce + mld + cd + id_

        ctx.shape, ctx.n_cd, ctx.n_pairs, ctx.dtype, ctx.device = es.shape, n_cd, n_pairs, dtype, dev
        grad_bce = grad_mld = scaled = None
        if need_z:
            s_s = sig[0] if tau == 1.0 else torch.sigmoid(zs)
            # Per unit output gradient: ∂BCE/∂z = σ(z) − y; ∂MLD/∂z = τ/N · (σ(z/τ) − σ(z^t/τ)).
            grad_bce = (s_s - y).mul_(bce_weight) if bce_weight != 1.0 else s_s - y
            grad_mld = (sig[0] - p_t).mul_(lambda_mld * tau / n)
        if need_e and n_pairs > 0:
            # ∂L/∂ŝ_p = w_p·clamp(ŝ_p − t̂_p, −1, 1); ∂L/∂d_p = (that − Σ_set that·ŝ / K) / μ, with μ the
            # set's mean distance over K pairs (ŝ_p = d_p/μ, ∂μ/∂d_p = 1/K).
            s_hat = hat[:, 0]
            g_hat = (s_hat - hat[:, 1]).clamp_(-1.0, 1.0).mul_(pair_weight)
            inv_count = floats[n_pairs + g_sets:n_pairs + 2 * g_sets]
            centre = torch.zeros(g_sets, dtype=dtype, device=dev).index_add_(0, pair_set, g_hat * s_hat)
            centre.mul_(inv_count)
            scale = inv_pair[:, 0] / dist[:, 0]
            scale.masked_fill_(dist[:, 0] == 0, 0.0)  # a zero distance gets gradient 0 (its difference is 0)
            coef = g_hat.sub_(centre.index_select(0, pair_set)).mul_(scale)
            # coef_p·diff_p: added at the first end of pair p and subtracted at the second.
            scaled = diff * coef.unsqueeze(1)
        # Intermediates, saved so that they are freed once the backward pass has run.
        ctx.save_for_backward(grad_bce, grad_mld, scaled, ints[2 * n_pairs:] if scaled is not None else None,
                              floats[n_pairs + 2 * g_sets:] if scaled is not None else None)
        return total, bce, mld, cd, id_

    @staticmethod
    @once_differentiable
    def backward(ctx, g_total, g_bce, g_mld, g_cd, g_id):
        # CPU tensors only (`L2DLoss` keeps CUDA on the general path): the 0-dim output gradients are
        # read as numbers, no device sync.
        def coefficient(g_term) -> float | None:
            given = [float(g) for g in (g_total, g_term) if g is not None]
            return sum(given) if given else None

        c_bce, c_mld, c_cd, c_id = (coefficient(g) for g in (g_bce, g_mld, g_cd, g_id))
        grad_bce, grad_mld, scaled, by_row, signs = ctx.saved_tensors
        grad_z = _combine(grad_bce, c_bce, grad_mld, c_mld) if ctx.needs_input_grad[0] else None
        grad_e = _embedding_grad(ctx, scaled, by_row, signs, c_cd, c_id) if ctx.needs_input_grad[1] else None
        return grad_z, grad_e, None, None, None, None, None, None, None, None


def _combine(a: Tensor, ca: float | None, b: Tensor, cb: float | None) -> Tensor | None:
    """``ca·a + cb·b`` (a coefficient None counts as 0)."""
    if ca is None and cb is None:
        return None
    if cb is None:
        return a if ca == 1.0 else a * ca
    if ca is None:
        return b if cb == 1.0 else b * cb
    if ca == cb:
        return a + b if ca == 1.0 else (a + b).mul_(ca)
    return torch.add(a * ca, b, alpha=cb)


def _embedding_grad(ctx, scaled: Tensor | None, by_row: Tensor | None, signs: Tensor | None,
                    c_cd: float | None, c_id: float | None) -> Tensor | None:
    """The ``[N, q, d]`` gradient as one ``embedding_bag`` over the scaled pair differences: row r
    gets ``Σ ±c·coef_p·diff_p`` over the pairs p with an end at r (``+`` for a first end, ``−`` for a
    second; ``c``: the output gradient of the pair's term) and 0 where it has none."""
    if c_cd is None and c_id is None:
        return None
    n, q, d = ctx.shape
    if ctx.n_pairs == 0:
        return torch.zeros(ctx.shape, dtype=ctx.dtype, device=ctx.device)
    pair, offsets = by_row[:2 * ctx.n_pairs], by_row[2 * ctx.n_pairs:2 * ctx.n_pairs + n * q]
    c_cd, c_id = c_cd or 0.0, c_id or 0.0
    if c_cd == c_id:
        weights = signs if c_cd == 1.0 else signs * c_cd
    else:
        weights = torch.where(pair < ctx.n_cd, signs * c_cd, signs * c_id)
    grad = F.embedding_bag(pair, scaled, offsets, mode="sum", per_sample_weights=weights)
    return grad.view(n, q, d)

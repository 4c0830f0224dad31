"""The L2D objective as one autograd node (issue 11): fewer small operations per step.

``L = bce_weight·BCE_sum + λ_MLD·MLD + λ_LED·λ_CD·CD + λ_LED·λ_ID·ID`` (method.md §3.5), the value of
`mlkd.losses.L2DLoss` in the paper's form, and the balanced form's value (`balanced_embedding`: the
same pairs, other weights and mean normalisers; see `host_pair_plan`), computed in one
`torch.autograd.Function` whose forward pass also prepares the whole backward pass. At MS-COCO-like
sizes the terms cost about as much in per-operation overhead as in data, so the node keeps the
operations on large tensors to the few that must touch them and does the rest on the host:

- **index structures on the host.** The label mask is read once as a NumPy array (a view on the CPU,
  one small copy from a GPU) and every index
  the terms need is built there (`host_pair_plan`): the positives of each CD set (label) and ID set
  (image), every unordered pair of members of each set (CD's pairs first, then ID's), the set of each
  pair, the number of pairs of each set and each pair's weight ``λ·2/m`` (H's ``1/m`` over the two
  ordered pairs that each unordered pair stands for, times the term's weight).
- **CD and ID**: the exact difference of every pair straight from the full ``[N·q, d]`` tensors (one
  ``embedding_bag`` per side) and its norm are the only tensor operations; the per-pair and per-set
  arithmetic on those ``[pairs]`` norms (per-set means, normalised distances, smooth-L1, the weighted
  sums, and the backward coefficients) runs in NumPy in float64 on zero-copy views, a few microseconds
  per operation instead of a tensor dispatch each. A set whose student or teacher distances are all 0
  gets normaliser 0 on both sides, so it adds 0 and gets gradient 0 (method.md: the reference would
  divide by zero); a NaN stays NaN.
- **BCE and MLD** in NumPy on zero-copy views of the ``[N, q]`` logits, exact for saturated logits:
  ``log σ(z) = min(z, 0) − log1p(e^{−|z|})`` and ``log(1 − σ(z)) = −max(z, 0) − log1p(e^{−|z|})``, so
  the binary KL of one logit is ``p·(min(b,0) − min(a,0)) + (1 − p)·(max(a,0) − max(b,0)) +
  log1p(e^{−|a|}) − log1p(e^{−|b|})`` (``a = z^s/τ``, ``b = z^t/τ``, ``p = σ(b)``, and ``1 − p``
  computed as ``σ(−b)``), without the cancellation of subtracting the teacher's entropy.
- **the backward pass** is prepared in the forward pass (only when an input needs a gradient): the
  logits' gradient for a unit output gradient, and the scaled pair differences ``c_p·diff_p``
  (``c_p = ∂L/∂d_p / d_p``, see `label_embedding._StructureFunction`), written over ``diff`` in
  place. The backward pass itself is the logits' gradient and one ``embedding_bag`` that writes the
  whole ``[N, q, d]`` gradient at once: one bag per embedding row, holding the pairs with an end there
  (``+`` for a first end, ``−`` for a second, times the output gradient); rows without a pair get 0.
  That replaces a zeroed buffer plus ``index_add_`` of the rows, which is slow on the CPU when many
  pairs share a row (large CD sets).

On a GPU the same code runs: the ``[N, q]`` values and the ``[pairs]`` norms each reach the host in one
copy (`_to_host`), and what the host computes goes back in one copy per tensor (`_to_device`). There the
node replaces the general path's ~185 kernel launches per call (docs/benchmarks.md, GPU section).

The node returns the total and the four weighted terms; the backward pass accepts gradients on any of
them (data-parallel training back-propagates the terms with different scales).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from mlkd.losses.label_embedding import _difference_bags

_NUMPY_FLOAT = {torch.float32: np.float32, torch.float64: np.float64}


@dataclass(frozen=True)
class PairPlan:
    """The pairs of CD's and ID's sets, from `host_pair_plan`. ``P`` pairs, ``G = q + N`` sets.

    Attributes:
        n_pairs: ``P``.
        n_cd: the number of CD pairs (they come first).
        ends: ``[2P]`` int64 tensor, the rows of ``[N·q, d]`` at both ends of pair k at 2k and 2k + 1.
        end_pair: ``[2P]`` int64 tensor, the pair of each end, ends ordered by row.
        row_offsets: ``[N·q]`` int64 tensor, where each row's ends start in ``end_pair``.
        end_sign: ``[2P]`` tensor of the embeddings' dtype, +1 for a first end and −1 for a second,
            in the order of ``end_pair``.
        pair_set: ``[P]`` int64 array, the set of each pair.
        pair_weight: ``[P]`` float64 array, ``2/m`` times the term's weight.
        mean_count: ``[G]`` float64 array, ``K`` per set (the pairs a set's mean distance is over).
        inv_count: ``[G]`` float64 array, ``1/K`` (0 for sets without pairs).
    """

    n_pairs: int
    n_cd: int
    ends: Tensor
    end_pair: Tensor
    row_offsets: Tensor
    end_sign: Tensor
    pair_set: np.ndarray
    pair_weight: np.ndarray
    mean_count: np.ndarray
    inv_count: np.ndarray

    def to(self, device: torch.device) -> "PairPlan":
        """The plan with its tensors on ``device`` (the arrays stay on the host)."""
        if self.ends.device == device:
            return self
        return replace(self, ends=self.ends.to(device), end_pair=self.end_pair.to(device),
                       row_offsets=self.row_offsets.to(device), end_sign=self.end_sign.to(device))


def host_pair_plan(mask: np.ndarray, weight_cd: float, weight_id: float, dtype: torch.dtype,
                   balanced: bool = False) -> PairPlan:
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
        dtype: the embeddings' dtype (float32 or float64), for ``end_sign``.
        balanced: normalise by the balanced form's ``K = m²/2`` instead of the paper's ``m(m−1)/2``.
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
    row_offsets = np.zeros(n * q, dtype=np.int64)
    np.cumsum(np.bincount(ends, minlength=n * q)[:-1], out=row_offsets[1:])
    pair_set = group[first]
    n_cd = int((label_sizes * (label_sizes - 1)).sum()) // 2
    if balanced:  # the mean distance over m² ordered pairs; sets without pairs keep K = 0 (unused)
        mean_count = np.where(sizes >= 2, sizes.astype(np.float64) ** 2 / 2.0, 0.0)
    else:
        mean_count = (sizes * (sizes - 1) // 2).astype(np.float64)
    per_set_weight = 2.0 / np.maximum(sizes, 1)
    per_set_weight[:q] *= weight_cd
    per_set_weight[q:] *= weight_id
    return PairPlan(
        n_pairs=n_pairs, n_cd=n_cd, ends=torch.from_numpy(ends), end_pair=torch.from_numpy(by_row >> 1),
        row_offsets=torch.from_numpy(row_offsets),
        end_sign=torch.from_numpy((1 - 2 * (by_row & 1)).astype(_NUMPY_FLOAT[dtype])),
        pair_set=pair_set, pair_weight=per_set_weight[pair_set], mean_count=mean_count,
        inv_count=np.divide(1.0, mean_count, out=np.zeros_like(mean_count), where=mean_count > 0))


class FusedL2DFunction(torch.autograd.Function):
    """``(total, bce, mld, cd, id)`` of the L2D objective, weighted; see the module docstring.

    Inputs: student logits ``zs`` ``[N, q]`` and embeddings ``es`` ``[N, q, d]`` (differentiable),
    teacher logits and embeddings (constants; the teacher's ``d`` may differ), ``y`` the float labels,
    the `PairPlan` of the labels (its tensors on the inputs' device), and ``(bce_weight, λ_MLD, τ)``.
    float32/float64 tensors, all of one dtype and on one device: on a GPU the ``[N, q]`` values and
    the ``[pairs]`` norms each reach the host in one copy (two syncs in all), the rest as on the CPU.
    Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, zs: Tensor, es: Tensor, zt: Tensor, et: Tensor, y: Tensor, plan: PairPlan,
                weights: tuple[float, float, float]):
        # NaN/inf inputs give NaN/inf values, as in torch; `L2DLoss` then names the input.
        with np.errstate(all="ignore"):
            return FusedL2DFunction._forward(ctx, zs, es, zt, et, y, plan, weights)

    @staticmethod
    def _forward(ctx, zs: Tensor, es: Tensor, zt: Tensor, et: Tensor, y: Tensor, plan: PairPlan,
                 weights: tuple[float, float, float]):
        ctx.set_materialize_grads(False)
        need_z, need_e = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        bce_weight, lambda_mld, tau = weights
        n, q = zs.shape
        dtype, dev = zs.dtype, zs.device

        # BCE and MLD in NumPy on zero-copy views ([N, q] is small: per-operation cost dominates).
        zs_t, zt_t = (zs, zt) if tau == 1.0 else (zs / tau, zt / tau)
        # σ(z^t/τ), and 1 − σ(z^t/τ) without cancellation; σ(z^s/τ) and σ(z^s) for the logits' gradient.
        logit_parts = [zs_t, zt_t, y, torch.sigmoid(zt_t), torch.sigmoid(zt_t.neg()), zs]
        if need_z:
            logit_parts += [torch.sigmoid(zs_t), torch.sigmoid(zs)] if tau != 1.0 else [torch.sigmoid(zs_t)]
        a, b, labels, p_t, q_t, plain, *sig_s = _to_host(logit_parts)
        (min_s, max_s, log_s), (min_t, max_t, log_t) = _logit_parts(a), _logit_parts(b)
        # KL per logit: p·(log p − log σ(a)) + (1 − p)·(log(1 − p) − log(1 − σ(a))) with
        # log σ(z) = min(z, 0) − log1p(e^{−|z|}) and log(1 − σ(z)) = −max(z, 0) − log1p(e^{−|z|}).
        kl = p_t * (min_t - min_s) + q_t * (max_s - max_t) + (log_s - log_t)
        mld = float(kl.sum(dtype=np.float64)) * (lambda_mld * tau * tau / n)
        _, max_p, log_p = (None, max_s, log_s) if tau == 1.0 else _logit_parts(plain)
        bce = float((max_p + log_p - labels * plain).sum(dtype=np.float64)) * bce_weight  # log(1 + e^z) − y·z

        # CD and ID over the pair list: the differences and norms as tensors, the rest in NumPy.
        n_pairs = plan.n_pairs
        cd = id_ = 0.0
        scaled = None
        if n_pairs > 0:
            bags = _difference_bags(plan.ends, dtype)
            diff_t = F.embedding_bag(plan.ends, et.reshape(n * q, -1), bags[1], mode="sum", per_sample_weights=bags[2])
            norm_t = torch.linalg.vector_norm(diff_t, dim=1)
            del diff_t  # its memory serves the student's differences next
            diff = F.embedding_bag(plan.ends, es.reshape(n * q, -1), bags[1], mode="sum", per_sample_weights=bags[2])
            dist_s, dist_t = _to_host([torch.linalg.vector_norm(diff, dim=1), norm_t])
            pair_set, pair_weight, n_cd = plan.pair_set, plan.pair_weight, plan.n_cd
            sums_s = np.bincount(pair_set, weights=dist_s, minlength=q + n)
            sums_t = np.bincount(pair_set, weights=dist_t, minlength=q + n)
            # 1 / mean distance of each set and side; 0 on both sides of a set where either side's
            # distances are all 0 (no structure to match: it adds 0 and gets gradient 0). NaN stays.
            usable = (sums_s != 0) & (sums_t != 0)
            inv_s = np.where(usable, plan.mean_count / sums_s, 0.0)[pair_set]
            inv_t = np.where(usable, plan.mean_count / sums_t, 0.0)[pair_set]
            s_hat, t_hat = dist_s * inv_s, dist_t * inv_t
            gap = s_hat - t_hat
            size = np.abs(gap)
            huber = np.where(size < 1.0, 0.5 * gap * gap, size - 0.5)  # smooth-L1, β = 1
            cd = float(np.dot(huber[:n_cd], pair_weight[:n_cd]))
            id_ = float(np.dot(huber[n_cd:], pair_weight[n_cd:]))
            if need_e:
                # ∂L/∂ŝ_p = w_p·clamp(ŝ_p − t̂_p, −1, 1); ∂L/∂d_p = (that − Σ_set that·ŝ / K) / μ, with
                # μ the set's mean distance over K pairs (ŝ_p = d_p/μ, ∂μ/∂d_p = 1/K).
                g_hat = np.clip(gap, -1.0, 1.0) * pair_weight
                centre = np.bincount(pair_set, weights=g_hat * s_hat, minlength=q + n) * plan.inv_count
                scale = np.where(dist_s == 0, 0.0, inv_s / dist_s)  # a zero distance gets gradient 0
                coef = (g_hat - centre[pair_set]) * scale
                # coef_p·diff_p, over diff: added at the first end of pair p and subtracted at the second.
                scaled = diff.mul_(_to_device(coef, dtype, dev).unsqueeze(1))

        ctx.shape, ctx.dtype, ctx.plan = es.shape, dtype, plan
        grad_bce = grad_mld = None
        if need_z:
            # Per unit output gradient: ∂BCE/∂z = σ(z) − y; ∂MLD/∂z = τ/N · (σ(z/τ) − σ(z^t/τ)).
            s_tau, s_s = sig_s if tau != 1.0 else (sig_s[0], sig_s[0])
            grad_bce = _to_device((s_s - labels) * bce_weight if bce_weight != 1.0 else s_s - labels, dtype, dev)
            grad_mld = _to_device((s_tau - p_t) * (lambda_mld * tau / n), dtype, dev)
        # Intermediates, saved so that they are freed once the backward pass has run.
        ctx.save_for_backward(grad_bce, grad_mld, scaled)
        values = (bce + mld + cd + id_, bce, mld, cd, id_)
        return tuple(torch.tensor(v, dtype=dtype, device=dev) for v in values)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_total, g_bce, g_mld, g_cd, g_id):
        # The 0-dim output gradients are read as numbers (no sync on the CPU; one small one on a GPU).
        def coefficient(g_term) -> float | None:
            given = [float(g) for g in (g_total, g_term) if g is not None]
            return sum(given) if given else None

        c_bce, c_mld, c_cd, c_id = (coefficient(g) for g in (g_bce, g_mld, g_cd, g_id))
        grad_bce, grad_mld, scaled = ctx.saved_tensors
        grad_z = _combine(grad_bce, c_bce, grad_mld, c_mld) if ctx.needs_input_grad[0] else None
        grad_e = _embedding_grad(ctx, scaled, c_cd, c_id) if ctx.needs_input_grad[1] else None
        return grad_z, grad_e, None, None, None, None, None


def _to_host(tensors: list[Tensor]) -> list[np.ndarray]:
    """NumPy arrays of tensors of one dtype and device: zero-copy views of CPU tensors; GPU tensors
    reach the host in one device-to-host copy (one sync, however many tensors)."""
    if tensors[0].device.type == "cpu":
        return [t.numpy() for t in tensors]
    flat = torch.cat([t.reshape(-1) for t in tensors]).cpu().numpy()
    pieces = np.split(flat, np.cumsum([t.numel() for t in tensors])[:-1])
    return [piece.reshape(t.shape) for piece, t in zip(pieces, tensors)]


def _to_device(values: np.ndarray, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``values`` as a tensor of ``dtype`` on ``device`` (a view of the array when nothing changes)."""
    t = torch.from_numpy(np.asarray(values, dtype=_NUMPY_FLOAT[dtype]))
    return t if device.type == "cpu" else t.to(device)


def _logit_parts(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``min(z, 0)``, ``max(z, 0)`` and ``log1p(e^{−|z|})``, elementwise."""
    return np.minimum(z, 0), np.maximum(z, 0), np.log1p(np.exp(-np.abs(z)))


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


def _embedding_grad(ctx, scaled: Tensor | None, c_cd: float | None, c_id: float | None) -> Tensor | None:
    """The ``[N, q, d]`` gradient as one ``embedding_bag`` over the scaled pair differences: row r
    gets ``Σ ±c·coef_p·diff_p`` over the pairs p with an end at r (``+`` for a first end, ``−`` for a
    second; ``c``: the output gradient of the pair's term) and 0 where it has none."""
    if c_cd is None and c_id is None:
        return None
    plan = ctx.plan
    if plan.n_pairs == 0:
        return torch.zeros(ctx.shape, dtype=ctx.dtype, device=ctx.plan.ends.device)
    c_cd, c_id = c_cd or 0.0, c_id or 0.0
    signs = plan.end_sign
    if c_cd == c_id:
        weights = signs if c_cd == 1.0 else signs * c_cd
    else:
        weights = torch.where(plan.end_pair < plan.n_cd, signs * c_cd, signs * c_id)
    grad = F.embedding_bag(plan.end_pair, scaled, plan.row_offsets, mode="sum", per_sample_weights=weights)
    return grad.view(ctx.shape)

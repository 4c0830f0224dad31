"""Straightforward loop implementations of the losses, written from the formulas of method.md.

They loop in Python over labels, images, pairs and triplets, the way the paper's reference code does,
and share no code with `mlkd.losses`. The tests compare the vectorised losses against them; the
loss benchmark (benchmarks/loss_speed.py) times them as the "loop" baseline, so the functions used
there (`mld_ref`, `cd_ref`, `id_ref`) support backward for inputs without duplicate embeddings.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _smooth_l1(x: Tensor) -> Tensor:
    ax = x.abs()
    return torch.where(ax < 1, 0.5 * x * x, ax - 0.5)


def mld_ref(zs: Tensor, zt: Tensor, temperature: float = 1.0) -> Tensor:
    """§3.1 with probabilities, as written: sum over labels, mean over images, τ² factor."""
    ps, pt = torch.sigmoid(zs / temperature), torch.sigmoid(zt.detach() / temperature)
    total = zs.new_zeros(())
    for i in range(zs.shape[0]):
        kl = pt[i] * torch.log(pt[i] / ps[i]) + (1 - pt[i]) * torch.log((1 - pt[i]) / (1 - ps[i]))
        total = total + kl.sum()
    return total / zs.shape[0] * temperature ** 2


def kd_ref(zs: Tensor, zt: Tensor, temperature: float = 4.0) -> Tensor:
    """Per-label BCE of student probabilities against teacher probabilities, loops over labels."""
    ps, pt = torch.sigmoid(zs / temperature), torch.sigmoid(zt / temperature)
    total = zs.new_zeros(())
    for i in range(zs.shape[0]):
        for k in range(zs.shape[1]):
            total = total - (pt[i, k] * torch.log(ps[i, k]) + (1 - pt[i, k]) * torch.log(1 - ps[i, k]))
    return total / zs.shape[0] * temperature ** 2


def ps_ref(zs: Tensor, zt: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
    """Partial softmax: for each positive c of image i, softmax over [negatives of i, c], KL(t ‖ s)."""
    total = zs.new_zeros(())
    for i in range(zs.shape[0]):
        negs = [j for j in range(zs.shape[1]) if y[i, j] == 0]
        for c in range(zs.shape[1]):
            if y[i, c] != 1:
                continue
            idx = torch.tensor(negs + [c], dtype=torch.long)
            pt = torch.softmax(zt[i, idx] / temperature, dim=0)
            ps = torch.softmax(zs[i, idx] / temperature, dim=0)
            total = total + (pt * (torch.log(pt) - torch.log(ps))).sum()
    return total / zs.shape[0] * temperature ** 2


def _distances(a: Tensor) -> Tensor:
    """[m, d] -> [m, m] Euclidean distances, one pair at a time."""
    m = a.shape[0]
    rows = []
    for i in range(m):
        row = []
        for j in range(m):
            if i == j:
                row.append(a.new_zeros(()))
            else:
                row.append(torch.sqrt(((a[i] - a[j]) ** 2).sum()))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def structure_ref(a: Tensor, b: Tensor) -> Tensor:
    """§3.2: H(A, B); 0 for m ≤ 1 and for sets whose distances are all 0 on either side."""
    m = a.shape[0]
    if m <= 1:
        return a.new_zeros(())
    da, db = _distances(a), _distances(b.detach())
    mean_a = da.sum() / (m * (m - 1))
    mean_b = db.sum() / (m * (m - 1))
    if mean_a == 0 or mean_b == 0:
        return a.new_zeros(())
    return _smooth_l1(da / mean_a - db / mean_b).sum() / m


def _structure_fast_ref(a: Tensor, b: Tensor) -> Tensor:
    """H(A, B) for one set with broadcast distances (used in the timed loop baseline)."""
    m = a.shape[0]
    off = ~torch.eye(m, dtype=torch.bool, device=a.device)
    da = a.new_zeros(m, m)
    da[off] = ((a.unsqueeze(0) - a.unsqueeze(1)) ** 2).sum(-1)[off].sqrt()
    with torch.no_grad():
        db = b.new_zeros(m, m)
        db[off] = ((b.unsqueeze(0) - b.unsqueeze(1)) ** 2).sum(-1)[off].sqrt()
    mean_a, mean_b = da.sum() / (m * (m - 1)), db.sum() / (m * (m - 1))
    if mean_a.item() == 0 or mean_b.item() == 0:
        return a.new_zeros(())
    return _smooth_l1(da / mean_a - db / mean_b).sum() / m


def cd_ref(es: Tensor, et: Tensor, y: Tensor, fast: bool = False) -> Tensor:
    """§3.3: loop over labels; each label's positive images by boolean row selection."""
    h = _structure_fast_ref if fast else structure_ref
    total = es.new_zeros(())
    for c in range(y.shape[1]):
        rows = y[:, c] == 1
        if int(rows.sum()) >= 2:
            total = total + h(es[rows, c], et[rows, c].detach())
    return total


def id_ref(es: Tensor, et: Tensor, y: Tensor, fast: bool = False) -> Tensor:
    """§3.4: loop over images; each image's positive labels by boolean selection."""
    h = _structure_fast_ref if fast else structure_ref
    total = es.new_zeros(())
    for i in range(y.shape[0]):
        cols = y[i] == 1
        if int(cols.sum()) >= 2:
            total = total + h(es[i, cols], et[i, cols].detach())
    return total


def rkd_distance_ref(fs: Tensor, ft: Tensor) -> Tensor:
    """RKD distance: smooth-L1 of mean-normalised pairwise distances, mean over all N² pairs."""
    n = fs.shape[0]
    ds, dt = _distances(fs), _distances(ft)
    ms, mt = ds.sum() / (n * (n - 1)), dt.sum() / (n * (n - 1))
    if ms == 0 or mt == 0:
        return fs.new_zeros(())
    return _smooth_l1(ds / ms - dt / mt).sum() / (n * n)


def rkd_angle_ref(fs: Tensor, ft: Tensor) -> Tensor:
    """RKD angle: smooth-L1 of cos∠(x_j − x_i, x_k − x_i) over all N³ triplets, mean."""
    n = fs.shape[0]

    def unit(v: Tensor) -> Tensor:
        norm = math.sqrt(float((v * v).sum()))
        return v / norm if norm > 0 else v * 0

    total = fs.new_zeros(())
    for i in range(n):
        for j in range(n):
            for k in range(n):
                cs = (unit(fs[j] - fs[i]) * unit(fs[k] - fs[i])).sum()
                ct = (unit(ft[j] - ft[i]) * unit(ft[k] - ft[i])).sum()
                total = total + _smooth_l1(cs - ct)
    return total / n ** 3


def pkt_ref(fs: Tensor, ft: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT: cosine similarities mapped to [0, 1], rows normalised, KL(t ‖ s) per row, mean."""
    n = fs.shape[0]

    def cond(f: Tensor) -> list[list[float]]:
        sim = [[0.0] * n for _ in range(n)]
        for i in range(n):
            for j in range(n):
                ni, nj = float(f[i].norm()), float(f[j].norm())
                cos = float((f[i] * f[j]).sum()) / (ni * nj) if ni > 0 and nj > 0 else 0.0
                sim[i][j] = (cos + 1) / 2
        return [[v / sum(row) for v in row] for row in sim]

    ps, pt = cond(fs), cond(ft)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps))
    return torch.tensor(total / n, dtype=fs.dtype)

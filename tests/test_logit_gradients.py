"""benchmarks/logit_gradients.py: its closed-form gradients equal autograd through mlkd's own losses, in the
units training applies them (BCE summed, KD a batch mean at batch 64, the balanced MLD 3 per image), and its
shares partition each term's gradient mass."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from mlkd.losses.logits import bce_sum_loss, kd_loss, mld_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import logit_gradients  # noqa: E402


def _autograd(loss_fn, zs: np.ndarray) -> np.ndarray:
    z = torch.tensor(zs, dtype=torch.float64, requires_grad=True)
    loss_fn(z).backward()
    return z.grad.numpy()


def test_term_gradients_match_autograd_of_the_training_losses():
    rng = np.random.default_rng(0)
    n, q = 64, 7  # one full batch of the reference size: batch means weigh 1/64 per image
    zs, zt = rng.normal(0, 3, (n, q)), rng.normal(0, 5, (n, q))
    y = (rng.random((n, q)) < 0.3).astype(np.float64)
    t = torch.tensor(zt)
    got = logit_gradients.term_gradients(zs, zt, y)
    want = {
        "BCE": _autograd(lambda z: bce_sum_loss(z, torch.tensor(y)), zs),
        "KD τ=4, λ 10": _autograd(lambda z: 10.0 * kd_loss(z, t, 4.0), zs),
        "KD τ=4, λ 192": _autograd(lambda z: 192.0 * kd_loss(z, t, 4.0), zs),
        # the balanced form applies N·λ_MLD·MLD (MLD a batch mean), λ_MLD = 3
        "MLD τ=1, 3/image": _autograd(lambda z: n * 3.0 * mld_loss(z, t, 1.0), zs),
    }
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_shares_partition_the_mass_and_count_the_pull_against_the_label():
    zt = np.array([[-10.0, -3.0, 0.0, 3.0, 10.0]])
    y = np.array([[0.0, 0.0, 1.0, 1.0, 1.0]])
    zs = np.array([[-5.0, -3.0, -1.0, 4.0, 12.0]])
    found = logit_gradients.describe(logit_gradients.term_gradients(zs, zt, y), zt)
    for name, row in found.items():
        assert abs(sum(row[b] for b in logit_gradients.BIN_NAMES) - 1.0) < 1e-12, name
    # By hand for MLD: g = 3(σ(zs) − σ(zt)); BCE's sign is that of σ(zs) − y.
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    g = 3 * (sig(zs) - sig(zt))
    bce = sig(zs) - y
    against = np.abs(g)[np.sign(g) == -np.sign(bce)].sum() / np.abs(g).sum()
    assert abs(found["MLD τ=1, 3/image"]["against the label"] - against) < 1e-12
    assert abs(found["MLD τ=1, 3/image"]["pull"] - np.abs(g).sum()) < 1e-12
    # the p_t > 0.99 bin holds the last label only (σ(10) ≈ 0.99995), and the first bin the first only
    assert abs(found["MLD τ=1, 3/image"]["> 0.99"] - abs(g[0, 4]) / np.abs(g).sum()) < 1e-12
    assert abs(found["MLD τ=1, 3/image"]["< 0.01"] - abs(g[0, 0]) / np.abs(g).sum()) < 1e-12

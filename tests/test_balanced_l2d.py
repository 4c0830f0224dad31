"""The balanced L2D form: a loop reference, its invariances, and the paper's form left unchanged."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlkd.losses import L2DLoss, create_distiller
from mlkd.losses.balanced_embedding import balanced_structure_terms
from mlkd.losses.logits import bce_sum_loss, mld_loss
from mlkd.losses.objective import BALANCED_WEIGHTS, DEFAULT_LAMBDA_PKT, PAPER_WEIGHTS
from mlkd.outputs import ModelOutput
from tests.reference_losses import cd_ref, id_ref, mld_ref


def _loop_h_hat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Ĥ written out with loops: V-statistic mean distance and average over all m² ordered pairs."""
    m = a.shape[0]
    da = torch.stack([torch.stack([torch.linalg.vector_norm(a[i] - a[j]) for j in range(m)]) for i in range(m)])
    db = torch.stack([torch.stack([torch.linalg.vector_norm(b[i] - b[j]) for j in range(m)]) for i in range(m)])
    mu_a, mu_b = da.sum() / m**2, db.sum() / m**2
    if mu_a == 0 or mu_b == 0:
        return a.new_zeros(())
    total = a.new_zeros(())
    for i in range(m):
        for j in range(m):
            total = total + F.smooth_l1_loss(da[i, j] / mu_a, db[i, j] / mu_b, beta=1.0)
    return total / m**2


def _loop_balanced(es, et, y):
    positives = max(int(y.sum()), 1)
    cd = es.new_zeros(())
    for c in range(y.shape[1]):
        rows = y[:, c].nonzero().squeeze(1)
        if len(rows) >= 2:
            cd = cd + len(rows) * _loop_h_hat(es[rows, c], et[rows, c])
    idl = es.new_zeros(())
    for i in range(y.shape[0]):
        cols = y[i].nonzero().squeeze(1)
        if len(cols) >= 2:
            idl = idl + len(cols) * _loop_h_hat(es[i, cols], et[i, cols])
    return cd / positives, idl / positives


def _batch(n=12, q=7, ds=5, dt=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    es = torch.randn(n, q, ds, generator=g, dtype=torch.float64)
    et = torch.randn(n, q, dt, generator=g, dtype=torch.float64)
    y = (torch.rand(n, q, generator=g) < 0.4).double()
    y[0] = 0  # an image without labels
    y[:, 0] = 0  # a label without images
    y[1, :] = 0
    y[1, 3] = 1  # an image with one label
    return es, et, y


def test_balanced_terms_match_loop_reference_values_and_gradients():
    es, et, y = _batch()
    es.requires_grad_(True)
    got = balanced_structure_terms(es, et, y)
    ref_cd, ref_id = _loop_balanced(es, et, y)
    torch.testing.assert_close(got["cd"], ref_cd, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["id"], ref_id, rtol=1e-10, atol=1e-12)
    g_got = torch.autograd.grad(got["cd"] + 3 * got["id"], es)[0]
    g_ref = torch.autograd.grad(ref_cd + 3 * ref_id, es)[0]
    torch.testing.assert_close(g_got, g_ref, rtol=1e-8, atol=1e-10)


def test_duplicating_every_image_leaves_the_per_image_objective_unchanged():
    es, et, y = _batch(seed=1)
    zs, zt = torch.randn(12, 7, dtype=torch.float64), torch.randn(12, 7, dtype=torch.float64)
    loss = create_distiller("l2d", lambda_pkt=0)  # the label-wise terms
    one = loss(ModelOutput(zs, es), ModelOutput(zt, et), y)
    two = loss(ModelOutput(zs.repeat(2, 1), es.repeat(2, 1, 1)), ModelOutput(zt.repeat(2, 1), et.repeat(2, 1, 1)),
               y.repeat(2, 1))
    for name in ("bce", "mld", "cd", "id"):
        torch.testing.assert_close(two.terms[name] / 24, one.terms[name] / 12, rtol=1e-10, atol=1e-12)
    assert one.terms["cd"] > 0 and one.terms["id"] > 0


def test_balanced_terms_are_scale_free_and_finite_for_huge_and_tiny_inputs():
    es, et, y = _batch(seed=2)
    base = balanced_structure_terms(es, et, y)
    for s in (1e20, 1e-20):
        scaled = balanced_structure_terms((es * s).float(), (et * s).float(), y)
        for k in base:
            assert torch.isfinite(scaled[k])
            torch.testing.assert_close(scaled[k].double(), base[k], rtol=1e-4, atol=1e-6)


def test_degenerate_groups_and_empty_batches_give_zero_not_nan():
    es = torch.zeros(4, 3, 5, requires_grad=True)
    et = torch.randn(4, 3, 5)
    y = torch.ones(4, 3)
    out = balanced_structure_terms(es, et, y)
    assert out["cd"] == 0 and out["id"] == 0
    (out["cd"] + out["id"]).backward()
    assert torch.isfinite(es.grad).all()
    none = balanced_structure_terms(torch.randn(4, 3, 5), torch.randn(4, 3, 5), torch.zeros(4, 3))
    assert none["cd"] == 0 and none["id"] == 0


def test_balanced_weights_do_not_depend_on_label_count_or_batch_size():
    """Relative to the BCE, each balanced term is a per-unit average: padding the label set with
    labels nobody holds, or changing the batch size by duplication, leaves the ratios unchanged."""
    es, et, y = _batch(seed=3)
    zs, zt = torch.randn(12, 7, dtype=torch.float64), torch.randn(12, 7, dtype=torch.float64)
    loss = create_distiller("l2d", lambda_pkt=0)  # the label-wise terms
    out = loss(ModelOutput(zs, es), ModelOutput(zt, et), y)
    extra = 5  # labels absent from the batch, logits such that their BCE and MLD are exactly 0 on both sides

    def pad(t, value):
        shape = list(t.shape)
        shape[1] = extra
        return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=1)

    out2 = loss(ModelOutput(pad(zs, -1e4), pad(es, 0.0)), ModelOutput(pad(zt, -1e4), pad(et, 0.0)), pad(y, 0.0))
    ratio = (7 + extra) / 7  # the terms are scaled by N·q; only that factor may change
    for name in ("cd", "id"):
        torch.testing.assert_close(out2.terms[name] / out2.terms["bce"] / ratio, out.terms[name] / out.terms["bce"],
                                   rtol=1e-9, atol=1e-12)


def test_paper_form_is_the_default_of_the_class_and_bit_identical_to_the_formula():
    es, et, y = _batch(seed=4)
    zs, zt = torch.randn(12, 7, dtype=torch.float64), torch.randn(12, 7, dtype=torch.float64)
    paper = L2DLoss()
    assert paper.form == "paper"
    assert (paper.lambda_mld, paper.lambda_led, paper.lambda_cd, paper.lambda_id) == tuple(PAPER_WEIGHTS.values())
    out = paper(ModelOutput(zs, es), ModelOutput(zt, et), y)
    bce = F.binary_cross_entropy_with_logits(zs, y, reduction="sum")
    expected = bce + 10 * mld_ref(zs, zt) + 1 * (100 * cd_ref(es, et, y) + 1000 * id_ref(es, et, y))
    torch.testing.assert_close(out.total, expected, rtol=1e-12, atol=1e-10)
    explicit = create_distiller("l2d", form="paper")(ModelOutput(zs, es), ModelOutput(zt, et), y)
    assert torch.equal(explicit.total, out.total)


def test_registry_l2d_runs_the_balanced_form_and_describes_it():
    loss = create_distiller("l2d")
    assert loss.form == "balanced"
    assert (loss.lambda_mld, loss.lambda_led, loss.lambda_cd, loss.lambda_id) == tuple(BALANCED_WEIGHTS.values())
    assert loss.lambda_pkt == DEFAULT_LAMBDA_PKT == 234.375 and loss.uses_features
    text = loss.describe()
    assert "balanced" in text and "l2d_paper" in text and "λ_PKT=234.375" in text
    assert create_distiller("l2d", form="paper").lambda_pkt == 0  # the paper's objective has no relation term
    paper = create_distiller("l2d_paper")
    assert paper.form == "paper" and "paper's form" in paper.describe()
    assert (paper.lambda_mld, paper.lambda_led, paper.lambda_cd, paper.lambda_id) == tuple(PAPER_WEIGHTS.values())
    with pytest.raises(ValueError, match="unknown L2D form 'ref'"):
        create_distiller("l2d", form="ref")


def test_balanced_total_is_the_formula():
    es, et, y = _batch(seed=5)
    zs, zt = torch.randn(12, 7, dtype=torch.float64), torch.randn(12, 7, dtype=torch.float64)
    loss = create_distiller("l2d", lambda_mld=0.7, lambda_led=0.2, lambda_cd=3.0, lambda_id=30.0,
                            lambda_pkt=0)
    out = loss(ModelOutput(zs, es), ModelOutput(zt, et), y)
    cd, idl = _loop_balanced(es, et, y)
    n, q = y.shape
    expected = bce_sum_loss(zs, y) + 0.7 * n * mld_loss(zs, zt) + n * q * 0.2 * (3.0 * cd + 30.0 * idl)
    torch.testing.assert_close(out.total, expected, rtol=1e-10, atol=1e-10)


def test_a_nan_embedding_of_a_positive_is_named_not_dropped():
    es, et, y = _batch(seed=6)
    zs, zt = torch.randn(12, 7, dtype=torch.float64), torch.randn(12, 7, dtype=torch.float64)
    i, c = (y > 0).nonzero()[0].tolist()
    for who in ("student", "teacher"):
        bad_s, bad_t = es.clone(), et.clone()
        (bad_s if who == "student" else bad_t)[i, c, 0] = float("nan")
        with pytest.raises(ValueError, match=f"{who}.label_embeddings"):
            create_distiller("l2d", lambda_pkt=0)(ModelOutput(zs, bad_s), ModelOutput(zt, bad_t), y)
    terms = balanced_structure_terms(torch.full_like(es, float("nan")), et, y)
    assert torch.isnan(terms["cd"]) and torch.isnan(terms["id"])


def test_the_relation_term_adds_n_lambda_pkt_to_the_balanced_total_on_both_paths():
    from tests.reference_losses import pkt_ref

    es, et, y = _batch(seed=7)
    n, q = y.shape
    zs, zt = torch.randn(n, q, dtype=torch.float64), torch.randn(n, q, dtype=torch.float64)
    fs, ft = torch.randn(n, 5, 3, 3, dtype=torch.float64), torch.randn(n, 8, 2, 2, dtype=torch.float64)
    student, teacher = ModelOutput(zs, es, [fs]), ModelOutput(zt, et, [ft])
    plain = create_distiller("l2d", lambda_pkt=0)(student, teacher, y)
    with_pkt = create_distiller("l2d", lambda_pkt=400.0)
    assert with_pkt.uses_features and with_pkt.teacher_terms["pkt"] == "features"
    assert not create_distiller("l2d", lambda_pkt=0).uses_features  # without the term no feature map is read
    # Without feature maps the error says how to train without the term.
    with pytest.raises(ValueError, match=r"student.features is empty.*--lambda pkt=0"):
        create_distiller("l2d")(ModelOutput(zs, es), ModelOutput(zt, et), y)
    out = with_pkt(student, teacher, y)
    expected = n * 400.0 * pkt_ref(fs.mean(dim=(2, 3)), ft.mean(dim=(2, 3)))
    torch.testing.assert_close(out.terms["pkt"], expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.total, plain.total + expected, rtol=1e-10, atol=1e-10)
    # The general path (the one taken when embeddings are gathered across processes) gives the same total.
    general = create_distiller("l2d", lambda_pkt=400.0)
    general.embedding_gather = lambda a, b, m: (a, b, m)  # forces the general path, gathering nothing
    torch.testing.assert_close(general(student, teacher, y).total, out.total, rtol=1e-10, atol=1e-10)
    # Its gradient reaches the student's features.
    fs.requires_grad_(True)
    with_pkt(ModelOutput(zs, es, [fs]), teacher, y).total.backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert "λ_PKT=400" in with_pkt.describe()


def test_the_paper_objective_has_no_relation_term():
    from mlkd.engine.preflight import check_distiller_options

    with pytest.raises(ValueError, match=r"method 'l2d_paper' has no weight 'pkt'; its weights are mld, led, cd, id"):
        check_distiller_options("l2d_paper", {"pkt": 1.0}, {})
    with pytest.raises(ValueError, match=r"lambda_pkt .* addition to the balanced form"):
        create_distiller("l2d", form="paper", lambda_pkt=1.0)

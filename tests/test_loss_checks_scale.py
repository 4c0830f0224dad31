"""Value checks on the finished loss, huge finite inputs, NaN teachers (issues 10 and 11)."""
from __future__ import annotations

import pytest
import torch

import mlkd.losses as L
import mlkd.losses._checks as checks
import mlkd.losses.label_embedding as le
import mlkd.losses.objective as objective
from mlkd.losses.reviewkd import ReviewKD
from mlkd.outputs import ModelOutput


def batch(seed: int = 0, n: int = 9, q: int = 7, d_s: int = 5, d_t: int = 6, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, q, generator=g) < 0.5).to(dtype)
    y[0, :3] = 1
    y[:3, 0] = 1
    es = torch.randn(n, q, d_s, generator=g, dtype=dtype)
    et = torch.randn(n, q, d_t, generator=g, dtype=dtype)
    return es, et, y


@pytest.mark.parametrize("dtype,scale", [(torch.float32, 2.0 ** 70), (torch.float32, 2.0 ** 120),
                                         (torch.float64, 2.0 ** 600)])
def test_huge_finite_embeddings_give_the_exact_scale_free_values(dtype, scale):
    """H is scale-free, so scaling by a power of two must not change CD/ID at all; before, entries
    of 1e20 (float32) overflowed the squared distances and returned NaN."""
    es, et, y = batch(dtype=dtype)
    small = es.clone().requires_grad_(True)
    huge = (es * scale).requires_grad_(True)
    for fn in (L.cd_loss, L.id_loss, L.led_loss):
        want = fn(small, et, y)
        got = fn(huge, et * scale, y)
        assert torch.isfinite(got) and got.item() == want.item(), fn.__name__
    L.led_loss(small, et, y).backward()
    L.led_loss(huge, et * scale, y).backward()
    torch.testing.assert_close(huge.grad * scale, small.grad, rtol=1e-5, atol=0)
    zs, zt = torch.randn(9, 7, dtype=dtype), torch.randn(9, 7, dtype=dtype)
    want = L.L2DLoss()(ModelOutput(zs, small), ModelOutput(zt, et), y).total
    got = L.L2DLoss()(ModelOutput(zs, huge), ModelOutput(zt, et * scale), y).total
    assert got.item() == want.item()
    assert L.structure_loss(huge[:, 0], et[:, 0] * scale).item() == L.structure_loss(small[:, 0], et[:, 0]).item()


def test_nan_teacher_embeddings_are_named_or_propagate():
    es, et, y = batch()
    bad = et.clone()
    bad[1, 0] = float("nan")  # image 1 is a positive of label 0 (a CD set of 3 or more)
    with pytest.raises(ValueError, match="teacher_emb contains NaN or inf"):
        L.cd_loss(es, bad, y)
    with pytest.raises(ValueError, match=r"teacher.label_embeddings contains NaN or inf"):
        L.L2DLoss()(ModelOutput(torch.randn(9, 7), es), ModelOutput(torch.randn(9, 7), bad), y)
    # Without checks a NaN teacher set used to be dropped silently (a finite, wrong value).
    assert torch.isnan(L.cd_loss(es, bad, y, validate=False))


def test_value_checks_do_not_read_the_embeddings_when_the_loss_is_finite(monkeypatch):
    """The checks look at the finished scalar; the [N, q, d] inputs are inspected only on failure."""
    seen = []

    def spy(value, name):
        seen.append(name)
        return checks.check_finite(value, name)

    monkeypatch.setattr(le, "check_finite", spy)
    monkeypatch.setattr(objective, "check_finite", spy)
    es, et, y = batch()
    L.led_loss(es, et, y)
    L.L2DLoss()(ModelOutput(torch.randn(9, 7), es), ModelOutput(torch.randn(9, 7), et), y)
    assert not [name for name in seen if "emb" in name]
    with pytest.raises(ValueError, match="student_emb contains NaN"):
        L.id_loss(es.masked_fill(y.bool().unsqueeze(-1), float("nan")), et, y)
    assert "student_emb" in seen


def test_nan_in_an_unread_embedding_cannot_change_the_result():
    es, et, y = batch()
    y[5] = 0  # image 5 has no positive: CD and ID never read its embeddings
    bad = es.clone()
    bad[5] = float("nan")
    assert L.led_loss(bad, et, y).item() == L.led_loss(es, et, y).item()


def test_reviewkd_names_nan_features():
    g = torch.Generator().manual_seed(0)

    def out(c: int) -> ModelOutput:
        return ModelOutput(torch.randn(4, 3, generator=g), features=[torch.randn(4, c, 8, 8, generator=g),
                                                                     torch.randn(4, 2 * c, 4, 4, generator=g)])

    student, teacher = out(4), out(6)
    y = torch.ones(4, 3)
    distiller = ReviewKD(mid_channels=4)
    distiller.build(student, teacher)
    assert torch.isfinite(distiller(student, teacher, y).total)
    teacher.features[1][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"teacher.features\[1\] contains NaN or inf"):
        distiller(student, teacher, y)
    teacher.features[1][0, 0, 0, 0] = 0
    student.features[0][1, 1, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"student.features\[0\] contains NaN or inf"):
        distiller(student, teacher, y)


def structure_node(value: torch.Tensor):
    node = value.grad_fn
    while "StructureFunction" not in type(node).__name__:
        node = node.next_functions[0][0]
    return node


def test_cd_and_id_calls_share_one_pass_and_stay_correct():
    es, et, y = batch(seed=3, dtype=torch.float64)
    a, b = es.clone().requires_grad_(True), es.clone().requires_grad_(True)
    cd, id_ = L.cd_loss(a, et, y), L.id_loss(a, et, y)
    assert structure_node(cd) is structure_node(id_)  # one shared autograd node
    (3 * cd + 5 * id_).backward()
    L.led_loss(b, et, y, lambda_cd=3.0, lambda_id=5.0).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    # A backward pass through the first call: the second computes afresh (no freed graph).
    c = es.clone().requires_grad_(True)
    L.cd_loss(c, et, y).backward()
    L.id_loss(c, et, y).backward()
    # An in-place change between the calls: the second sees the new values.
    plain = es.clone()
    L.id_loss(plain, et, y)
    plain.add_(torch.randn_like(plain))
    fresh = plain.clone()
    assert L.cd_loss(plain, et, y).item() == L.cd_loss(fresh, et, y).item()

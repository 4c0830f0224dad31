"""mlkd.losses against the loop references of tests/reference_losses.py (written from method.md)."""
from __future__ import annotations

import pytest
import torch

import mlkd.losses as L
from mlkd.outputs import ModelOutput
from reference_losses import (
    cd_ref,
    id_ref,
    kd_ref,
    mld_ref,
    pkt_ref,
    ps_ref,
    rkd_angle_ref,
    rkd_distance_ref,
    structure_ref,
)

DTYPES = [torch.float32, torch.float64]


def make_batch(dtype: torch.dtype, seed: int = 0, n: int = 10, q: int = 8, d_s: int = 5, d_t: int = 6):
    """Random logits/embeddings/targets with every awkward case of method.md §3 present.

    Labels: 0 has no positive, 1 one, 2 exactly two, 3 is positive everywhere, 4 has a degenerate
    student set (identical embeddings), 5 a degenerate teacher set (all zero). Images: 0 has no
    positive, 1 one, 2 all; image 3 has exactly-zero student embeddings for every label.
    """
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, q, generator=g) < 0.4).to(dtype)
    y[:, 0] = 0
    y[:, 1] = 0
    y[5, 1] = 1
    y[:, 2] = 0
    y[[4, 7], 2] = 1
    y[:, 3] = 1
    y[0] = 0
    y[1] = 0
    y[1, 4] = 1
    y[2] = 1
    y[:, 4] = 0
    y[[2, 5, 6, 8], 4] = 1
    y[:, 5] = 0
    y[[2, 4, 9], 5] = 1
    zs = torch.randn(n, q, generator=g, dtype=dtype) * 2
    zt = torch.randn(n, q, generator=g, dtype=dtype) * 2
    es = torch.randn(n, q, d_s, generator=g, dtype=dtype)
    et = torch.randn(n, q, d_t, generator=g, dtype=dtype)
    es[[2, 5, 6, 8], 4] = es[2, 4].clone()
    et[[2, 4, 9], 5] = 0
    es[3] = 0
    return zs, zt, es, et, y


def close(value: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal to the float64 reference to 1e-5 relative (1e-9 absolute for values that are 0)."""
    torch.testing.assert_close(value.double(), ref.double(), rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------- values against the loop references


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_logit_losses_match_reference(dtype, seed):
    zs, zt, _, _, y = make_batch(dtype, seed)
    z64 = zs.double(), zt.double()
    out = L.mld_loss(zs, zt)
    assert out.dtype == dtype
    close(out, mld_ref(*z64))
    close(L.mld_loss(zs, zt, temperature=3.0), mld_ref(*z64, temperature=3.0))
    close(L.kd_loss(zs, zt), kd_ref(*z64, temperature=1.0))  # the default τ is 1 (issue 19's search)
    close(L.kd_loss(zs, zt, temperature=4.0), kd_ref(*z64, temperature=4.0))
    close(L.kd_loss(zs, zt, temperature=1.5), kd_ref(*z64, temperature=1.5))
    close(L.ps_loss(zs, zt, y), ps_ref(*z64, y))
    close(L.ps_loss(zs, zt, y, temperature=2.0), ps_ref(*z64, y, temperature=2.0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_embedding_losses_match_reference(dtype, seed):
    _, _, es, et, y = make_batch(dtype, seed)
    cd, id_ = cd_ref(es.double(), et.double(), y), id_ref(es.double(), et.double(), y)
    assert cd > 0 and id_ > 0
    close(L.cd_loss(es, et, y), cd)
    close(L.id_loss(es, et, y), id_)
    close(L.led_loss(es, et, y), 100 * cd + 1000 * id_)
    close(L.led_loss(es, et, y, lambda_cd=3.0, lambda_id=0.5), 3 * cd + 0.5 * id_)


def test_embedding_losses_at_scale_with_many_groups():
    """More groups, larger sets and d=768 (the benchmark's width), float32 only."""
    g = torch.Generator().manual_seed(5)
    y = (torch.rand(24, 40, generator=g) < 0.15).float()
    es, et = torch.randn(24, 40, 768, generator=g), torch.randn(24, 40, 96, generator=g)
    close(L.cd_loss(es, et, y), cd_ref(es.double(), et.double(), y))
    close(L.id_loss(es, et, y), id_ref(es.double(), et.double(), y))


@pytest.mark.parametrize("dtype", DTYPES)
def test_structure_function_cases(dtype):
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 4, generator=g, dtype=dtype), torch.randn(6, 9, generator=g, dtype=dtype)
    close(L.structure_loss(a, b), structure_ref(a.double(), b.double()))
    a_dup = a.clone()
    a_dup[4] = a_dup[1]  # duplicate members: an exact zero distance inside a live set
    a_dup[5] = 0
    close(L.structure_loss(a_dup, b), structure_ref(a_dup.double(), b.double()))
    assert L.structure_loss(a[:1], b[:1]) == 0  # one member
    same = a[:1].expand(4, 4).clone()
    assert L.structure_loss(same, b[:4]) == 0  # degenerate student set
    assert L.structure_loss(a[:4], torch.zeros(4, 9, dtype=dtype)) == 0  # degenerate teacher set
    # The loss is a structure distance: invariant to scale and translation of either side.
    close(L.structure_loss(3 * a + 1, b - 2), L.structure_loss(a, b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_feature_losses_match_reference(dtype):
    g = torch.Generator().manual_seed(4)
    fs, ft = torch.randn(7, 5, generator=g, dtype=dtype), torch.randn(7, 9, generator=g, dtype=dtype)
    fs[3] = fs[2]
    fs[5] = 0
    close(L.rkd_distance_loss(fs, ft), rkd_distance_ref(fs.double(), ft.double()))
    close(L.rkd_angle_loss(fs, ft), rkd_angle_ref(fs.double(), ft.double()))
    close(L.pkt_loss(fs, ft), pkt_ref(fs.double(), ft.double()))
    a, b = torch.randn(3, 4, 2, 2, generator=g, dtype=dtype), torch.randn(3, 4, 2, 2, generator=g, dtype=dtype)
    close(L.mse_loss(a, b), torch.tensor(sum(float((x - y) ** 2) for x, y in zip(a.flatten(), b.flatten())) / 48))


def test_bce_sum_matches_loop():
    zs, _, _, _, y = make_batch(torch.float64)
    ref = sum(-(y[i, k] * torch.log(torch.sigmoid(zs[i, k])) + (1 - y[i, k]) * torch.log(1 - torch.sigmoid(zs[i, k])))
              for i in range(y.shape[0]) for k in range(y.shape[1]))
    close(L.bce_sum_loss(zs, y), ref)


# ---------------------------------------------------------------- gradients


def test_gradcheck_float64():
    zs, zt, es, et, y = make_batch(torch.float64, d_s=3, d_t=4)
    es = torch.randn_like(es)  # generic point: no duplicates, where distances are not differentiable
    zs.requires_grad_(True)
    es.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: L.mld_loss(z, zt, temperature=2.0), (zs,))
    assert torch.autograd.gradcheck(lambda z: L.ps_loss(z, zt, y), (zs,))
    assert torch.autograd.gradcheck(lambda e: L.cd_loss(e, et, y), (es,))
    assert torch.autograd.gradcheck(lambda e: L.id_loss(e, et, y), (es,))


def test_gradcheck_float64_structure_entry_points():
    """The hand-written backward of the structure function through every public entry point."""
    _, _, es, et, y = make_batch(torch.float64, d_s=3, d_t=4)
    es = torch.randn_like(es).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: L.led_loss(e, et, y, lambda_cd=2.0, lambda_id=0.5), (es,))
    g = torch.Generator().manual_seed(8)
    a = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: L.structure_loss(x, b), (a,))
    assert torch.autograd.gradcheck(lambda x: L.rkd_distance_loss(x, b), (a,))
    # Padded sets with the padding anywhere, an empty set and a one-member set.
    valid = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 1]], dtype=torch.bool)
    s = torch.randn(4, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 4, 2, generator=g, dtype=torch.float64)
    per_set = L.padded_structure_losses(s, t, valid)
    for k in range(4):
        close(per_set[k], structure_ref(s[k][valid[k]].detach(), t[k][valid[k]]))
    assert torch.autograd.gradcheck(lambda x: L.padded_structure_losses(x, t, valid), (s,))
    one = a[:1].detach().clone().requires_grad_(True)  # no pair at all: value and gradient 0
    L.structure_loss(one, b[:1]).backward()
    assert (one.grad == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_gradients_match_reference(dtype):
    """Gradients of CD + ID against autograd through the loop references (generic point)."""
    g = torch.Generator().manual_seed(7)
    y = (torch.rand(12, 9, generator=g) < 0.35).to(dtype)
    y[:, 0] = 1  # one large set
    es = torch.randn(12, 9, 5, generator=g, dtype=dtype)
    et = torch.randn(12, 9, 4, generator=g, dtype=dtype)
    mine = es.clone().requires_grad_(True)
    L.led_loss(mine, et, y, lambda_cd=1.0, lambda_id=3.0).backward()
    ref = es.double().requires_grad_(True)
    (cd_ref(ref, et.double(), y.double()) + 3 * id_ref(ref, et.double(), y.double())).backward()
    assert mine.grad.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(mine.grad.double(), ref.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("student_dtype,teacher_dtype", [(torch.float32, torch.float64),
                                                         (torch.bfloat16, torch.float32)])
def test_mixed_dtype_embeddings_values_and_gradients(student_dtype, teacher_dtype):
    """Student and teacher in different dtypes (only member rows are converted): same loss and
    gradient as computing in the wider dtype, degenerate sets included."""
    _, _, es, et, y = make_batch(torch.float64, seed=1)
    s = es.to(student_dtype).requires_grad_(True)
    t = et.to(teacher_dtype)
    out = L.led_loss(s, t, y)
    out.backward()
    wide = torch.float64 if torch.float64 in (student_dtype, teacher_dtype) else torch.float32
    s_wide = s.detach().to(wide).requires_grad_(True)
    want = L.led_loss(s_wide, t.to(wide), y)
    want.backward()
    assert out.dtype == wide and s.grad.dtype == student_dtype and torch.isfinite(s.grad).all()
    torch.testing.assert_close(out, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(s.grad, s_wide.grad.to(student_dtype), rtol=1e-2 if student_dtype == torch.bfloat16 else 1e-6,
                               atol=1e-5)
    assert (s.grad[y == 0] == 0).all()


def test_gradients_finite_and_teacher_untouched_with_degenerate_sets():
    zs, zt, es, et, y = make_batch(torch.float32)
    for t in (zs, zt, es, et):
        t.requires_grad_(True)
    fs, ft = torch.randn(10, 7, requires_grad=True), torch.randn(10, 3, requires_grad=True)
    fs.data[4] = fs.data[1]  # duplicate and zero vectors: zero distances inside RKD and PKT
    fs.data[6] = 0
    total = (L.mld_loss(zs, zt) + L.kd_loss(zs, zt) + L.ps_loss(zs, zt, y) + L.led_loss(es, et, y)
             + L.rkd_distance_loss(fs, ft) + L.rkd_angle_loss(fs, ft) + L.pkt_loss(fs, ft) + L.mse_loss(zs, zt))
    total.backward()
    assert zt.grad is None and et.grad is None and ft.grad is None
    assert all(torch.isfinite(t.grad).all() for t in (zs, es, fs))
    assert es.grad.abs().sum() > 0
    # Negative entries of the embedding tensor take no part in CD/ID.
    assert (es.grad[y == 0] == 0).all()


def test_all_negative_batch_gives_zero():
    zs, zt, es, et, y = make_batch(torch.float32)
    y = torch.zeros_like(y)
    es.requires_grad_(True)
    zs.requires_grad_(True)
    for value in (L.cd_loss(es, et, y), L.id_loss(es, et, y), L.led_loss(es, et, y), L.ps_loss(zs, zt, y)):
        assert value.item() == 0.0 and value.dtype == torch.float32
    L.led_loss(es, et, y).backward()
    assert (es.grad == 0).all()


def test_autocast_bf16_computes_in_float32():
    zs, zt, es, et, y = make_batch(torch.float32)
    zs, zt, es, et = (t.bfloat16() for t in (zs, zt, es, et))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = {"mld": L.mld_loss(zs, zt), "ps": L.ps_loss(zs, zt, y), "cd": L.cd_loss(es, et, y),
               "id": L.id_loss(es, et, y), "kd": L.kd_loss(zs, zt),
               "rkd": L.rkd_angle_loss(es[:, 0], et[:, 0]), "pkt": L.pkt_loss(es[:, 0], et[:, 0])}
    want = {"mld": L.mld_loss(zs.float(), zt.float()), "ps": L.ps_loss(zs.float(), zt.float(), y),
            "cd": L.cd_loss(es.float(), et.float(), y), "id": L.id_loss(es.float(), et.float(), y),
            "kd": L.kd_loss(zs.float(), zt.float()),
            "rkd": L.rkd_angle_loss(es[:, 0].float(), et[:, 0].float()),
            "pkt": L.pkt_loss(es[:, 0].float(), et[:, 0].float())}
    for name, value in got.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
        torch.testing.assert_close(value, want[name], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_name_the_argument():
    zs, zt, es, et, y = make_batch(torch.float32)
    cases = [
        (lambda: L.mld_loss(zs, zt[:9]), r"teacher_logits must have shape \[N, q\] with leading sizes \(10, 8\)"),
        (lambda: L.mld_loss(zs, zt[:, :7]), r"teacher_logits .*\(10, 8\) matching student_logits"),
        (lambda: L.mld_loss(zs[0], zt), r"student_logits must be a 2-D tensor of shape \[N, q\], got 1-D"),
        (lambda: L.mld_loss(zs, zt, temperature=0), r"temperature must be a finite number > 0"),
        (lambda: L.cd_loss(es, et[:9], y), r"teacher_emb must have shape \[N, q, d_t\] .*\(10, 8\)"),
        (lambda: L.cd_loss(es, et, y[:, :7]), r"targets must have shape \[N, q\] .*\(10, 8\) matching student_emb"),
        (lambda: L.id_loss(es[0], et, y), r"student_emb must be a 3-D tensor of shape \[N, q, d_s\]"),
        (lambda: L.id_loss(es, et, y * 2), r"targets must contain only 0 and 1 .*found value 2\.0"),
        (lambda: L.ps_loss(zs, zt, y - 1), r"targets must contain only 0 and 1 .*found value -1\.0"),
        (lambda: L.cd_loss(es.masked_fill(es > 2, float("nan")), et, y), r"student_emb contains NaN or inf"),
        (lambda: L.mld_loss(zs, zt.masked_fill(zt > 1, float("inf"))), r"teacher_logits contains NaN or inf"),
        (lambda: L.rkd_angle_loss(es[:, 0], et[:5, 0]), r"teacher_feat must have shape \[N, C_t\] .*\(10,\)"),
        (lambda: L.mse_loss(zs, zt[:, :3]), r"teacher must have the student's shape \(10, 8\)"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()


def test_finite_check_has_no_false_positive_on_overflowing_sum():
    big = torch.full((4, 3), 3e38)  # finite entries whose float32 sum overflows
    assert L.mse_loss(big, big).item() == 0.0


def test_validate_false_skips_value_checks_only():
    zs, zt, es, et, y = make_batch(torch.float32)
    bad = zs.clone()
    bad[0, 0] = float("nan")
    assert torch.isnan(L.mld_loss(bad, zt, validate=False))  # skipped on request
    with pytest.raises(ValueError, match="teacher_logits must have shape"):
        L.mld_loss(zs, zt[:3], validate=False)  # shapes are always checked


# ---------------------------------------------------------------- distillers


def make_outputs(seed: int = 0, n: int = 6, q: int = 5, widths=(8, 12), grad: bool = True):
    g = torch.Generator().manual_seed(seed)

    def model(d: int, c: int) -> ModelOutput:
        out = ModelOutput(
            logits=torch.randn(n, q, generator=g),
            label_embeddings=torch.randn(n, q, d, generator=g),
            features=[torch.randn(n, c // 2, 8, 8, generator=g), torch.randn(n, c, 4, 4, generator=g)],
        )
        if grad:
            for t in [out.logits, out.label_embeddings, *out.features]:
                t.requires_grad_(True)
        return out

    y = (torch.rand(n, q, generator=g) < 0.5).float()
    y[0, :3] = 1
    y[:3, 0] = 1
    return model(6, widths[0]), model(10, widths[1]), y


def test_registry_lists_all_and_rejects_unknown():
    names = ["cd", "id", "kd", "l2d", "l2d_paper", "led", "mld", "mse", "pkt", "ps", "rkd", "vanilla"]
    assert set(names) <= set(L.list_distillers())
    with pytest.raises(ValueError, match=r"unknown distiller 'l2e'.*Valid names: .*l2d.*vanilla"):
        L.create_distiller("l2e")


@pytest.mark.parametrize("name", ["vanilla", "l2d", "mld", "led", "cd", "id", "kd", "ps", "mse", "rkd", "pkt"])
def test_every_distiller_forward_backward(name):
    student, teacher, y = make_outputs()
    distiller = L.create_distiller(name)
    assert isinstance(distiller, L.Distiller)
    distiller.build(student, teacher)
    out = distiller(student, teacher if distiller.requires_teacher else None, y)
    assert list(out.terms)[0] == "bce"
    torch.testing.assert_close(out.total, sum(out.terms.values()))
    assert distiller.batch_mean_terms <= set(out.terms) - {"bce"}
    close(out.terms["bce"], L.bce_sum_loss(student.logits.double(), y))
    out.total.backward()
    assert student.logits.grad is not None and torch.isfinite(student.logits.grad).all()
    for t in [teacher.logits, teacher.label_embeddings, *teacher.features]:
        assert t.grad is None
    if distiller.uses_embeddings:
        assert student.label_embeddings.grad.abs().sum() > 0
    if distiller.uses_features:
        assert student.features[-1].grad.abs().sum() > 0
    for p in distiller.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_distiller_terms_equal_weighted_functions():
    student, teacher, y = make_outputs(grad=False)
    zs, zt, es, et = student.logits, teacher.logits, student.label_embeddings, teacher.label_embeddings
    out = L.L2DLoss(lambda_mld=2.0, lambda_led=3.0, lambda_cd=5.0, lambda_id=7.0, temperature=2.0)(student, teacher, y)
    close(out.terms["mld"], 2 * L.mld_loss(zs, zt, temperature=2.0))
    close(out.terms["cd"], 15 * L.cd_loss(es, et, y))
    close(out.terms["id"], 21 * L.id_loss(es, et, y))
    assert L.L2DLoss().batch_mean_terms == {"mld"}
    defaults = L.L2DLoss()
    assert (defaults.lambda_mld, defaults.lambda_led, defaults.lambda_cd, defaults.lambda_id) == (10, 1, 100, 1000)
    out = L.create_distiller("ps", lambda_ps=4.0, bce_weight=0.5)(student, teacher, y)
    close(out.terms["ps"], 4 * L.ps_loss(zs, zt, y))
    close(out.terms["bce"], 0.5 * L.bce_sum_loss(zs, y))
    fs, ft = student.features[-1].mean(dim=(2, 3)), teacher.features[-1].mean(dim=(2, 3))
    out = L.create_distiller("rkd", lambda_distance=2.0, lambda_angle=3.0)(student, teacher, y)
    close(out.terms["rkd_distance"], 2 * rkd_distance_ref(fs.double(), ft.double()))
    close(out.terms["rkd_angle"], 3 * rkd_angle_ref(fs.double(), ft.double()))
    out = L.create_distiller("mse", target="logits", lambda_mse=1.0)(student, teacher, y)
    close(out.terms["mse"], ((zs - zt) ** 2).mean())


def test_mse_projection_and_pooling():
    student, teacher, y = make_outputs(widths=(8, 12))
    teacher.features[-1] = torch.randn(6, 12, 8, 8)  # larger spatial size than the student's 4x4
    distiller = L.create_distiller("mse", lambda_mse=1.0)
    with pytest.raises(ValueError, match=r"8 channels and teacher.features\[-1\] has 12; call build"):
        distiller(student, teacher, y)
    distiller.build(student, teacher)
    proj = distiller.projection
    assert isinstance(proj, torch.nn.Conv2d) and tuple(proj.weight.shape) == (12, 8, 1, 1)
    out = distiller(student, teacher, y)
    expected = ((proj(student.features[-1]) - torch.nn.functional.avg_pool2d(teacher.features[-1], 2)) ** 2).mean()
    close(out.terms["mse"], expected)
    out.total.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    same = L.create_distiller("mse")
    student2, teacher2, _ = make_outputs(widths=(8, 8))
    same.build(student2, teacher2)
    assert same.projection is None and not list(same.parameters())


def test_distiller_bad_inputs():
    student, teacher, y = make_outputs(grad=False)
    with pytest.raises(ValueError, match=r"teacher is None, but the 'l2d' distiller needs the teacher's ModelOutput"):
        L.L2DLoss()(student, None, y)
    no_emb = ModelOutput(logits=teacher.logits, features=teacher.features)
    with pytest.raises(ValueError, match=r"teacher.label_embeddings is None, but the 'cd' distiller"):
        L.create_distiller("cd")(student, no_emb, y)
    with pytest.raises(ValueError, match=r"student.features is empty, but the 'rkd' distiller"):
        L.create_distiller("rkd")(ModelOutput(logits=student.logits), teacher, y)
    with pytest.raises(ValueError, match=r"targets must have shape \[N, q\] .*\(6, 5\) matching student.logits"):
        L.create_distiller("vanilla")(student, None, y[:4])
    with pytest.raises(ValueError, match=r"targets must contain only 0 and 1"):
        L.create_distiller("mld")(student, teacher, y + 0.5)
    bad = ModelOutput(logits=teacher.logits, label_embeddings=teacher.label_embeddings[:, :4])
    with pytest.raises(ValueError, match=r"teacher.label_embeddings must have shape \[N, q, d\] .*\(6, 5\)"):
        L.create_distiller("id")(student, bad, y)
    nan = ModelOutput(logits=teacher.logits.masked_fill(teacher.logits > 0, float("nan")))
    with pytest.raises(ValueError, match=r"teacher.logits contains NaN or inf"):
        L.create_distiller("kd")(student, nan, y)
    with pytest.raises(ValueError, match=r"target must be 'features' or 'logits', got 'maps'"):
        L.create_distiller("mse", target="maps")


def test_distillers_under_autocast_return_float32():
    student, teacher, y = make_outputs()
    for name in ["l2d", "ps", "rkd", "pkt", "mse"]:
        distiller = L.create_distiller(name)
        distiller.build(student, teacher)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = distiller(student, teacher, y)
        assert out.total.dtype == torch.float32 and torch.isfinite(out.total), name

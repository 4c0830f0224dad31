"""`L2DLoss` runs as one autograd node on the CPU, in the paper's form and the balanced one
(mlkd/losses/fused_l2d.py, issue 11): values and gradients against the loop references and the
general path, checks and fallbacks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mlkd.losses as L
from mlkd.losses.objective import _Objective
from mlkd.outputs import ModelOutput
from reference_losses import cd_ref, id_ref, mld_ref
from test_balanced_l2d import _batch, _loop_balanced
from test_losses import make_batch

DTYPES = [torch.float32, torch.float64]
_OTHER = dict(lambda_mld=2.0, lambda_led=3.0, lambda_cd=5.0, lambda_id=7.0, temperature=2.0, bce_weight=0.5)
# Both forms, with their default weights and with others.
WEIGHTS = [{}, _OTHER, {"form": "balanced"}, {"form": "balanced", **_OTHER}]
FORMS = ["paper", "balanced"]


def node_name(value: torch.Tensor) -> str:
    return type(value.grad_fn).__name__


def general(loss: L.L2DLoss, student: ModelOutput, teacher: ModelOutput, y: torch.Tensor):
    """The same objective through the general path (`_Objective.forward`, terms one by one)."""
    return _Objective.forward(loss, student, teacher, y)


def run_both(loss, zs, zt, es, et, y, backward=lambda out: out.total.backward()):
    """(output, logits grad, embeddings grad) of the fused and of the general path."""
    results = []
    for fn in (lambda *a: loss(*a), lambda *a: general(loss, *a)):
        a, b = zs.clone().requires_grad_(True), es.clone().requires_grad_(True)
        out = fn(ModelOutput(a, b), ModelOutput(zt, et), y)
        backward(out)
        results.append((out, a.grad, b.grad))
    return results


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_paper_form_runs_fused_and_matches_the_loop_reference(dtype, seed):
    zs, zt, es, et, y = make_batch(dtype, seed)
    out = L.L2DLoss()(ModelOutput(zs.clone().requires_grad_(True), es.clone().requires_grad_(True)),
                      ModelOutput(zt, et), y)
    assert node_name(out.total) == "FusedL2DFunctionBackward"
    assert list(out.terms) == ["bce", "mld", "cd", "id"] and out.total.dtype == dtype
    z64, t64, e64, f64, y64 = (x.double() for x in (zs, zt, es, et, y))
    want = {"bce": F.binary_cross_entropy_with_logits(z64, y64, reduction="sum"), "mld": 10 * mld_ref(z64, t64),
            "cd": 100 * cd_ref(e64, f64, y64), "id": 1000 * id_ref(e64, f64, y64)}
    for name, value in want.items():
        torch.testing.assert_close(out.terms[name].double(), value, rtol=1e-5, atol=1e-9, msg=name)
    torch.testing.assert_close(out.total.double(), sum(want.values()), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_values_and_gradients_equal_the_general_path(dtype, weights):
    """Degenerate sets, duplicates, empty labels and images (make_batch) included."""
    zs, zt, es, et, y = make_batch(dtype, 3)
    (fused, gz, ge), (ref, rz, re) = run_both(L.L2DLoss(**weights), zs, zt, es, et, y)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name in ref.terms:
        torch.testing.assert_close(fused.terms[name], ref.terms[name], rtol=tol, atol=tol, msg=name)
    torch.testing.assert_close(gz, rz, rtol=tol, atol=tol)
    torch.testing.assert_close(ge, re, rtol=tol, atol=tol)
    assert torch.isfinite(ge).all()


def test_gradients_match_autograd_through_the_loop_references():
    g = torch.Generator().manual_seed(7)
    y = (torch.rand(12, 9, generator=g) < 0.35).double()
    y[:, 0] = 1
    zs, zt = torch.randn(12, 9, generator=g, dtype=torch.float64), torch.randn(12, 9, generator=g, dtype=torch.float64)
    es = torch.randn(12, 9, 5, generator=g, dtype=torch.float64)
    et = torch.randn(12, 9, 4, generator=g, dtype=torch.float64)
    a, b = zs.clone().requires_grad_(True), es.clone().requires_grad_(True)
    L.L2DLoss(temperature=1.5)(ModelOutput(a, b), ModelOutput(zt, et), y).total.backward()
    ra, rb = zs.clone().requires_grad_(True), es.clone().requires_grad_(True)
    (F.binary_cross_entropy_with_logits(ra, y, reduction="sum") + 10 * mld_ref(ra, zt, 1.5)
     + 100 * cd_ref(rb, et, y) + 1000 * id_ref(rb, et, y)).backward()
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_gradcheck_float64_tiny(weights):
    g = torch.Generator().manual_seed(5)
    zs, zt = (torch.randn(5, 4, generator=g, dtype=torch.float64) * 2 for _ in range(2))
    es = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)  # generic point: no duplicates
    et = torch.randn(5, 4, 2, generator=g, dtype=torch.float64)
    y = (torch.rand(5, 4, generator=g) < 0.5).double()
    y[1, :3] = 1
    y[:3, 1] = 1
    y[4] = 0
    loss = L.L2DLoss(**weights)

    def total(z, e):
        out = loss(ModelOutput(z, e), ModelOutput(zt, et), y)
        assert node_name(out.total) == "FusedL2DFunctionBackward"
        return out.total

    assert torch.autograd.gradcheck(total, (zs.requires_grad_(True), es.requires_grad_(True)))

    def terms(z, e):  # every output of the node, each with its own output gradient
        return tuple(loss(ModelOutput(z, e), ModelOutput(zt, et), y).terms.values())

    assert torch.autograd.gradcheck(terms, (zs, es))


@pytest.mark.parametrize("form", FORMS)
def test_terms_back_propagated_with_different_scales(form):
    """Data-parallel training back-propagates Σ scale_k · term_k (mlkd/engine/trainer.py)."""
    zs, zt, es, et, y = make_batch(torch.float64, 2)
    scales = {"bce": 2.0, "mld": 1.0, "cd": 3.0, "id": 0.5}

    def backward(out):
        sum(scales[k] * v for k, v in out.terms.items()).backward()

    (_, gz, ge), (_, rz, re) = run_both(L.L2DLoss(form=form), zs, zt, es, et, y, backward)
    torch.testing.assert_close(gz, rz, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ge, re, rtol=1e-12, atol=1e-12)

    def only_cd(out):
        out.terms["cd"].backward()

    (_, gz, ge), (_, rz, re) = run_both(L.L2DLoss(form=form), zs, zt, es, et, y, only_cd)
    assert gz is None and rz is None
    torch.testing.assert_close(ge, re, rtol=1e-12, atol=1e-12)

    def total_and_id(out):
        (out.total + 2 * out.terms["id"]).backward()

    (_, gz, ge), (_, rz, re) = run_both(L.L2DLoss(form=form), zs, zt, es, et, y, total_and_id)
    torch.testing.assert_close(gz, rz, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ge, re, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_no_pairs_gives_zero_structure_terms_and_zero_embedding_gradient(form):
    zs, zt, es, et, y = make_batch(torch.float32, 0)
    y.zero_()
    y[0, 0] = 1  # a single positive: no set has two members
    (fused, gz, ge), (ref, rz, re) = run_both(L.L2DLoss(form=form), zs, zt, es, et, y)
    assert fused.terms["cd"].item() == 0 and fused.terms["id"].item() == 0
    torch.testing.assert_close(fused.total, ref.total)
    torch.testing.assert_close(gz, rz)
    assert torch.equal(ge, torch.zeros_like(es))
    # The general balanced path leaves embeddings that reach no term without a gradient.
    assert (re is None and form == "balanced") or torch.equal(re, torch.zeros_like(es))


@pytest.mark.parametrize("where", ["student.logits", "teacher.logits", "student.label_embeddings",
                                   "teacher.label_embeddings"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("form", FORMS)
def test_nan_or_inf_inputs_name_the_culprit(where, bad, form):
    zs, zt, es, et, y = make_batch(torch.float32, 0)
    tensors = {"student.logits": zs, "teacher.logits": zt, "student.label_embeddings": es,
               "teacher.label_embeddings": et}
    target = tensors[where]
    if target.dim() == 3:
        target[6, 3, 0] = bad  # label 3 is positive in every image: read by CD and ID
    else:
        target[4, 2] = bad
    with pytest.raises(ValueError, match=rf"{where} contains NaN or inf"):
        L.L2DLoss(form=form)(ModelOutput(zs, es), ModelOutput(zt, et), y)
    out = L.L2DLoss(form=form, validate=False)(ModelOutput(zs, es), ModelOutput(zt, et), y)
    assert not torch.isfinite(out.total)


def test_labels_are_checked_and_any_dtype_is_accepted():
    zs, zt, es, et, y = make_batch(torch.float32, 1)
    with pytest.raises(ValueError, match=r"targets must contain only 0 and 1"):
        L.L2DLoss()(ModelOutput(zs, es), ModelOutput(zt, et), y * 0.5)
    want = L.L2DLoss()(ModelOutput(zs, es), ModelOutput(zt, et), y).total
    for labels in (y.bool(), y.long(), y.double(), y.half()):
        assert L.L2DLoss()(ModelOutput(zs, es), ModelOutput(zt, et), labels).total.item() == want.item()
    # Without checks, any nonzero label counts as positive (as on the general path).
    loose = L.L2DLoss(validate=False)
    got = loose(ModelOutput(zs, es), ModelOutput(zt, et), y * 0.5).total
    torch.testing.assert_close(got, general(loose, ModelOutput(zs, es), ModelOutput(zt, et), y * 0.5).total)


def test_inputs_outside_the_fused_path_take_the_general_path():
    zs, zt, es, et, y = make_batch(torch.float32, 0)
    mixed = L.L2DLoss()(ModelOutput(zs, es), ModelOutput(zt, et.double()), y)
    assert node_name(mixed.total) != "FusedL2DFunctionBackward"
    torch.testing.assert_close(mixed.total.float(), L.L2DLoss()(ModelOutput(zs, es), ModelOutput(zt, et), y).total)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = L.L2DLoss()(ModelOutput(zs, es), ModelOutput(zt, et), y)
    assert node_name(auto.total) != "FusedL2DFunctionBackward" and auto.total.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = L.L2DLoss(form="balanced")(ModelOutput(zs, es), ModelOutput(zt, et), y)
    assert node_name(auto.total) != "FusedL2DFunctionBackward" and auto.total.dtype == torch.float32
    with pytest.raises(ValueError, match=r"teacher.label_embeddings must have shape \[N, q, d\]"):
        L.L2DLoss()(ModelOutput(zs, es), ModelOutput(zt, et[:, :4]), y)


def test_teacher_gets_no_gradient_and_graph_can_be_retained():
    zs, zt, es, et, y = make_batch(torch.float64, 1)
    student = ModelOutput(zs.requires_grad_(True), es.requires_grad_(True))
    teacher = ModelOutput(zt.clone().requires_grad_(True), et.clone().requires_grad_(True))
    out = L.L2DLoss()(student, teacher, y)
    out.total.backward(retain_graph=True)
    first = es.grad.clone()
    out.total.backward()
    torch.testing.assert_close(es.grad, 2 * first)
    assert teacher.logits.grad is None and teacher.label_embeddings.grad is None
    with torch.no_grad():
        value = L.L2DLoss()(student, teacher, y).total
    assert value.grad_fn is None and value.item() == out.total.item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_balanced_form_runs_fused_and_matches_the_loop_reference(dtype):
    """The default `--method l2d` objective: value and gradients against the balanced form written
    with loops (tests/test_balanced_l2d.py), through the fused node."""
    es, et, y = (t.to(dtype) for t in _batch(seed=8))
    g = torch.Generator().manual_seed(8)
    zs, zt = (torch.randn(12, 7, generator=g, dtype=dtype) for _ in range(2))
    loss = L.L2DLoss(form="balanced", lambda_mld=0.7, lambda_led=0.2, lambda_cd=3.0, lambda_id=30.0)
    a, b = zs.clone().requires_grad_(True), es.clone().requires_grad_(True)
    out = loss(ModelOutput(a, b), ModelOutput(zt, et), y)
    assert node_name(out.total) == "FusedL2DFunctionBackward"
    out.total.backward()
    ra, rb = zs.double().requires_grad_(True), es.double().requires_grad_(True)
    cd, idl = _loop_balanced(rb, et.double(), y.double())
    n, q = y.shape
    want = (F.binary_cross_entropy_with_logits(ra, y.double(), reduction="sum") + 0.7 * n * mld_ref(ra, zt.double())
            + n * q * 0.2 * (3.0 * cd + 30.0 * idl))
    want.backward()
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.total.double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(a.grad.double(), ra.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(b.grad.double(), rb.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("form", FORMS)
def test_huge_and_tiny_finite_embeddings_give_the_unscaled_value(form):
    """Squared differences of 1e20 overflow float32: the total is computed again from exactly
    rescaled embeddings (CD and ID are scale-free), and 1e-20 must not underflow to 0."""
    zs, zt, es, et, y = make_batch(torch.float64, 4)
    loss = L.L2DLoss(form=form)
    base = loss(ModelOutput(zs, es), ModelOutput(zt, et), y)
    for s in (1e20, 1e-20):
        out = loss(ModelOutput(zs.float(), (es * s).float()), ModelOutput(zt.float(), (et * s).float()), y.float())
        for name in ("cd", "id"):
            assert torch.isfinite(out.terms[name])
            torch.testing.assert_close(out.terms[name].double(), base.terms[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("form", FORMS)
def test_saturated_logits_give_exact_bce_and_mld(form):
    """BCE and MLD of the fused node at logits far into saturation (±30, ±1e4, ±1e20, in float32),
    against float64 ``logsigmoid`` written term by term: no overflow, and no cancellation where the
    student and teacher logits are large and close (their KL is tiny, not float32 noise)."""
    big = torch.tensor([30.0, 31.0, -30.0, -31.0, 1e4, -1e4, 1e20, -1e20, 0.5, 40.0])
    zs = torch.stack([big, big.flip(0), big * 0.9, -big])
    zt = torch.stack([big + 0.5, big.flip(0) - 1.0, big, big])
    y = torch.zeros(4, 10)
    y[:, ::3] = 1
    es, et = torch.randn(4, 10, 3), torch.randn(4, 10, 3)
    loss = L.L2DLoss(form=form, lambda_led=0.0)
    a = zs.clone().requires_grad_(True)
    out = loss(ModelOutput(a, es), ModelOutput(zt, et), y)
    assert node_name(out.total) == "FusedL2DFunctionBackward"
    out.terms["mld"].backward()

    def kl(s, t):  # float64 reference, term by term
        p = torch.sigmoid(t)
        return p * (F.logsigmoid(t) - F.logsigmoid(s)) + torch.sigmoid(-t) * (F.logsigmoid(-t) - F.logsigmoid(-s))

    s, t = zs.double(), zt.double()
    p = torch.sigmoid(t)
    scale = 10.0 / 4 if form == "paper" else loss.lambda_mld
    torch.testing.assert_close(out.terms["mld"].double(), kl(s, t).sum() * scale, rtol=1e-6, atol=0.0)
    # Large, close logits only: the KL (3.4e-14) is below float32 rounding of the teacher's entropy;
    # BCE(z^s; p) − BCE(z^t; p) in float32 gives 5.1e-14, the naive log-ratio form NaN.
    close = torch.tensor([[30.0, 31.0, 35.0, -30.0, -31.0, 40.0]])
    tiny = loss(ModelOutput(close, torch.randn(1, 6, 3)), ModelOutput(close + 0.5, torch.randn(1, 6, 3)),
                torch.zeros(1, 6)).terms["mld"]
    want = kl(close.double(), close.double() + 0.5).sum() * (10.0 if form == "paper" else loss.lambda_mld)
    assert 0 < want < 1e-12
    torch.testing.assert_close(tiny.double(), want, rtol=1e-4, atol=0.0)
    bce = (-(y.double() * F.logsigmoid(s) + (1 - y.double()) * F.logsigmoid(-s))).sum()
    torch.testing.assert_close(out.terms["bce"].double(), bce, rtol=1e-6, atol=0.0)
    # The gradient σ(a) − σ(b) is float32 arithmetic near 1: equal to float32 rounding.
    torch.testing.assert_close(a.grad.double(), (torch.sigmoid(s) - p) * scale, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_node_on_cuda_matches_cpu_float64(form, dtype):
    """On a GPU the node runs too (two host syncs): values and gradients against the CPU float64 node;
    half-precision inputs (as a model under autocast hands them over) are computed in float32."""
    zs, zt, es, et, y = make_batch(torch.float64, 1)
    loss = L.L2DLoss(form=form, temperature=2.0)
    ref_zs, ref_es = zs.clone().requires_grad_(True), es.clone().requires_grad_(True)
    ref = loss(ModelOutput(ref_zs, ref_es), ModelOutput(zt, et), y)
    ref.total.backward()
    dev = torch.device("cuda")
    a = zs.to(dev, dtype).requires_grad_(True)
    b = es.to(dev, dtype).requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16 if dtype == torch.float32 else dtype,
                        enabled=dtype != torch.float32):
        out = loss(ModelOutput(a, b), ModelOutput(zt.to(dev, dtype), et.to(dev, dtype)), y.to(dev))
    out.total.backward()
    assert node_name(out.total) == "FusedL2DFunctionBackward"
    assert out.total.dtype == torch.float32 and out.total.device.type == "cuda"
    # Stated tolerance: float32 arithmetic on inputs rounded to `dtype` (2^-8 relative for bf16).
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
    torch.testing.assert_close(out.total.double().cpu(), ref.total, rtol=tol, atol=tol)
    for got, want in ((a.grad, ref_zs.grad), (b.grad, ref_es.grad)):
        torch.testing.assert_close(got.double().cpu(), want, rtol=tol, atol=tol * float(want.abs().max()))

"""ReviewKD: stage matching, gradients, value of the HCL and of the fusion, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlkd.losses.registry import create_distiller
from mlkd.losses.reviewkd import ReviewKD, hcl_loss
from mlkd.models import create_model
from mlkd.outputs import ModelOutput

SMALL_HEAD = dict(embed_dim=32, num_heads=4, ffn_dim=64)


def _synthetic(n: int, shapes: list[tuple[int, int, int]], q: int = 3, grad: bool = False) -> ModelOutput:
    feats = [torch.randn(n, c, h, w, requires_grad=grad) for c, h, w in shapes]
    return ModelOutput(logits=torch.randn(n, q, requires_grad=grad), features=feats)


def _hcl_by_hand(f: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """HCL written out: full-resolution MSE plus pooled levels 4, 2, 1 (those smaller than the map)
    with weights 1/2, 1/4, 1/8 in order of use, normalised by the sum of the weights used."""
    size = min(f.shape[-2:])
    terms, weights, w = [((f - t) ** 2).mean()], [1.0], 1.0
    for level in (4, 2, 1):
        if level < size:
            w = w / 2
            pf, pt = F.adaptive_avg_pool2d(f, level), F.adaptive_avg_pool2d(t, level)
            terms.append(w * ((pf - pt) ** 2).mean())
            weights.append(w)
    return sum(terms) / sum(weights)


def test_hcl_value_on_known_maps():
    f = torch.zeros(1, 1, 8, 8)
    t = torch.ones(1, 1, 8, 8)
    # Every level differs by exactly 1 everywhere, so the weighted mean is 1.
    torch.testing.assert_close(hcl_loss(f, t), torch.tensor(1.0))
    t = torch.zeros(1, 1, 8, 8)
    t[..., :4, :4] = 4.0  # mean over the map = 1, full MSE = 4, 4x4 pool MSE = 4, 2x2 = 4, 1x1 = 1
    expected = (4 + 0.5 * 4 + 0.25 * 4 + 0.125 * 1) / (1 + 0.5 + 0.25 + 0.125)
    torch.testing.assert_close(hcl_loss(f, t), torch.tensor(expected))
    # A 2x2 map uses only the 1x1 level.
    f, t = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    expected = (F.mse_loss(f, t) + 0.5 * F.mse_loss(f.mean((2, 3)), t.mean((2, 3)))) / 1.5
    torch.testing.assert_close(hcl_loss(f, t), expected)


def test_cnn_pair_gradients_and_value():
    """tiny_cnn student (4 stages) vs resnet18 teacher (5 stages) at 64 px."""
    torch.manual_seed(0)
    student = create_model("tiny_cnn", 4, **SMALL_HEAD)
    teacher = create_model("resnet18", 4, **SMALL_HEAD).eval()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 4)).float()
    s_out, t_out = student(x), teacher(x)  # teacher with autograd on, to prove nothing reaches it
    distiller = create_distiller("reviewkd", lambda_reviewkd=2.0, mid_channels=16)
    assert isinstance(distiller, ReviewKD) and distiller.uses_features
    assert distiller.batch_mean_terms == frozenset({"reviewkd"})
    distiller.build(s_out, t_out)
    # Stages matched explicitly: the last 4 of the teacher's 5, deepest first.
    assert distiller._pairs == [(64, 512), (48, 256), (32, 128), (16, 64)]
    params = list(distiller.parameters())
    assert len(params) > 0

    for f in s_out.features:
        f.retain_grad()
    loss = distiller(s_out, t_out, y)
    fused, targets = distiller.review(s_out, t_out)
    assert [f.shape for f in fused] == [t.shape for t in t_out.features[::-1][:4]]
    term = 2.0 * sum(_hcl_by_hand(f, t) for f, t in zip(fused, targets))
    bce = F.binary_cross_entropy_with_logits(s_out.logits, y, reduction="sum")
    torch.testing.assert_close(loss.terms["reviewkd"], term)
    torch.testing.assert_close(loss.terms["bce"], bce)
    torch.testing.assert_close(loss.total, loss.terms["bce"] + loss.terms["reviewkd"])

    loss.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s_out.features)
    assert all(p.grad is None for p in teacher.parameters())


def test_builtin_cnn_pair_with_different_widths():
    torch.manual_seed(0)
    student = create_model("tiny_cnn", 3, **SMALL_HEAD)
    teacher = create_model("small_cnn", 3, **SMALL_HEAD).eval()
    x, y = torch.randn(2, 3, 56, 56), torch.randint(0, 2, (2, 3)).float()
    s_out = student(x)
    with torch.no_grad():
        t_out = teacher(x)
    distiller = ReviewKD(mid_channels=8)
    distiller.build(s_out, t_out)
    assert distiller._pairs == [(64, 160), (48, 96), (32, 48), (16, 24)]
    loss = distiller(s_out, t_out, y)
    loss.total.backward()
    assert all(p.grad is not None for p in student.backbone.parameters())


def test_transformer_cnn_mix_with_resizing_and_fusion_value():
    """A 3-stage CNN-like student vs a 4-stage Swin-like teacher whose last two maps share 7x7."""
    torch.manual_seed(0)
    student = _synthetic(2, [(8, 16, 16), (16, 8, 8), (32, 4, 4)], grad=True)
    teacher = _synthetic(2, [(12, 28, 28), (24, 14, 14), (48, 7, 7), (96, 7, 7)])
    distiller = ReviewKD(mid_channels=6).eval()  # eval: BatchNorm uses its running statistics
    distiller.build(student, teacher)
    assert distiller._pairs == [(32, 96), (16, 48), (8, 24)]
    fused, targets = distiller.review(student, teacher)
    assert [f.shape[1:] for f in fused] == [(96, 7, 7), (48, 7, 7), (24, 14, 14)]

    # The fusion written out for the two deepest stages.
    deep, mid = distiller.fusions[0], distiller.fusions[1]
    r0 = deep.reduce(student.features[2])                              # [2, 6, 4, 4]
    out0 = deep.expand(F.interpolate(r0, size=(7, 7), mode="bilinear", align_corners=False))
    x1 = mid.reduce(student.features[1])                               # [2, 6, 8, 8]
    up = F.interpolate(r0, size=(8, 8), mode="nearest")
    a = torch.sigmoid(mid.attention[0](torch.cat([x1, up], 1)))
    r1 = x1 * a[:, :1] + up * a[:, 1:]
    out1 = mid.expand(F.adaptive_avg_pool2d(r1, (7, 7)))
    torch.testing.assert_close(fused[0], out0)
    torch.testing.assert_close(fused[1], out1)

    loss = distiller(student, teacher, torch.ones(2, 3))
    loss.total.backward()
    assert all(f.grad is not None for f in student.features)
    assert all(f.grad is None for f in teacher.features)


def test_errors():
    distiller = ReviewKD()
    good = _synthetic(1, [(4, 8, 8), (8, 4, 4)])
    with pytest.raises(RuntimeError, match="build"):
        distiller(good, good, torch.zeros(1, 3))
    empty = ModelOutput(logits=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="student's ModelOutput.features is empty"):
        distiller.build(empty, good)
    with pytest.raises(ValueError, match="teacher's ModelOutput.features is empty"):
        distiller.build(good, empty)
    with pytest.raises(ValueError, match="NCHW"):
        distiller.build(ModelOutput(logits=torch.zeros(1, 3), features=[torch.zeros(1, 49, 8)]), good)
    distiller.build(good, good)
    other = _synthetic(1, [(4, 8, 8), (16, 4, 4)])
    with pytest.raises(ValueError, match="call build\\(\\) again"):
        distiller(other, good, torch.zeros(1, 3))

"""mlkd.models.fitted_head: a label-wise head fitted to a frozen teacher that has none (issue 22, part 3)."""
from __future__ import annotations

import errno
import logging

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from mlkd.engine.evaluate import ModelInput
from mlkd.losses import create_distiller
from mlkd.models import LabelWiseHead, create_model
from mlkd.models.fitted_head import FittedHeadTeacher, attach_fitted_head, fit_label_head, state_digest
from mlkd.outputs import ModelOutput

Q = 4
# Small and fast: a 16-wide head fitted for 2 epochs on 48 images (the agreement is tested on its own).
TINY = {"embed_dim": 16, "num_heads": 2, "epochs": 2, "min_steps": 0, "batch_size": 16}


def synthetic_teacher_data(n: int = 256, c: int = 8, q: int = 5, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Maps ``[n, c, 4, 4]`` and teacher logits ``[n, q]`` that are a fixed linear function of the
    maps' spatial means (std about 3.6, so that the probabilities span (0, 1))."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, c, 4, 4, generator=g)
    weight = torch.randn(q, c, generator=g)
    bias = 0.5 * torch.randn(q, generator=g)
    return maps, 4.0 * maps.mean((2, 3)) @ weight.T + bias


class StandInTeacher(nn.Module):
    """A plain classifier: a conv backbone whose final map ``[N, 8, H/4, W/4]`` is average-pooled into a
    linear classifier; returns a `ModelOutput` without label-wise embeddings, and counts its calls. Its
    weights depend on ``seed`` alone, so that the same key means the same teacher."""

    def __init__(self, q: int = Q, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(3, 8, 4, stride=4)
            self.fc = nn.Linear(8, q)
        self.calls = 0
        self.input_shapes: list[tuple[int, ...]] = []
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> ModelOutput:
        self.calls += 1
        self.input_shapes.append(tuple(x.shape))
        final = torch.relu(self.conv(x))
        return ModelOutput(logits=self.fc(final.mean((2, 3))), label_embeddings=None, features=[final])


def data(n: int = 48, size: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    targets = (torch.rand(n, Q, generator=g) < 0.5).float()
    targets[:, :2] = 1  # every image has >= 2 positives and every label >= 2 images: CD and ID both count
    return images, targets


def factory(images: Tensor, targets: Tensor):
    return lambda: DataLoader(TensorDataset(images, targets), batch_size=16)


def attach(teacher: nn.Module, tmp_path, key: dict | None = None, teacher_input: ModelInput | None = None):
    images, targets = data()
    key = {"teacher": "stand-in", "classes": list("abcd"), "fitted_head": TINY} if key is None else key
    return attach_fitted_head(teacher, factory(images, targets), teacher_input or ModelInput(), tmp_path / "heads",
                              key, torch.device("cpu"))


def test_fit_label_head_reproduces_the_teachers_probabilities():
    maps, logits = synthetic_teacher_data()
    head, report = fit_label_head(maps, logits, embed_dim=32, num_heads=2, epochs=30, lr=3e-3, seed=0,
                                  batch_size=32, holdout=0.25)
    held = report["heldout"]
    assert report["images_fit"] == 192 and report["images_heldout"] == 64
    # Measured: held-out mean |p_head - p_teacher| 0.102, decisions agree 93.8 %, mAP against the
    # teacher's decisions 0.983; a constant per-label prediction is 0.365 away.
    assert held["mean_abs_prob_diff"] < 0.16
    assert held["decision_agreement"] > 0.88
    assert held["map_vs_teacher"] > 0.95
    assert held["baseline_mean_abs_prob_diff"] > 0.3
    # The same head unfitted (same seed, so the same initialisation) is far off: the fit did the work.
    torch.manual_seed(0)
    unfitted = LabelWiseHead(8, 5, embed_dim=32, num_heads=2, ffn_dim=85).eval()
    with torch.no_grad():
        p_unfitted = torch.sigmoid(unfitted(maps.flatten(2).transpose(1, 2))[1])
    assert (p_unfitted - torch.sigmoid(logits)).abs().mean() > 2 * held["mean_abs_prob_diff"]


def test_fit_label_head_is_seeded_and_leaves_the_global_random_state_alone():
    maps, logits = synthetic_teacher_data(n=40)
    state = torch.get_rng_state()
    a, report_a = fit_label_head(maps, logits, embed_dim=16, num_heads=2, epochs=2, lr=1e-3, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b, report_b = fit_label_head(maps, logits, embed_dim=16, num_heads=2, epochs=2, lr=1e-3, seed=3)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert report_a == report_b and report_a["images_heldout"] == 4


@pytest.mark.parametrize("n, epochs", [(2, 1), (10, 10), (21, 3)])
def test_fit_label_head_runs_schedules_of_any_length(n, epochs):
    maps, logits = synthetic_teacher_data(n=n)
    _, report = fit_label_head(maps, logits, embed_dim=16, num_heads=2, epochs=epochs, lr=1e-3, seed=0,
                               batch_size=10, holdout=0.0)
    assert report["images_fit"] == n and report["heldout"] is None and report["final_loss"] > 0


def test_fit_label_head_runs_at_least_min_steps():
    maps, logits = synthetic_teacher_data(n=20)
    _, report = fit_label_head(maps, logits, embed_dim=16, num_heads=2, epochs=2, lr=1e-3, seed=0, batch_size=8,
                               holdout=0.0, min_steps=10)
    assert report["epochs"] == 4 and report["steps"] == 12  # 3 steps per epoch: whole epochs up to >= 10


def test_fit_label_head_refuses_mismatched_inputs():
    maps, logits = synthetic_teacher_data(n=10)
    with pytest.raises(ValueError, match="same N"):
        fit_label_head(maps, logits[:5], embed_dim=16, num_heads=2, epochs=1, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        fit_label_head(maps[:1], logits[:1], embed_dim=16, num_heads=2, epochs=1, lr=1e-3, seed=0)


def test_attached_teacher_is_frozen_and_keeps_the_teachers_logits(tmp_path):
    teacher = StandInTeacher()
    fitted = attach(teacher, tmp_path)
    assert isinstance(fitted, FittedHeadTeacher)
    assert not fitted.training and not fitted.train().training  # train() cannot switch dropout on
    assert not any(p.requires_grad for p in fitted.parameters())
    images, _ = data(n=6, seed=1)
    out = fitted(images)
    assert out.label_embeddings.shape == (6, Q, 16)
    assert torch.equal(out.logits, teacher(images).logits)
    assert out.features[-1].shape == (6, 8, 4, 4)
    report = fitted.fitted_head_report
    assert report["reused"] is False and report["cache_written"] is True and report["epochs"] == 2
    assert report["sources"]["label_embeddings"] == "fitted head" and report["sources"]["logits"] == "teacher"
    assert report["images_seen"] == 48 and report["images_fit"] + report["images_heldout"] == 48
    assert report["heldout"]["mean_abs_prob_diff"] >= 0 and report["head"]["embed_dim"] == 16


def test_the_teachers_input_transform_is_applied_before_it(tmp_path):
    teacher = StandInTeacher()
    attach(teacher, tmp_path, teacher_input=ModelInput(size=8))
    assert teacher.input_shapes and all(shape[-2:] == (8, 8) for shape in teacher.input_shapes)


def test_cache_is_reused_without_running_the_teacher(tmp_path):
    first = attach(StandInTeacher(), tmp_path)
    path = first.fitted_head_report["path"]
    teacher = StandInTeacher()
    second = attach(teacher, tmp_path)
    assert teacher.calls == 0
    report = second.fitted_head_report
    assert report["reused"] is True and report["path"] == path
    assert report["heldout"] == first.fitted_head_report["heldout"]
    images, _ = data(n=5, seed=2)
    assert torch.equal(second(images).label_embeddings, first(images).label_embeddings)


def test_a_changed_key_refits(tmp_path):
    first = attach(StandInTeacher(), tmp_path)
    for key in ({"teacher": "stand-in", "classes": list("abdc"), "fitted_head": TINY},
                {"teacher": "stand-in", "classes": list("abcd"), "fitted_head": {**TINY, "epochs": 3}}):
        teacher = StandInTeacher()
        refit = attach(teacher, tmp_path, key)
        assert teacher.calls > 0 and refit.fitted_head_report["reused"] is False
        assert refit.fitted_head_report["path"] != first.fitted_head_report["path"]


def test_a_corrupt_cache_file_refits_with_a_warning(tmp_path, caplog):
    path = attach(StandInTeacher(), tmp_path).fitted_head_report["path"]
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 not a torch file")
    teacher = StandInTeacher()
    with caplog.at_level(logging.WARNING, logger="mlkd"):
        refit = attach(teacher, tmp_path)
    assert "cannot be used" in caplog.text and path in caplog.text
    assert teacher.calls > 0 and refit.fitted_head_report["reused"] is False
    assert attach(StandInTeacher(), tmp_path).fitted_head_report["reused"] is True  # rewritten whole


def test_a_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch, caplog):
    def full_disk(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    teacher = StandInTeacher()
    with caplog.at_level(logging.WARNING, logger="mlkd"):
        fitted = attach(teacher, tmp_path)
    report = fitted.fitted_head_report
    assert report["cache_written"] is False and "could not write" in caplog.text
    assert list((tmp_path / "heads").iterdir()) == []  # neither the target nor a temporary file
    assert fitted(data(n=2)[0]).label_embeddings.shape == (2, Q, 16)  # the fit itself is kept
    monkeypatch.undo()
    teacher = StandInTeacher()
    assert attach(teacher, tmp_path).fitted_head_report["reused"] is False and teacher.calls > 0


def test_unknown_settings_and_teachers_without_maps_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown fitted-head settings"):
        attach(StandInTeacher(), tmp_path, {"teacher": "x", "fitted_head": {"epoch": 3}})

    class LogitsOnly(StandInTeacher):
        def forward(self, x: Tensor) -> ModelOutput:
            return ModelOutput(logits=super().forward(x).logits)

    with pytest.raises(ValueError, match="no feature maps"):
        attach(LogitsOnly(), tmp_path)


def test_maps_over_the_memory_bound_are_subsampled(tmp_path):
    teacher = StandInTeacher()
    per_image_gib = 8 * 4 * 4 * 4 / 1024**3
    key = {"teacher": "stand-in", "fitted_head": {**TINY, "max_map_gib": 20 * per_image_gib}}
    report = attach(teacher, tmp_path, key).fitted_head_report
    assert report["images_seen"] == 48
    assert report["images_fit"] + report["images_heldout"] == 20


def test_state_digest_follows_the_weights():
    a, b = StandInTeacher(seed=0), StandInTeacher(seed=1)
    assert state_digest(a) == state_digest(a) and state_digest(a) != state_digest(b)
    b.load_state_dict(a.state_dict())
    assert state_digest(a) == state_digest(b)


def test_l2d_distils_from_the_fitted_head(tmp_path):
    fitted = attach(StandInTeacher(), tmp_path)
    torch.manual_seed(0)
    student = create_model("tiny_cnn", Q, img_size=16)
    images, targets = data(n=8, seed=3)
    s_out = student(images)
    distiller = create_distiller("l2d")
    t_out = fitted(images)
    distiller.build(s_out, t_out)
    loss = distiller(s_out, t_out, targets)
    assert torch.isfinite(loss.total)
    assert float(loss.terms["cd"].detach()) > 0 and float(loss.terms["id"].detach()) > 0  # embeddings read
    loss.total.backward()
    assert all(p.grad is None for p in fitted.parameters())  # nothing flows into the teacher
    assert any(p.grad is not None for p in student.parameters())


def test_works_with_an_external_timm_teacher(tmp_path):
    import timm

    from mlkd.models.external import ExternalTeacher

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=6, pretrained=False).eval()
    teacher = ExternalTeacher(model, ["z", "d", "c", "y", "b", "a"], list("abcd")).requires_grad_(False).eval()
    images, targets = data(n=40, size=32)
    fitted = attach_fitted_head(teacher, factory(images, targets), ModelInput(), tmp_path,
                                {"teacher": state_digest(teacher), "fitted_head": TINY}, torch.device("cpu"))
    out = fitted(images[:3])
    with torch.no_grad():
        expected = model(images[:3])[:, [5, 4, 2, 1]]  # a, b, c, d in the teacher's order
    torch.testing.assert_close(out.logits, expected)
    assert out.label_embeddings.shape == (3, 4, 16)
    assert fitted.fitted_head_report["head"]["in_features"] == teacher.final_channels

"""Training images read at the teacher's side (issue 19): the teacher sees its own resolution, not the student's
images resized up, and the student a resized copy of the same image; validation and test images stay at the
student's side; the side is resolved from the teacher, recorded in config.yaml, can be given, and is part of the
teacher cache's and the fitted head's keys."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import mlkd
from mlkd.config import make_config
from mlkd.data import build_transforms, create_dataset
from mlkd.engine import trainer
from mlkd.engine.checkpoint import save_checkpoint
from mlkd.engine.preflight import preflight
from mlkd.engine.teacher import resolve_read_size
from mlkd.models import create_model
from synthetic import write_csv_quadrants
from tiny_runs import HEAD

CLASSES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def csv_root(tmp_path_factory):
    return write_csv_quadrants(tmp_path_factory.mktemp("quadrants"), CLASSES, size=48)


@pytest.fixture(scope="module")
def teacher_at_32(tmp_path_factory):
    """An mlkd checkpoint that records a 32 px input."""
    torch.manual_seed(0)
    model = create_model("tiny_cnn", len(CLASSES), **HEAD).eval()
    return save_checkpoint({"model": model.state_dict(), "model_args": model.model_args, "classes": CLASSES,
                            "config": {"img_size": 32}}, tmp_path_factory.mktemp("teacher") / "best.pt")


class Recorder(nn.Module):
    """A teacher that keeps every batch it is given."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, len(CLASSES), 3)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.conv(x).mean(dim=(2, 3))


def distil_recording(root, out, monkeypatch) -> tuple[list[torch.Tensor], Recorder]:
    """A one-epoch KD run from a 32 px `Recorder` teacher to a 16 px student on ``root``: the batches the
    student's step got, and the teacher (its ``inputs``)."""
    student_inputs = []
    forward = trainer.TrainStep.forward

    def recording(self, images, *args, **kwargs):
        student_inputs.append(images.detach().clone())
        return forward(self, images, *args, **kwargs)

    monkeypatch.setattr(trainer.TrainStep, "forward", recording)
    teacher = Recorder()
    mlkd.distill(teacher=teacher, teacher_classes=CLASSES, teacher_img_size=32, teacher_mean=[0.0] * 3,
                 teacher_std=[1.0] * 3, method="kd", dataset="csv", data_root=str(root), model="tiny_cnn",
                 model_options=HEAD, img_size=16, epochs=1, batch_size=8, lr=1e-3, augment=False, workers=0,
                 output=str(out), quiet=True)
    return student_inputs, teacher


def test_the_teacher_sees_images_read_at_its_side_and_the_student_a_resized_copy(csv_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    student_inputs, teacher = distil_recording(csv_root, out, monkeypatch)
    steps = 5  # 40 training images in batches of 8; the calls before them time the run (random images)
    student_inputs = student_inputs[-steps:]
    seen = torch.cat(teacher.inputs[-steps:])
    assert seen.shape[-2:] == (32, 32)
    # Every image the teacher saw is a training image read at 32 px, exactly; none is a 16 px one resized up.
    at_32 = torch.stack([x for x, _ in create_dataset("csv", csv_root, "train", transform=build_transforms(32, False))])
    at_16 = torch.stack([x for x, _ in create_dataset("csv", csv_root, "train", transform=build_transforms(16, False))])
    upscaled = F.interpolate(at_16, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert all(any(torch.equal(x, r) for r in at_32) for x in seen)
    assert not any(torch.allclose(x, u, atol=1e-3) for x in seen[:8] for u in upscaled)
    # The student's batch of each step is the teacher's batch of that step, resized to 16 px.
    for student_batch, teacher_batch in zip(student_inputs, teacher.inputs[-steps:]):
        assert student_batch.shape[-2:] == (16, 16)
        expected = F.interpolate(teacher_batch, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
        assert torch.equal(student_batch, expected)
    assert yaml.safe_load((out / "config.yaml").read_text())["read_size"] == 32


def test_the_read_size_is_resolved_from_the_teacher(csv_root, teacher_at_32):
    base = make_config(dataset="csv", data_root=str(csv_root), model="tiny_cnn", method="kd",
                       teacher=str(teacher_at_32), img_size=16)
    assert resolve_read_size(base).read_size == 32
    assert resolve_read_size(dataclasses.replace(base, img_size=32)).read_size is None  # same side: nothing to do
    assert resolve_read_size(dataclasses.replace(base, img_size=48)).read_size is None  # the teacher is smaller
    assert resolve_read_size(dataclasses.replace(base, read_size=24)).read_size == 24  # given: kept
    external = dataclasses.replace(base, teacher=None, teacher_model="test_resnet", teacher_weights="w.pt",
                                   teacher_img_size=40, teacher_mean=[0.5] * 3, teacher_std=[0.5] * 3)
    assert resolve_read_size(external).read_size == 40
    # Pre-flight builds the sets with it: training images at the teacher's side, the others at the student's.
    checked = preflight(base)
    train, val, test = checked.sets
    assert checked.config.read_size == 32
    assert train[0][0].shape == (3, 32, 32) and val[0][0].shape == (3, 16, 16) and test[0][0].shape == (3, 16, 16)


def test_a_run_without_teacher_reads_at_its_own_side_unless_told(csv_root, teacher_at_32):
    vanilla = make_config(dataset="csv", data_root=str(csv_root), model="tiny_cnn", img_size=16,
                          teacher=str(teacher_at_32))  # a teacher the method does not use changes nothing
    checked = preflight(vanilla)
    assert checked.config.read_size is None and checked.sets.train[0][0].shape == (3, 16, 16)
    # Given (the control of a comparison: a vanilla student trained on the distilled students' images).
    checked = preflight(dataclasses.replace(vanilla, read_size=32))
    assert checked.sets.train[0][0].shape == (3, 32, 32) and checked.sets.val[0][0].shape == (3, 16, 16)


def test_a_bad_read_size_is_refused_with_its_name():
    with pytest.raises(ValueError, match=r"read_size must be >= 8"):
        make_config(model="tiny_cnn", read_size=4)


def test_the_read_size_is_part_of_the_teacher_cache_key(csv_root, teacher_at_32):
    cfg = make_config(dataset="csv", data_root=str(csv_root), model="tiny_cnn", method="kd",
                      teacher=str(teacher_at_32), img_size=16, read_size=32)
    assert trainer._cache_key(cfg, 8) != trainer._cache_key(dataclasses.replace(cfg, read_size=None), 8)


@pytest.fixture(scope="module")
def csv_root_16(tmp_path_factory):
    return write_csv_quadrants(tmp_path_factory.mktemp("quadrants16"), CLASSES, size=16)


def test_images_are_never_read_above_their_own_side(csv_root, csv_root_16, teacher_at_32, tmp_path):
    # 16 px images, a 16 px student, a 32 px teacher: reading at 32 would only upsample them, and the student's
    # copy (up, then down) would be a blurred version of the images it is evaluated on (mosaics lost 1-2 points).
    base = make_config(dataset="csv", data_root=str(csv_root_16), model="tiny_cnn", method="kd",
                       teacher=str(teacher_at_32), img_size=16)
    assert resolve_read_size(base).read_size is None
    # Between the student's and the teacher's side: read at the images' own side.
    root_24 = write_csv_quadrants(tmp_path / "q24", CLASSES, size=24)
    assert resolve_read_size(dataclasses.replace(base, data_root=str(root_24))).read_size == 24
    assert resolve_read_size(dataclasses.replace(base, data_root=str(csv_root))).read_size == 32  # 48 px images
    assert resolve_read_size(dataclasses.replace(base, read_size=32)).read_size == 32  # given: kept


def test_the_student_trains_on_the_images_it_is_evaluated_on_when_they_are_small(csv_root_16, tmp_path, monkeypatch):
    out = tmp_path / "run"
    student_inputs, teacher = distil_recording(csv_root_16, out, monkeypatch)
    steps = 5
    at_16 = torch.stack([x for x, _ in create_dataset("csv", csv_root_16, "train", transform=build_transforms(16, False))])
    # Every student batch holds the training images exactly as read at 16 px (what evaluation reads), unblurred.
    for batch in student_inputs[-steps:]:
        assert all(any(torch.equal(x, r) for r in at_16) for x in batch)
    # The teacher gets that batch resized up to its 32 px on the device.
    for student_batch, teacher_batch in zip(student_inputs[-steps:], teacher.inputs[-steps:]):
        expected = F.interpolate(student_batch, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        assert torch.allclose(teacher_batch, expected, atol=1e-6)
    assert yaml.safe_load((out / "config.yaml").read_text())["read_size"] is None


def test_training_image_side_is_the_median_short_side(tmp_path):
    from PIL import Image

    from mlkd.data.splits import training_image_side

    root = write_csv_quadrants(tmp_path / "mixed", CLASSES, n_train=40, size=48)
    cfg = make_config(dataset="csv", data_root=str(root), model="tiny_cnn")
    assert training_image_side(cfg) == 48
    # 30 of the 40 training images made 20 x 36: most images now have a 20 px short side.
    for i in range(30):
        path = root / "img" / f"train{i}.png"
        Image.open(path).resize((36, 20)).save(path)
    assert training_image_side(cfg) == 20

"""The Python API refuses what the command line refuses, with messages that name the argument and the fix.

Issue 21: M1 (``mlkd.distill`` without ``method=`` used to train ``vanilla`` and ignore the teacher),
M2 and L6 (loss weights checked in every distiller's constructor; wrong argument types, bare tensors,
meta and mixed devices named), and the carried note on ``make_config(cfg, lr=None)``. No test here
trains: ``fit`` is replaced where a run would start.
"""
from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import mlkd
import mlkd.api
from mlkd import ModelOutput, RunConfig, create_distiller, list_distillers
from mlkd.cli import main
from mlkd.config import DISTILL_METHOD, make_config
from mlkd.losses._checks import check_devices


@pytest.fixture
def started(monkeypatch):
    """Replace the training run by a recorder of the configuration it would have started with."""
    seen = []

    def fit(cfg):
        seen.append(cfg)
        return SimpleNamespace(metrics={}, output=Path(cfg.output))

    monkeypatch.setattr(mlkd.api, "fit", fit)
    return seen


# ---- M1: one default distiller for the CLI and the API -------------------------------------------------

def test_distill_without_method_uses_the_cli_default(started, tmp_path, monkeypatch):
    assert DISTILL_METHOD == "l2d"
    mlkd.distill(teacher=tmp_path / "t.pt", output=str(tmp_path / "api"))
    assert started[-1].method == DISTILL_METHOD and started[-1].teacher == str(tmp_path / "t.pt")
    # The command line reaches the same default through the same function.
    monkeypatch.chdir(tmp_path)
    assert main(["distill", "--teacher", "t.pt", "--output", "cli"]) == 0
    assert started[-1].method == DISTILL_METHOD
    # A configuration that names a method keeps it, in every form; so does an explicit method=.
    preset = tmp_path / "kd.yaml"
    preset.write_text("method: kd\n")
    for config in ({"method": "kd"}, str(preset), RunConfig(method="kd")):
        mlkd.distill(teacher="t.pt", config=config)
        assert started[-1].method == "kd"
    mlkd.distill(teacher="t.pt", method="pkt", config={"method": "kd"})
    assert started[-1].method == "pkt"
    # A dict or YAML file without a method gets the default too.
    (tmp_path / "plain.yaml").write_text("epochs: 3\n")
    for config in ({"epochs": 3}, str(tmp_path / "plain.yaml")):
        mlkd.distill(teacher="t.pt", config=config)
        assert started[-1].method == DISTILL_METHOD


def test_distill_warns_when_vanilla_ignores_the_teacher(started, caplog):
    with caplog.at_level(logging.WARNING, logger="mlkd"):
        mlkd.distill(teacher="t.pt", config=RunConfig())  # a RunConfig's method (vanilla) stands
    assert started[-1].method == "vanilla"
    assert "'vanilla' trains without the teacher t.pt" in caplog.text and "method=" in caplog.text


# ---- M2 and L6: every loss weight of every distiller is checked when it is built ---------------------

def _weights():
    """(distiller, weight argument) for every bce_weight and lambda_* of every registered distiller."""
    pairs = []
    for name in list_distillers():
        params = inspect.signature(type(create_distiller(name))).parameters
        pairs += [(name, p) for p in params if p == "bce_weight" or p.startswith("lambda_")]
    return pairs


WEIGHTS = _weights()


def test_every_distiller_has_weights_to_check():
    names = {name for name, _ in WEIGHTS}
    assert names == set(list_distillers())  # each takes bce_weight at least
    assert ("l2d", "lambda_cd") in WEIGHTS and ("reviewkd", "lambda_reviewkd") in WEIGHTS


@pytest.mark.parametrize("name, weight", WEIGHTS)
def test_bad_loss_weights_are_refused_by_the_constructor(name, weight):
    for value in (-5, -1e-9, math.nan, math.inf, "nan", "heavy", True):
        with pytest.raises(ValueError, match=rf"^{weight} is a loss weight and must be a finite number >= 0 .*got "
                                             rf"{value!r}$"):
            create_distiller(name, **{weight: value})


@pytest.mark.parametrize("name, weight", WEIGHTS)
def test_zero_and_numeric_strings_are_valid_weights(name, weight):
    assert getattr(create_distiller(name, **{weight: 0}), weight) == 0.0
    assert getattr(create_distiller(name, **{weight: "1e-3"}), weight) == 0.001  # YAML reads 1e-3 as a string


def test_l2d_loss_refuses_what_the_cli_refuses():
    for value in (math.nan, -5):
        with pytest.raises(ValueError, match="lambda_cd is a loss weight"):
            mlkd.L2DLoss(lambda_cd=value)
    # The paper's weights stay exactly the reference floats.
    loss = create_distiller("l2d_paper")
    assert (loss.lambda_mld, loss.lambda_led, loss.lambda_cd, loss.lambda_id, loss.bce_weight) == (10.0, 1.0, 100.0,
                                                                                                   1000.0, 1.0)


# ---- L6: argument types -------------------------------------------------------------------------------

@pytest.mark.parametrize("job", [mlkd.train, mlkd.distill])
@pytest.mark.parametrize("config", [123, ["epochs", 2], 2.5])
def test_train_and_distill_name_a_config_of_the_wrong_type(started, job, config):
    with pytest.raises(TypeError, match=r"config=\.\.\.\) must be a RunConfig, a dict of its fields or the path of "
                                        rf"a YAML file \(str or Path\), got {type(config).__name__}"):
        job(config=config)
    assert not started


@pytest.mark.parametrize("job", [mlkd.evaluate, mlkd.export])
def test_evaluate_and_export_name_a_checkpoint_of_the_wrong_type(job):
    for value in (None, 3, ["best.pt"]):
        with pytest.raises(TypeError, match=rf"checkpoint must be the path of a checkpoint file \(str or Path\).*"
                                            rf"got {type(value).__name__}"):
            job(value)
    with pytest.raises(ValueError, match="checkpoint is an empty path"):
        job("")


def _outputs(device=None):
    n, q, d = 4, 3, 8
    features = [torch.randn(n, 6, 4, 4, device=device), torch.randn(n, 8, 2, 2, device=device)]
    return ModelOutput(torch.randn(n, q, device=device), torch.randn(n, q, d, device=device), features)


def _built(name, student, teacher):
    loss = create_distiller(name)
    loss.build(student, teacher)
    return loss


@pytest.mark.parametrize("name", list_distillers())
def test_a_bare_tensor_instead_of_a_model_output_is_named(name):
    student, teacher, targets = _outputs(), _outputs(), torch.randint(0, 2, (4, 3))
    loss = _built(name, student, teacher)
    with pytest.raises(TypeError, match=r"^student must be the model's ModelOutput, got Tensor; pass the model's "
                                        r"ModelOutput, e\.g\. ModelOutput\(logits=\.\.\.\)"):
        loss(student.logits, teacher, targets)
    with pytest.raises(TypeError, match=r"^teacher must be the model's ModelOutput or None, got Tensor"):
        loss(student, teacher.logits, targets)


@pytest.mark.parametrize("name", list_distillers())
def test_meta_tensors_are_named(name):
    student, teacher, targets = _outputs(), _outputs(), torch.randint(0, 2, (4, 3))
    loss = _built(name, student, teacher)
    with pytest.raises(ValueError, match=r"^student\.logits.* on the meta device .*materialised"):
        loss(_outputs("meta"), teacher, targets)
    with pytest.raises(ValueError, match=r"^targets is on the meta device"):
        loss(student, teacher, targets.to("meta"))


class _OnGPU(torch.Tensor):
    """A CPU tensor that reports cuda:0, so the device check can be tested without a GPU."""

    device = property(lambda self: torch.device("cuda", 0))


@pytest.mark.parametrize("name", [n for n in list_distillers() if n != "vanilla"])
def test_inputs_on_different_devices_are_named(name):
    student, teacher, targets = _outputs(), _outputs(), torch.randint(0, 2, (4, 3))
    loss = _built(name, student, teacher)
    moved = ModelOutput(teacher.logits.as_subclass(_OnGPU), teacher.label_embeddings.as_subclass(_OnGPU),
                        [f.as_subclass(_OnGPU) for f in teacher.features])
    with pytest.raises(ValueError, match=r"^the loss's inputs are on different devices: student\.logits on cpu, .*"
                                         r"teacher\.\S+ on cuda:0.*targets on cpu; move both models and the targets"):
        loss(student, moved, targets)


def test_the_device_check_skips_what_a_distiller_does_not_read():
    # vanilla never reads the teacher, and kd reads logits only.
    student, teacher, targets = _outputs(), _outputs(), torch.randint(0, 2, (4, 3))
    elsewhere = ModelOutput(teacher.logits, teacher.label_embeddings.as_subclass(_OnGPU),
                            [f.as_subclass(_OnGPU) for f in teacher.features])
    create_distiller("kd")(student, elsewhere, targets)
    create_distiller("vanilla")(student, ModelOutput(teacher.logits.as_subclass(_OnGPU)), targets)
    with pytest.raises(ValueError, match="different devices: a on cpu, b on cuda:0"):
        check_devices([("a", torch.zeros(1)), ("b", torch.zeros(1).as_subclass(_OnGPU)), ("c", None)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_real_mixed_devices_are_named_on_a_gpu():
    student, teacher = _outputs(), _outputs("cuda")
    with pytest.raises(ValueError, match="student.logits on cpu, student.label_embeddings on cpu, teacher.logits on "
                                         "cuda:0"):
        create_distiller("l2d")(student, teacher, torch.randint(0, 2, (4, 3)))


# ---- carried note: make_config(cfg, lr=None) ----------------------------------------------------------

def test_an_explicit_none_unsets_a_field(tmp_path, started):
    preset = tmp_path / "preset.yaml"
    preset.write_text("lr: 1.0e-4\nteacher: t.pt\nepochs: 3\n")
    cfg = make_config(preset, lr=None)
    assert cfg.lr is None and cfg.epochs == 3  # the default rule chooses the rate; the rest stays
    assert make_config(cfg, teacher=None).teacher is None
    assert make_config(preset).lr == 1e-4  # leaving it out keeps the preset's
    mlkd.train(config=str(preset), lr=None, teacher=None)
    assert started[-1].lr is None
    with pytest.raises(ValueError, match=r"epochs=None: epochs cannot be unset; leave it out to keep the "
                                         r"configuration's value \(3\)"):
        make_config(preset, epochs=None)

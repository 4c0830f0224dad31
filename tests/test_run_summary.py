"""Model cost counts, thread choice, the run summary, the learning-curve decisions and the CLI's help and
metrics printout (issue 12 items 1, 5, 6, 7; issue 9's cost reporting and long-run warning)."""
from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mlkd
from mlkd.cli import build_parser, format_metrics
from mlkd.config import RunConfig, make_config
from mlkd.engine import summary as summary_module
from mlkd.engine.logging import curve_plan, plot_learning_curves
from mlkd.engine.summary import RunEstimate, StepTimes, duration, estimate_run, long_run_advice
from mlkd.engine.threads import auto_threads, busy_cores, set_threads
from mlkd.models import create_model
from mlkd.models.cost import count_macs, count_parameters, cost_lines, human, model_cost, run_costs
from synthetic import write_fashion_like
from tiny_runs import tiny_run

# ---------------------------------------------------------------------------------------------- costs


def test_macs_of_a_conv_and_a_linear_layer_match_the_hand_count():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    # Conv: every output value (8·8 positions × 4 channels) takes 3·3·3 multiply-adds; linear: 256 × 5.
    assert count_macs(model, torch.zeros(1, 3, 8, 8)) == 8 * 8 * 4 * 3 * 3 * 3 + 256 * 5
    assert count_parameters(model) == (4 * 3 * 3 * 3 + 4) + (256 * 5 + 5)


def test_attention_on_the_cpu_is_counted():
    # torch's counter knows only the GPU attention kernels; the CPU one must count as Q·Kᵀ plus A·V.
    h, q, length, dh = 2, 5, 7, 4
    args = (torch.rand(1, h, q, dh), torch.rand(1, h, length, dh), torch.rand(1, h, length, dh))
    assert count_macs(F.scaled_dot_product_attention, *args) == 2 * h * q * length * dh


def _conv_linear_macs(module: nn.Module, fn, x: torch.Tensor) -> int:
    """Reference: multiply-adds of every Conv2d and Linear module of ``module`` while ``fn(x)`` runs, from
    forward hooks on the output shapes."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        fn(x)
    for h in handles:
        h.remove()
    return total


def test_model_cost_splits_backbone_and_head():
    q, d, f = 6, 16, 24
    model = create_model("tiny_cnn", q, embed_dim=d, num_heads=2, ffn_dim=f).train()
    cost = model_cost(model, 64)
    assert model.training  # left as it was
    assert cost.backbone_params == count_parameters(model.backbone)
    assert cost.backbone_params + cost.head_params == count_parameters(model)
    backbone = model.backbone.eval()
    assert cost.backbone_macs == _conv_linear_macs(backbone, backbone.forward_features, torch.zeros(1, 3, 64, 64))
    # The head per image: token projection L·C·d, query/output projections 2·q·d², key/value 2·L·d²,
    # attention 2·q·L·d, feed-forward 2·q·d·f, group read-out q·d (L = (64/16)² tokens).
    c, length = model.backbone.num_features, (64 // 16) ** 2
    head = length * c * d + 2 * q * d * d + 2 * length * d * d + 2 * q * length * d + 2 * q * d * f + q * d
    assert cost.head_macs == head


def test_cost_lines_and_run_costs():
    student = {"img_size": 56, "backbone_params": 47_104, "head_params": 1_000, "backbone_macs": 12_300_000,
               "head_macs": 2_000}
    teacher = {**student, "img_size": 112, "backbone_params": 3_400_000}
    assert human(47_104) == "47.1 k" and human(12_300_000) == "12.3 M" and human(999) == "999"
    lines = cost_lines({"student": student, "teacher": teacher})
    assert lines[0].startswith("teacher: backbone 3.4 M params") and "112 px" in lines[0]
    assert lines[1].startswith("student: backbone 47.1 k params, 12.3 M MACs; head 1 k params, 2 k MACs")
    runs = {"vanilla": [{"cost": {"student": student, "teacher": None}}],
            "kd": [{"cost": {"student": student, "teacher": teacher}}]}
    assert run_costs(runs)["teacher"] == teacher  # a run with a teacher describes the comparison
    assert run_costs({"vanilla": [{}]}) is None


# -------------------------------------------------------------------------------------------- threads


def test_auto_threads_rule():
    assert auto_threads(2, 2, 0.0) == 2
    assert auto_threads(2, 2, 0.4) == 2  # background noise keeps the default
    assert auto_threads(2, 2, 1.0) == 1  # one core taken by another process: one thread
    assert auto_threads(2, 2, 2.0) == 1  # never below one
    assert auto_threads(4, 8, 3.0) == 4  # never above torch's default
    assert auto_threads(2, 2, None) == 2  # unknown load (no /proc): the default


def test_set_threads_fixed_and_invalid():
    before = torch.get_num_threads()
    try:
        choice = set_threads(1)
        assert choice.threads == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads must be >= 1"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        make_config(threads=0)


def test_automatic_threads_are_chosen_once_per_process(monkeypatch):
    from mlkd.engine import threads as threads_module

    before = torch.get_num_threads()
    monkeypatch.setattr(threads_module, "_process", threads_module._ProcessThreads())
    load = iter([0.0, 2.0, 2.0])
    monkeypatch.setattr(threads_module, "busy_cores", lambda *a: next(load))
    try:
        torch.set_num_threads(2)
        first = set_threads(None)  # idle: torch's default
        assert first.threads == 2
        # Later runs of the process keep it (compared runs use one count), though the machine got busy:
        assert set_threads(None).threads == 2 and torch.get_num_threads() == 2
        assert threads_module.choose_threads(None).threads == 1  # a fresh decision would differ
        assert set_threads(1).threads == 1 and set_threads(None).threads == 2  # a fixed count does not stick
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_busy_cores_sees_a_cpu_bound_process():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(0.3) >= 0.5
    finally:
        hog.kill()
        hog.wait()


# ------------------------------------------------------------------------------------ run summary


def test_estimate_run_and_duration():
    times = StepTimes(teacher=0.01, train=0.02, eval=0.005, images=16)
    est = estimate_run(times, train_images=1000, val_images=100, test_images=200, epochs=3, cached_teacher=False)
    assert est.first_epoch == pytest.approx(1000 * 0.03 + 100 * 0.005)
    assert est.later_epoch == pytest.approx(est.first_epoch)
    assert est.total == pytest.approx(3 * est.first_epoch + 200 * 0.005)
    cached = estimate_run(times, 1000, 100, 200, 3, cached_teacher=True)
    assert cached.later_epoch == pytest.approx(1000 * 0.02 + 100 * 0.005)
    assert cached.total == pytest.approx(cached.first_epoch + 2 * cached.later_epoch + 1.0)
    assert duration(3725) == "1 h 2 min" and duration(95) == "1 min 35 s" and duration(4.2) == "4.2 s"


def test_long_run_advice_names_smaller_settings():
    # The paper's protocol on a CPU: ResNet-34 from scratch at 224 px, ~5 min per epoch, 80 epochs.
    cfg = RunConfig(model="resnet34", img_size=224, epochs=80)
    tips = long_run_advice(cfg, RunEstimate(300.0, 300.0, 80 * 300.0), 80)
    assert any("--model small_cnn" in t and "--img-size 64" in t for t in tips)
    assert any(t.startswith("--epochs 24 ") for t in tips)  # 2 h / 5 min
    small = long_run_advice(RunConfig(model="small_cnn", img_size=64), RunEstimate(9000.0, 9000.0, 9e5), 100)
    assert not any("--model" in t or "--img-size" in t or "--epochs" in t for t in small)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fashion_like(tmp_path_factory.mktemp("fashion"), n_train=120, n_test=40)


def _config(data_root, output, **overrides):
    # Not quiet: the run summary is what these tests read.
    return tiny_run(data_root, output, mosaics=192, **{"epochs": 1, "quiet": False, "threads": 1, **overrides})


def test_runs_print_a_summary_and_record_costs(data_root, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="mlkd")
    teacher = mlkd.train(**_config(data_root, tmp_path / "teacher"))
    text = caplog.text
    for part in ("run summary", "fashion_mosaic", "train /", "tiny_cnn at 32 px, from scratch", "backbone",
                 "MACs", "vanilla: BCE only", "1 CPU thread(s) (--threads)", "1 epochs of", "estimate  ≈"):
        assert part in text, part
    cost = json.loads((tmp_path / "teacher" / "metrics.json").read_text())["cost"]
    assert cost["teacher"] is None and cost["student"]["img_size"] == 32
    assert cost["student"]["backbone_params"] == teacher.metrics["cost"]["student"]["backbone_params"] > 0

    # A distillation run records the teacher's cost too; a very long estimate on the CPU warns loudly.
    monkeypatch.setattr(summary_module, "time_steps", lambda *a, **k: StepTimes(0.0, 200.0, 1.0, 16))
    caplog.clear()
    run = mlkd.distill(teacher=tmp_path / "teacher" / "best.pt", method="kd",
                       **_config(data_root, tmp_path / "student", model_options={"embed_dim": 8, "num_heads": 2,
                                                                                 "ffn_dim": 8}))
    assert run.metrics["cost"]["teacher"]["head_params"] > run.metrics["cost"]["student"]["head_params"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("estimated to take" in w and "--epochs" not in w for w in warnings), warnings
    assert "teacher   " in caplog.text and "frozen" in caplog.text


def test_the_summary_does_not_change_what_the_run_computes(data_root, tmp_path, monkeypatch):
    # Costs and timed steps run on copies with the random state restored: a run without them is identical.
    from mlkd.engine import trainer as trainer_module
    from mlkd.engine.checkpoint import load_checkpoint

    config = _config(data_root, tmp_path / "with", augment=True, quiet=True,
                     model_options={"embed_dim": 8, "num_heads": 2, "ffn_dim": 8, "dropout": 0.3})
    mlkd.train(**config)
    monkeypatch.setattr(trainer_module, "summarize_run", lambda *a, **k: {})
    mlkd.train(**{**config, "output": str(tmp_path / "without")})
    a = load_checkpoint(tmp_path / "with" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "without" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------- learning curve


def _records(**terms):
    return [{"epoch": e, **{f"train_{k}": v[e - 1] for k, v in terms.items()}, "val_mAP": 0.5} for e in (1, 2)]


def test_curve_plan_names_the_method_from_its_nonzero_terms():
    full = curve_plan(_records(bce=[3, 2], mld=[1, 1], cd=[2, 1], id=[1, 0.5]), "l2d")
    assert full.method == "L2D (MLD+CD+ID)" and full.always_zero == []
    no_cd = curve_plan(_records(bce=[3, 2], mld=[1, 1], cd=[0.0, 0.0], id=[1, 0.5]), "l2d")
    assert no_cd.method == "MLD+ID"
    assert no_cd.drawn == ["train_bce", "train_mld", "train_id"] and no_cd.always_zero == ["cd"]
    assert curve_plan(_records(bce=[3, 2], mld=[1, 1], cd=[1, 1], id=[0, 0]), "l2d").method == "MLD+CD"
    assert curve_plan(_records(bce=[3, 2], cd=[1, 1], id=[1, 1]), "led").method == "LED (CD+ID)"
    assert curve_plan(_records(bce=[3, 2]), "vanilla").method == "vanilla (BCE only)"
    assert curve_plan(_records(bce=[3, 2], kd=[1, 1]), "kd").method == "KD"
    rkd = curve_plan(_records(bce=[3, 2], rkd_distance=[1, 1], rkd_angle=[0, 0]), "rkd")
    assert rkd.method == "RKD without rkd_angle (weight 0)"


def test_learning_curve_png_with_an_always_zero_term(tmp_path):
    path = tmp_path / "curve.png"
    plot_learning_curves(_records(bce=[3, 2], mld=[1, 1], cd=[0, 0], id=[1, 0.5]), path, "tiny_cnn on x", "l2d")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------- CLI


def _help(command: str) -> str:
    return build_parser()._subparsers._group_actions[0].choices[command].format_help()


def test_help_shows_the_defaults():
    text = " ".join(_help("train").split())  # argparse wraps lines
    defaults = RunConfig()
    for part in (f"(default: {defaults.model})", f"(default: {defaults.img_size})", f"(default: {defaults.epochs})",
                 f"(default: {defaults.batch_size})", "--threads"):
        assert part in text, part
    assert re.search(r"peak learning rate[^()]*\(default: ", text)
    assert "(default: 64)" in " ".join(_help("eval").split())
    assert "(default: l2d)" in " ".join(_help("distill").split())


def test_metrics_printout_is_all_percent():
    metrics = {"mAP": 0.8765, "topk_OF1": 0.5, "threshold": 0.5, "num_samples": 40, "best_epoch": 3,
               "best_val_mAP": 0.9012, "method": "kd", "cost": None}
    text = format_metrics(metrics, "test metrics")
    assert "in percent" in text
    assert "best_val_mAP:  90.12" in text and "mAP:  87.65" in text
    assert "0.9012" not in text
    assert "threshold 0.5" in text and "best epoch 3" in text

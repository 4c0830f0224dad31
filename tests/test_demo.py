"""The demo's whole path on a smoke-test size: real Fashion-MNIST, offline EfficientNet-Lite0 weights."""
from __future__ import annotations

import json

import pytest
import yaml

from mlkd.cli import main
from mlkd.data.fashion_mosaic import locate_fashion_mnist
from mlkd.demo import demo_settings, run_demo


def _fashion_available() -> bool:
    try:
        locate_fashion_mnist("train", download=False)
        locate_fashion_mnist("test", download=False)
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _fashion_available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_quick_demo_writes_the_comparison(tmp_path, capsys):
    out = tmp_path / "demo"
    result = run_demo(out, seeds=(0,), quick=True)
    labels = [m["label"] for m in demo_settings()["methods"]]
    assert list(result["methods"]) == labels
    assert {"vanilla", "KD", "PKT", "MLD", "L2D", "L2D-paper"} <= set(labels)
    teacher = json.loads((out / "teacher" / "metrics.json").read_text())
    assert result["teacher"]["mAP"] == teacher["mAP"]
    for name in ("comparison.md", "students/comparison.json", "students/comparison_map.png",
                 "students/ap_gain_per_label.png", "teacher/learning_curve.png"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "| teacher |" in printed and "| L2D |" in printed.replace("**L2D**", "L2D")
    # The teacher fine-tunes at its own resolution; students read 56 px images, resized for the teacher.
    assert yaml.safe_load((out / "teacher" / "config.yaml").read_text())["img_size"] == 112
    assert yaml.safe_load((out / "students" / "L2D" / "seed0" / "config.yaml").read_text())["img_size"] == 56


def test_list_command(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tiny_cnn" in out and "l2d" in out and "reviewkd" in out and "fashion_mosaic" in out


def test_demo_runs_five_seeds_by_default():
    # Five seeds give the paired t-interval over seeds four degrees of freedom; the quick smoke run keeps two.
    assert demo_settings()["seeds"] == [0, 1, 2, 3, 4]
    assert demo_settings(quick=True)["seeds"] == [0, 1]

"""benchmarks/lr_check.py: which rate it compares the default with, and the verdict it writes."""
import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lr_check  # noqa: E402


def _fake_fit(scores, default):
    """A `fit` that resolves an unset lr to ``default`` (as the real one does from the schedule)."""
    seen = []

    def fit(cfg):
        seen.append(cfg)
        used = dataclasses.replace(cfg, lr=default if cfg.lr is None else cfg.lr)
        return SimpleNamespace(metrics={"best_val_mAP": scores[used.lr]}, config=used)
    return fit, seen


def test_default_is_compared_with_the_best_rate_of_the_grid(monkeypatch, tmp_path):
    fit, seen = _fake_fit({1e-4: 0.41, 1e-3: 0.60, 3e-3: 0.69}, default=1e-3)
    monkeypatch.setattr(lr_check, "fit", fit)
    result = lr_check.check_setting("lowres", [1e-4, 1e-3, 3e-3], 0, tmp_path)
    # The default run leaves lr unset for fit to resolve; the grid runs set it.
    assert [c.lr for c in seen] == [None, 1e-4, 1e-3, 3e-3]
    assert all(c.method == "vanilla" and c.teacher is None and c.seed == 0 for c in seen)
    assert result["default_lr"] == 1e-3 and result["best_val_mAP"] == 0.69
    assert abs(result["default_minus_best"] + 0.09) < 1e-12 and not result["within_limit"]
    text = lr_check.markdown({"lowres": result}, [1e-4, 1e-3, 3e-3])
    assert "| `lowres` | 41.00 | 60.00 | 69.00 | 60.00 (0.001) | -9.00 | **no** |" in text


def test_a_default_within_one_point_passes(monkeypatch, tmp_path):
    fit, _ = _fake_fit({1e-3: 0.835, 3e-3: 0.8649}, default=3e-3)
    monkeypatch.setattr(lr_check, "fit", fit)
    result = lr_check.check_setting("quadrants", [1e-3, 3e-3], 0, tmp_path)
    assert result["runs"]["default"]["lr"] == 3e-3 and result["within_limit"]


def test_the_settings_explicit_lr_does_not_stand_in_for_the_default(monkeypatch, tmp_path):
    # A setting that sets lr 5e-4 explicitly: the "default" run must leave lr unset, not run 5e-4.
    real = lr_check.accuracy.run_configs

    def run_configs(setting, quick=False):
        teacher, student = real(setting, quick)
        return teacher, lr_check.make_config(student, lr=5e-4)
    monkeypatch.setattr(lr_check.accuracy, "run_configs", run_configs)
    fit, seen = _fake_fit({3e-3: 0.8, 1e-3: 0.7}, default=3e-3)
    monkeypatch.setattr(lr_check, "fit", fit)
    result = lr_check.check_setting("sparse", [1e-3], 0, tmp_path)
    assert seen[0].lr is None and result["default_lr"] == 3e-3

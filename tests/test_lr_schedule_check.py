"""benchmarks/lr_schedule_check.py: the runs it trains, the rate it says the rule picks, its table."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lr_check  # noqa: E402
import lr_schedule_check as check  # noqa: E402
from mlkd.config import SHORT_SCHEDULE_STEPS  # noqa: E402


def test_rule_against_the_rates_of_each_schedule(monkeypatch, tmp_path):
    seen = []

    def fit(cfg):
        seen.append(cfg)
        return SimpleNamespace(metrics={"best_val_mAP": {1e-3: 0.60, 3e-3: 0.69}[cfg.lr] + cfg.epochs / 100})

    steps_per_epoch = SHORT_SCHEDULE_STEPS // 2 - 1  # two epochs: short; four: not
    monkeypatch.setattr(lr_check, "fit", fit)  # the runner both scripts share (lr_check.vanilla_run)
    monkeypatch.setattr(check, "check_run", lambda cfg: cfg.epochs * steps_per_epoch)
    short = check.run_case("lowres", 2, [1e-3, 3e-3], tmp_path)
    long = check.run_case("clutter_lite0", 4, [1e-3, 3e-3], tmp_path)
    assert [(c.lr, c.epochs, c.method, c.teacher, c.seed) for c in seen[:2]] == [(1e-3, 2, "vanilla", None, 0),
                                                                                (3e-3, 2, "vanilla", None, 0)]
    assert all(c.weights == "efficientnet-lite0" and c.model == "tf_efficientnet_lite0" for c in seen)
    assert seen[2].img_size == 64 and seen[0].img_size == 56
    assert short["rule"] == 3e-3 and short["rule_minus_best"] == 0
    assert long["rule"] == 1e-3 and abs(long["rule_minus_best"] + 0.09) < 1e-12
    text = check.markdown([short, long], [1e-3, 3e-3])
    assert f"| `clutter_lite0` | 4 | {4 * steps_per_epoch} | 64.00 | 73.00 | 0.001 | -9.00 |" in text


def test_unknown_case_is_named():
    with pytest.raises(ValueError, match="unknown case 'nope'"):
        check.base_config("nope")

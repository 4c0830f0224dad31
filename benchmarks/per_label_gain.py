"""Where a method's gain over the vanilla student comes from, label by label, on a finished suite setting (issue 19).

    python benchmarks/per_label_gain.py SETTING [SETTING ...] [--method L2D] [--frequent 8]
                                        [--output runs/accuracy]

Reads the students' test scores (``OUTPUT/SETTING/students/LABEL/seedS/test_scores.npz``, written by every run)
and the teachers' (``best.pt``'s ``test_scores.npz`` beside it: the setting's teacher, or its fold teachers'
mean when it has ``teacher_folds``). Prints, per setting:

- the test AP gain of ``--method`` over ``vanilla`` per label, mean over the seed pairs, labels ordered by their
  positives in the test split (what AP is computed on);
- the mean gain on the ``--frequent`` most frequent labels and on the others;
- the correlation, across labels, between that gain and the teacher's AP advantage over the vanilla student.

AP is mlkd's `average_precision_per_label` (tested against scikit-learn); labels without a test positive are left
out. Nothing is trained; the test split was read by the setting's own run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy as suite  # noqa: E402
from mlkd.metrics import average_precision_per_label  # noqa: E402


def label_ap(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-label AP (points; NaN for a label without positives) and positives per label of a ``test_scores.npz``."""
    data = np.load(path)
    return average_precision_per_label(data["scores"], data["targets"]) * 100, data["targets"].sum(0)


def gains(students: Path, method: str, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mean per-label AP gain of ``method`` over ``vanilla`` over the seed pairs, and the vanilla student's mean AP."""
    pairs = [(label_ap(students / method / f"seed{s}" / "test_scores.npz")[0],
              label_ap(students / "vanilla" / f"seed{s}" / "test_scores.npz")[0]) for s in seeds]
    return np.mean([a - b for a, b in pairs], 0), np.mean([b for _, b in pairs], 0)


def report(setting: str, output: Path, method: str, frequent: int, classes: Sequence[str] | None = None) -> dict:
    """The per-label gains of one finished setting; see the module doc."""
    result = json.loads((output / setting / "results.json").read_text())
    seeds = result["comparison"]["seeds"]
    folds = list((result.get("fold_teachers_val_mAP") or {}).keys())
    teachers = [Path(f) for f in folds] or [Path(result["teacher"])]
    students = output / setting / "students"
    gain, vanilla = gains(students, method, seeds)
    teacher = np.mean([label_ap(t / "test_scores.npz")[0] for t in teachers], 0)
    _, positives = label_ap(students / "vanilla" / f"seed{seeds[0]}" / "test_scores.npz")
    order = [j for j in np.argsort(-positives, kind="stable") if not np.isnan(gain[j])]
    top, rest = order[:frequent], order[frequent:]
    ok = [j for j in order if not np.isnan(teacher[j])]
    corr = float(np.corrcoef(teacher[ok] - vanilla[ok], gain[ok])[0, 1]) if len(ok) > 2 else float("nan")
    names = list(classes) if classes is not None else [str(j) for j in range(len(gain))]
    return {"setting": setting, "method": method, "seeds": seeds,
            "per_label": [(names[j], int(positives[j]), float(gain[j])) for j in order],
            "frequent": float(np.mean(gain[top])), "others": float(np.mean(gain[rest])) if rest else float("nan"),
            "teacher_advantage": float(np.mean(teacher[ok] - vanilla[ok])), "correlation": corr}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("settings", nargs="+")
    p.add_argument("--method", default="L2D", help="the method's label in the setting (default L2D)")
    p.add_argument("--frequent", type=int, default=8, help="how many of the most frequent labels to group")
    p.add_argument("--output", default="runs/accuracy", help="the accuracy suite's output folder")
    args = p.parse_args(argv)
    for name in args.settings:
        setting = suite.load_setting(name)
        _, student = suite.run_configs(setting)
        classes = suite.create_dataset(student.dataset, student.data_root, student.test_split,
                                       **student.dataset_options).classes
        r = report(name, Path(args.output), args.method, args.frequent, classes)
        print(f"{name}: {r['method']} - vanilla, test AP points per label (test positives), mean over seeds "
              f"{r['seeds']}")
        print("  " + ", ".join(f"{c} ({n}) {g:+.1f}" for c, n, g in r["per_label"]))
        print(f"  {args.frequent} most frequent labels {r['frequent']:+.2f}, the others {r['others']:+.2f}; teacher AP "
              f"advantage over vanilla {r['teacher_advantage']:+.2f} on average, its correlation with the gain "
              f"across labels {r['correlation']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

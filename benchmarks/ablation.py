"""Issue 19's ablation and candidate search on one suite setting, read on the validation split only.

    .venv/bin/python benchmarks/ablation.py SETTING [--seeds 0,1,2] [--variants LABEL,...]
                                            [--output runs/ablation] [--test]

SETTING is a suite setting (``benchmarks/accuracy.py --list``); its teacher is the suite's
(``runs/accuracy/<teacher_of>/teacher``, trained there when missing). Each variant below trains one
student per seed (`mlkd.bench.compare`, paired by seed) into ``OUTPUT/SETTING/<label>/seed<k>``:

- ``vanilla``; ``KD`` and ``PKT``: the baselines as the suite ran them until the baselines' search of issue 19
  (KD τ = 4, λ_KD = 10; PKT λ_PKT = 30000), given explicitly so that a label keeps its meaning when a default
  changes; ``KDx4`` and ``KD@MLD`` (τ = 4 at 4 times that weight, and at the balanced form's MLD weight, 19.2
  times), ``KD-T1`` (τ = 1 at the MLD weight), ``PKT/2`` and ``2PKT``: the candidates of that search;
  ``KD-default``, ``PKT-default``: whatever ``--method kd`` / ``pkt`` is; ``vanilla@read``: the vanilla
  student trained on the images the distilled students get (read at the teacher's side, resized), the control of
  the input pipeline;
- ``L2D``: the balanced form's label-wise terms, MLD + LED, without the relation term (``lambda_pkt`` 0: the
  default until issue 19); ``MLD``, ``LED``, ``CD``, ``ID``: one of its terms alone (the others' weights 0, so
  every term keeps its default weight and units);
- ``L2D+PKT``: those terms plus the batch-level relation term at PKT's own weight (``lambda_pkt`` 468.75, i.e.
  30000 at batch 64); ``L2D+PKT/2``, ``L2D+2PKT``: half and twice that; ``MLD+PKT``: MLD and PKT without the
  label-wise structure terms;
- ``default``: whatever ``--method l2d`` is (since issue 19, ``L2D+PKT/2``).

Every variant but ``default``, ``KD-default`` and ``PKT-default`` sets its weights (and KD its temperature)
itself, so a label means the same objective whatever the defaults become (the ablation of docs/results.md ran when the default had no relation term).

What it reports (``OUTPUT/SETTING/ablation.md`` and ``.json``) is validation only: for every variant the
final epoch's validation mAP (no epoch chosen on the split it is read on, so no selection bias) and the best
epoch's, and the paired difference to vanilla and to PKT over the seeds with a 95 % t-interval. The test
split is read only with ``--test`` (after a choice is frozen): then each variant's test mAP of its best
validation epoch is added, paired the same way.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402
from mlkd.bench import compare  # noqa: E402
from mlkd.config import make_config  # noqa: E402
from mlkd.engine.checkpoint import load_checkpoint  # noqa: E402
from mlkd.files import atomic_write_text  # noqa: E402
from mlkd.losses.objective import BALANCED_WEIGHTS  # noqa: E402
from mlkd.stats import t_interval  # noqa: E402

PKT_DEFAULT = 30000.0  # the PKT baseline's weight on its batch-mean term
PKT_AT_64 = PKT_DEFAULT / 64  # the same weight in the balanced form's per-image units
KD_DEFAULT = 10.0  # the KD baseline's weight on its batch-mean term (MLD's in the paper's form)
# KD at the balanced form's MLD weight: λ_MLD = 3 per image, i.e. 3 × 64 on a batch mean at batch 64.
KD_AT_MLD = BALANCED_WEIGHTS["mld"] * 64
# label -> (distiller, lambdas, method options, read at the teacher's side without a teacher)
VARIANTS: dict[str, tuple[str, dict[str, float], dict[str, float], bool]] = {
    "vanilla": ("vanilla", {}, {}, False),
    "vanilla@read": ("vanilla", {}, {}, True),
    "KD": ("kd", {"kd": KD_DEFAULT}, {"temperature": 4.0}, False),
    "KDx4": ("kd", {"kd": 4 * KD_DEFAULT}, {"temperature": 4.0}, False),
    "KD@MLD": ("kd", {"kd": KD_AT_MLD}, {"temperature": 4.0}, False),
    "KD-T1": ("kd", {"kd": KD_AT_MLD}, {"temperature": 1.0}, False),
    "PKT": ("pkt", {"pkt": PKT_DEFAULT}, {}, False),
    "PKT/2": ("pkt", {"pkt": PKT_DEFAULT / 2}, {}, False),
    "2PKT": ("pkt", {"pkt": 2 * PKT_DEFAULT}, {}, False),
    "L2D": ("l2d", {"pkt": 0.0}, {}, False),
    "MLD": ("l2d", {"led": 0.0, "pkt": 0.0}, {}, False),
    "LED": ("l2d", {"mld": 0.0, "pkt": 0.0}, {}, False),
    "CD": ("l2d", {"mld": 0.0, "id": 0.0, "pkt": 0.0}, {}, False),
    "ID": ("l2d", {"mld": 0.0, "cd": 0.0, "pkt": 0.0}, {}, False),
    "L2D+PKT": ("l2d", {"pkt": PKT_AT_64}, {}, False),
    "L2D+PKT/2": ("l2d", {"pkt": PKT_AT_64 / 2}, {}, False),
    "L2D+2PKT": ("l2d", {"pkt": 2 * PKT_AT_64}, {}, False),
    "MLD+PKT": ("l2d", {"led": 0.0, "pkt": PKT_AT_64}, {}, False),
    "default": ("l2d", {}, {}, False),
    "KD-default": ("kd", {}, {}, False),
    "PKT-default": ("pkt", {}, {}, False),
}
log = logging.getLogger("mlkd")


def run_variants(name: str, labels: Sequence[str], seeds: Sequence[int], output: Path) -> Path:
    """Train the variants' students of setting ``name``; returns the folder holding one folder per variant."""
    setting = accuracy.load_setting(name)
    teacher_setting = setting if setting["teacher_of"] == name else accuracy.load_setting(setting["teacher_of"])
    teacher_cfg, _ = accuracy.run_configs(teacher_setting)
    _, student_cfg = accuracy.run_configs(setting)
    missing = accuracy.missing_data(name, setting, (teacher_cfg, student_cfg))
    if missing:
        raise FileNotFoundError(missing)
    teacher_dir = ROOT / "runs" / "accuracy" / setting["teacher_of"] / "teacher"
    accuracy.ensure_teacher(teacher_cfg, teacher_dir)
    out = output / name
    plain = [label for label in labels if not VARIANTS[label][3]]
    key = lambda label: json.dumps(VARIANTS[label][2], sort_keys=True)  # noqa: E731
    # One comparison per set of method options: options belong to the run configuration, shared by its methods.
    for options in dict.fromkeys(key(label) for label in plain):
        group = [(label, *VARIANTS[label][:2]) for label in plain if key(label) == options]
        compare(teacher_dir / "best.pt", group, seeds, output=out / "runs",
                config=make_config(student_cfg, method_options=json.loads(options)))
    read = [(label, *VARIANTS[label][:2]) for label in labels if VARIANTS[label][3]]
    if read:
        # The side the distilled students read their images at (`resolve_read_size`).
        side = max(student_cfg.img_size, teacher_cfg.img_size)
        compare(None, read, seeds, config=make_config(student_cfg, read_size=side), output=out / "runs_read")
    return out


def collect(out: Path, labels: Sequence[str], seeds: Sequence[int], test: bool) -> dict[str, Any]:
    """Per variant and seed: final and best validation mAP (and test mAP with ``test``), in points."""
    found: dict[str, Any] = {}
    for label in labels:
        folder = out / ("runs_read" if VARIANTS[label][3] else "runs") / accuracy._run_dir_name(label)
        per_seed = {}
        for seed in seeds:
            run = folder / f"seed{seed}"
            if not (run / "metrics.json").exists():
                continue
            history = load_checkpoint(run / "last.pt")["history"]
            metrics = json.loads((run / "metrics.json").read_text())
            per_seed[seed] = {"final_val": 100 * history[-1]["val_mAP"], "best_val": 100 * metrics["best_val_mAP"]}
            if test:
                per_seed[seed]["test"] = 100 * metrics["mAP"]
        found[label] = per_seed
    return found


def paired(found: dict[str, Any], label: str, reference: str, key: str) -> str:
    a, b = found.get(label, {}), found.get(reference, {})
    seeds = sorted(set(a) & set(b))
    if label == reference or len(seeds) < 2:
        return ""
    iv = t_interval([a[s][key] - b[s][key] for s in seeds])
    return f"{iv.estimate:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}]{' *' if iv.excludes_zero else ''}"


def report(name: str, found: dict[str, Any], command: str, wall: float, test: bool) -> str:
    mean = lambda label, key: sum(r[key] for r in found[label].values()) / len(found[label])  # noqa: E731
    lines = [f"# Ablation on `{name}` (validation)", "", f"Command: `{command}` ({wall:.0f} s).", "",
             "Final-epoch validation mAP (no epoch chosen on it), best-epoch validation mAP, and paired differences "
             "of the final-epoch value over the seeds (95 % t-interval; * excludes 0).", "",
             "| variant | seeds | final val | best val | − vanilla | − PKT |", "|---|---|---|---|---|---|"]
    for label, runs in found.items():
        if not runs:
            continue
        lines.append(f"| {label} | {len(runs)} | {mean(label, 'final_val'):.2f} | {mean(label, 'best_val'):.2f} | "
                     f"{paired(found, label, 'vanilla', 'final_val')} | {paired(found, label, 'PKT', 'final_val')} |")
    if test:
        lines += ["", "## Test (best validation epoch)", "", "| variant | test mAP | − vanilla | − PKT |", "|---|---|---|---|"]
        for label, runs in found.items():
            if runs:
                lines.append(f"| {label} | {mean(label, 'test'):.2f} | {paired(found, label, 'vanilla', 'test')} | "
                             f"{paired(found, label, 'PKT', 'test')} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("setting")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"labels among {', '.join(VARIANTS)}")
    parser.add_argument("--output", default=str(ROOT / "runs" / "ablation"))
    parser.add_argument("--test", action="store_true", help="also read the test split (only after a choice is frozen)")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    labels = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in labels if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    out = Path(args.output) / args.setting
    if not args.report_only:
        try:
            run_variants(args.setting, labels, seeds, Path(args.output))
        except FileNotFoundError as err:
            print(err, file=sys.stderr)
            return 2
    if not out.is_dir():
        print(f"no runs of {args.setting} in {out}: run without --report-only first", file=sys.stderr)
        return 2
    found = collect(out, labels, seeds, args.test)
    command = "python benchmarks/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(args.setting, found, command, time.perf_counter() - t0, args.test)
    atomic_write_text(out / ("ablation_test.md" if args.test else "ablation.md"), text)
    atomic_write_text(out / ("ablation_test.json" if args.test else "ablation.json"), json.dumps(found, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

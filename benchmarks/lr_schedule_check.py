"""The default lr of a pretrained model against the schedule's length (validation only).

    python benchmarks/lr_schedule_check.py [--cases lowres:1,2,4;teacher:1,2,4;clutter_lite0:1,4]
                                           [--rates 1e-3,3e-3] [--output runs/lr_schedule]

`default_lr` gives a pretrained backbone 1e-3, or 3e-3 when the OneCycle schedule is shorter than
`SHORT_SCHEDULE_STEPS` optimizer steps. This trains vanilla ImageNet-pretrained EfficientNet-Lite0
runs (seed 0) for each case, number of epochs and rate, and reports validation mAP next to the rate
the rule picks for that schedule. Cases (from the accuracy suite's settings):

- ``lowres``: the `lowres` setting's student (56 px, head d = 64);
- ``teacher``: the `quadrants` setting's teacher recipe (112 px, head d = 128);
- ``clutter_lite0``: the `clutter` setting's student with Lite0 ImageNet weights instead of `tiny_cnn`
  (64 px); it was not run while the threshold was chosen (docs/results.md).

The test split is not read for anything. Finished runs in ``OUTPUT/CASE_eE_lrR/`` are reused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402
from _report import publish_results  # noqa: E402
from lr_check import vanilla_run  # noqa: E402

from mlkd.config import RunConfig, default_lr, make_config  # noqa: E402
from mlkd.engine.preflight import check_run  # noqa: E402

DEFAULT_CASES = "lowres:1,2,4;teacher:1,2,4;clutter_lite0:1,4"


def base_config(case: str) -> RunConfig:
    """The vanilla pretrained Lite0 configuration of ``case`` (lr and epochs set per run)."""
    if case == "lowres":
        return accuracy.run_configs(accuracy.load_setting("lowres"))[1]
    if case == "teacher":
        return accuracy.run_configs(accuracy.load_setting("quadrants"))[0]
    if case == "clutter_lite0":
        student = accuracy.run_configs(accuracy.load_setting("clutter"))[1]
        return make_config({**student.to_dict(), "model": "tf_efficientnet_lite0", "weights": "efficientnet-lite0"})
    raise ValueError(f"unknown case {case!r}; use lowres, teacher or clutter_lite0")


def run_case(case: str, epochs: int, rates: list[float], output: Path) -> dict:
    """Validation mAP of each rate, the schedule's step count and the rate the rule picks."""
    base = base_config(case)
    row: dict = {"case": case, "epochs": epochs, "val_mAP": {}}
    for lr in rates:
        folder = output / f"{case}_e{epochs}_lr{lr:g}"
        result = vanilla_run(base, folder, 0, lr=lr, epochs=epochs, cache_teacher=False)
        row["val_mAP"][f"{lr:g}"] = result.metrics["best_val_mAP"]
    row["steps"] = check_run(make_config(base, method="vanilla", teacher=None, epochs=epochs))
    row["rule"] = default_lr(base, row["steps"])
    best = max(row["val_mAP"].values())
    row["rule_minus_best"] = row["val_mAP"][f"{row['rule']:g}"] - best if f"{row['rule']:g}" in row["val_mAP"] else None
    return row


def markdown(rows: list[dict], rates: list[float]) -> str:
    lines = ["| case | epochs | optimizer steps | " + " | ".join(f"{r:g}" for r in rates) + " | the rule picks | rule − best |",
             "|---|---:|---:|" + "---:|" * len(rates) + "---|---:|"]
    for r in rows:
        cells = " | ".join(f"{100 * r['val_mAP'][f'{x:g}']:.2f}" for x in rates)
        gap = "–" if r["rule_minus_best"] is None else f"{100 * r['rule_minus_best']:+.2f}"
        lines.append(f"| `{r['case']}` | {r['epochs']} | {r['steps']} | {cells} | {r['rule']:g} | {gap} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"CASE:EPOCHS,...;... (default {DEFAULT_CASES})")
    parser.add_argument("--rates", default="1e-3,3e-3")
    parser.add_argument("--output", default="runs/lr_schedule")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    output = Path(args.output)
    rows = []
    for part in args.cases.split(";"):
        case, _, epochs = part.partition(":")
        rows += [run_case(case, int(e), rates, output) for e in epochs.split(",")]
    publish_results(output, "lr_schedule", rows, markdown(rows, rates))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Check the default learning rate against a grid on the accuracy suite's settings (validation only).

    python benchmarks/lr_check.py [SETTING,...] [--rates 1e-4,3e-4,1e-3,3e-3] [--seed 0]
                                  [--output runs/lr_check]

For each setting (default: all of ``mlkd/configs/suite``), trains the setting's vanilla student once
with the learning rate unset (``default_lr``) and once per rate of the grid, everything else as the
setting configures it, and reports each run's best validation mAP: the issue-9 check "the default is
within 1 point of the best rate of the grid". The test split is not read for anything. Finished runs
are reused (``OUTPUT/SETTING/lr*/``); results go to ``OUTPUT/lr_check.json`` and ``lr_check.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402
from _report import publish_results  # noqa: E402

from mlkd.config import RunConfig, make_config  # noqa: E402
from mlkd.engine.trainer import RunResult, fit  # noqa: E402

LIMIT_POINTS = 1.0  # the tolerance, in mAP points


def vanilla_run(base: RunConfig, folder: Path, seed: int, **overrides: Any) -> RunResult:
    """Train ``base`` as a vanilla student (no teacher) into ``folder``; a finished run is reused."""
    cfg = make_config(base, method="vanilla", teacher=None, seed=seed, output=str(folder), quiet=True,
                      resume=(folder / "last.pt").exists(), **overrides)
    return fit(cfg)


def check_setting(name: str, rates: list[float], seed: int, output: Path) -> dict:
    """Validation mAP of the setting's vanilla student at the default rate and at each of ``rates``."""
    _, student = accuracy.run_configs(accuracy.load_setting(name))
    # The settings set their lr explicitly; None in the dictionary (not as an override, which means
    # "not given") leaves it unset, so that `fit` resolves the default rule.
    unset = make_config({**student.to_dict(), "lr": None})
    runs = {}
    for lr in [None, *rates]:
        folder = output / name / f"lr{'default' if lr is None else f'{lr:g}'}"
        result = vanilla_run(unset, folder, seed, **({} if lr is None else {"lr": lr}))
        # The run's config holds the rate it used (fit resolves the default).
        runs["default" if lr is None else f"{lr:g}"] = {"lr": result.config.lr, "val_mAP": result.metrics["best_val_mAP"]}
    best = max(runs[f"{r:g}"]["val_mAP"] for r in rates)
    return {"runs": runs, "default_lr": runs["default"]["lr"], "best_val_mAP": best,
            "default_minus_best": runs["default"]["val_mAP"] - best,
            "within_limit": runs["default"]["val_mAP"] >= best - LIMIT_POINTS / 100}


def markdown(results: dict, rates: list[float]) -> str:
    head = "| setting | " + " | ".join(f"{r:g}" for r in rates) + " | default (rate) | default − best | within 1 point |"
    lines = [head, "|---|" + "---|" * (len(rates) + 3)]
    for name, r in results.items():
        cells = [f"{100 * r['runs'][f'{x:g}']['val_mAP']:.2f}" for x in rates]
        d = r["runs"]["default"]
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {100 * d['val_mAP']:.2f} ({d['lr']:g}) | "
                     f"{100 * r['default_minus_best']:+.2f} | {'yes' if r['within_limit'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="?", help="comma-separated settings (default: every setting whose data "
                        "is on this machine)")
    parser.add_argument("--rates", default="1e-4,3e-4,1e-3,3e-3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/lr_check")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    output = Path(args.output)
    names = args.settings.split(",") if args.settings else accuracy.list_settings()
    absent = {}
    for name in names:
        setting = accuracy.load_setting(name)
        why = accuracy.missing_data(name, setting, accuracy.run_configs(setting))
        if why:
            absent[name] = why
    if args.settings and absent:  # asked for by name: say why it cannot run, before anything trains
        print("error: " + "\n".join(absent.values()), file=sys.stderr)
        return 2
    for name, why in absent.items():  # the default list: run what this machine has
        print(f"lr_check: skipping {name}: {why}", file=sys.stderr)
    results = {name: check_setting(name, rates, args.seed, output) for name in names if name not in absent}
    publish_results(output, "lr_check", results, markdown(results, rates))
    return 0


if __name__ == "__main__":
    sys.exit(main())

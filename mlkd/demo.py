"""`mlkd demo`: the embedded default end to end on a CPU.

1. Fine-tune an ImageNet-pretrained teacher (EfficientNet-Lite0, offline weights) on `fashion_mosaic`.
2. Distil small students with L2D, its ablations and baselines, plus the vanilla student, over seeds.
3. Print the comparison table and write it with plots under the output folder.

The settings below were chosen on the validation split (docs/results.md records the search).
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from mlkd.bench import compare, markdown_table
from mlkd.config import make_config
from mlkd.engine.trainer import fit

log = logging.getLogger("mlkd")

CONFIG_FILE = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def demo_settings(quick: bool = False) -> dict[str, Any]:
    """The demo's data, teacher, student and method settings (``quick``: a smoke-test size)."""
    settings = yaml.safe_load(CONFIG_FILE.read_text())
    if quick:
        for part, values in settings.get("quick", {}).items():
            settings[part] = {**settings[part], **values} if isinstance(values, dict) else values
    return settings


def run_demo(output: str | Path = "runs/demo", seeds: Sequence[int] = (0, 1, 2), quick: bool = False) -> dict[str, Any]:
    """Run the whole demo afresh in ``output`` and return the comparison."""
    out = Path(output)
    shutil.rmtree(out, ignore_errors=True)
    s = demo_settings(quick)
    common = {**s["common"], "quiet": True}
    t0 = time.perf_counter()
    log.info("mlkd demo: teacher %s on fashion_mosaic (%s)", s["teacher"]["model"], out / "teacher")
    teacher = fit(make_config(common, **s["teacher"], output=str(out / "teacher")))
    log.info("teacher: test mAP %.2f%% (%.0f s)", 100 * teacher.metrics["mAP"], time.perf_counter() - t0)
    methods = [(m["label"], m["method"], m.get("lambdas", {})) for m in s["methods"]]
    result = compare(out / "teacher" / "best.pt", methods, seeds, config=make_config(common, **s["student"]),
                     output=out / "students", teacher_metrics=teacher.metrics)
    table = markdown_table(result)
    (out / "comparison.md").write_text(table)
    print(table)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; plots and runs in {out}/students")
    return result

"""`mlkd demo`: the embedded default end to end on a CPU.

1. Fine-tune an ImageNet-pretrained teacher (EfficientNet-Lite0, offline weights) on `fashion_scenes`
   (the accuracy suite's `clutter` setting: small objects next to large ones).
2. Distil small students with L2D (mlkd's default form and the paper's) and baselines, plus the vanilla
   student, over seeds.
3. Print the comparison table and write it with plots under the output folder, and the pictures of
   `mlkd.demo_figures` (predictions on test images, gains per label and per object size).

Running it again into the same folder continues where it stopped: each unfinished run resumes from its
last.pt, each finished one is reused. Nothing is ever deleted; a folder that holds anything but a demo
run is refused.

The settings below were chosen on the validation split (docs/results.md records the search).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from mlkd.bench import REFERENCE, compare, markdown_table, plan_runs
from mlkd.config import RunConfig, load_yaml, make_config
from mlkd.demo_figures import FILES as FIGURE_FILES
from mlkd.demo_figures import check_figure_settings, write_demo_figures
from mlkd.engine.run_folder import RunFolder, foreign_entries, output_folder
from mlkd.engine.trainer import RESUME_MAY_CHANGE, fit
from mlkd.files import atomic_write_text

log = logging.getLogger("mlkd")

CONFIG_FILE = Path(__file__).resolve().parent / "configs" / "demo.yaml"
# What a demo writes at the top of its folder.
DEMO_ENTRIES = frozenset({"teacher", "students", "comparison.md", *FIGURE_FILES})


def demo_settings(quick: bool = False) -> dict[str, Any]:
    """The demo's data, teacher, student and method settings (``quick``: a smoke-test size)."""
    settings = yaml.safe_load(CONFIG_FILE.read_text())
    if quick:
        for part, values in settings.get("quick", {}).items():
            settings[part] = {**settings[part], **values} if isinstance(values, dict) else values
    return settings


def run_demo(output: str | Path = "runs/demo", seeds: Sequence[int] | None = None,
             quick: bool = False) -> dict[str, Any]:
    """Run the demo in ``output``, continuing an earlier demo there; return the comparison.

    ``seeds`` default to the demo's own (``seeds`` in configs/demo.yaml).

    Raises:
        ValueError: ``output`` is empty, or the students' settings are invalid (e.g. repeated ``seeds``);
            raised before the teacher trains.
        FileExistsError: ``output`` holds files that are not a demo run, or a demo run with other
            settings (e.g. ``quick`` differs).
        OutputInUseError: another process runs a demo in ``output``.
    """
    out = output_folder(output)
    foreign = foreign_entries(out, DEMO_ENTRIES)
    if foreign or (out / "teacher").is_file() or (out / "students").is_file():
        shown = ", ".join(foreign[:3] or ["teacher", "students"]) + (" ..." if len(foreign) > 3 else "")
        raise FileExistsError(f"{out} holds files that are not an mlkd demo run ({shown}); mlkd never deletes "
                              "them: choose another --output (an empty, new or earlier demo folder)")
    s = demo_settings(quick)
    common = {**s["common"], "quiet": True}
    # The teacher is the long phase: it reports each epoch (students report one line per run).
    teacher_cfg = make_config(common, **s["teacher"], output=str(out / "teacher"), quiet=False)
    _check_same_demo(teacher_cfg, out)
    methods = [(m["label"], m["method"], m.get("lambdas", {})) for m in s["methods"]]
    seeds = s["seeds"] if seeds is None else seeds
    student_cfg = make_config(common, **s["student"])
    # The students' settings are checked now: a bad one would otherwise surface after the teacher trained.
    plan_runs(out / "teacher" / "best.pt", methods, seeds, student_cfg, out / "students")
    labels = [label for label, _, _ in methods]
    reference = next((m["label"] for m in s["methods"] if m["method"] == REFERENCE), "")
    figures = s.get("figures")  # settings without this section get no pictures
    if figures:
        check_figure_settings(labels, reference, figures)
    folder = RunFolder(out, DEMO_ENTRIES).open()
    try:
        t0 = time.perf_counter()
        log.info("mlkd demo: teacher %s on %s (%s)", s["teacher"]["model"], s["common"]["dataset"], out / "teacher")
        teacher = fit(_continued(teacher_cfg))
        log.info("teacher: test mAP %.2f%% (%.0f s)", 100 * teacher.metrics["mAP"], time.perf_counter() - t0)
        result = compare(out / "teacher" / "best.pt", methods, seeds, config=student_cfg,
                         output=out / "students", teacher_metrics=teacher.metrics)
        table = markdown_table(result)
        atomic_write_text(out / "comparison.md", table)
        if figures:
            write_demo_figures(out, student_cfg, labels, reference, seeds, figures)
    except Exception:
        folder.discard_if_unused()
        raise
    finally:
        folder.release()
    print(table)
    pictures = f"pictures ({', '.join(sorted(FIGURE_FILES))}) in {out}, " if figures else ""
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; {pictures}plots and runs in {out}/students")
    return result


def _continued(cfg: RunConfig) -> RunConfig:
    """Resume a run the demo started before (a finished one only writes its report again)."""
    return dataclasses.replace(cfg, resume=(Path(cfg.output) / "last.pt").exists()
                               or (Path(cfg.output) / "config.yaml").exists())


def _check_same_demo(teacher_cfg: RunConfig, out: Path) -> None:
    """Refuse to continue a demo that was started with other settings (``--quick`` or not, another version)."""
    saved_path = out / "teacher" / "config.yaml"
    if not saved_path.is_file():
        return
    saved, now = load_yaml(saved_path), teacher_cfg.to_dict()
    changed = [k for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]
    if changed:
        raise FileExistsError(f"{out} holds a demo run with other settings ({', '.join(changed)} differ: was it run "
                              "with/without --quick?); continue it with its own flags or choose another --output")

"""The accuracy suite: one setting's teacher and its students compared over seeds, with one command.

    python benchmarks/accuracy.py SETTING [--seeds 0,1,2,3,4] [--methods vanilla,kd,pkt,mld,l2d]
                                  [--output runs/accuracy] [--quick]
    python benchmarks/accuracy.py --list

SETTING is a file of ``mlkd/configs/suite/`` (``quadrants``, ``sparse``, ``clutter``, ``clutter_colors``,
``many_labels``, ``lowres``, ``posters_scratch``, ``posters_tiny``, ``posters_lowres``, ``posters_short``,
``posters_tiny_short``, and with cross-fitted teachers ``posters_short_crossfit``, ``posters_short_crossfit3``,
``posters_short_crossfit_steps``, ``posters_scratch_crossfit``, ``posters_tiny_crossfit``,
``posters_tiny_short_crossfit``, ``clutter_crossfit``, ``clutter_crossfit_steps``, ``sparse_crossfit``,
``sparse_crossfit_steps``, ``lowres_crossfit_steps``; ``clutter`` is what ``mlkd demo`` runs;
docs/results.md, "The accuracy suite", says what each tests). The script trains the setting's teacher
into ``OUTPUT/SETTING/teacher`` (or reuses it when that folder holds a finished teacher of the same
configuration; an interrupted one resumes), runs
`mlkd.bench.compare` for the students into ``OUTPUT/SETTING/students``, and writes
``OUTPUT/SETTING/results.md`` and ``results.json``: the validation mAP of teacher and students (what
settings are chosen on), then the test comparison.

A setting file holds the sections ``common``, ``teacher`` and ``student`` (RunConfig fields; the teacher
and student runs are ``common`` updated by their section) and ``methods`` (a list of ``{label, method,
lambdas}``). ``inherit: FILE`` (relative to the file) starts from another setting: each section's keys
replace the inherited ones, whole values, no deeper merge; ``methods`` replaces the list.
``teacher_of: SETTING`` reuses that setting's teacher (``OUTPUT/SETTING/teacher``) instead of training one.
``teacher_folds: K`` makes the students distil from K cross-fitted teachers instead (`mlkd.data.folds`): the
teacher's configuration trained K times, each without one fold of the training set
(``OUTPUT/TEACHER_OF/teacher_fold{k}of{K}``, trained or reused like the teacher), each teaching the fold it
held out. The whole-set teacher is still trained: the validation gap is measured against it, and against the
fold teachers too. ``fold_teacher: {epochs: 8}`` (RunConfig fields) changes the fold teachers' runs only; they are
then trained into ``OUTPUT/TEACHER_OF/teacher_fold{k}of{K}_epochs8`` (the changes in the name), shared by every
setting that asks for the same fold teachers.

A relative ``data_root`` in a setting file is relative to the repository root, not to the current folder:
the ``posters_*`` settings read ``../shared/data/movie_posters``, real photographs that are never copied
into the repository. A setting that names a ``data_root`` is checked before anything trains; when its data
is not there the script stops with a message naming the data set (``external_data``, a short description)
and the folder it expected.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlkd.bench import compare, markdown_table  # noqa: E402
from mlkd.config import RunConfig, check_keys, make_config  # noqa: E402
from mlkd.data import create_dataset  # noqa: E402
from mlkd.engine.trainer import fit  # noqa: E402

SUITE_DIR = ROOT / "mlkd" / "configs" / "suite"
SECTIONS = ("common", "teacher", "student")
TOP_KEYS = {"inherit", "teacher_of", "teacher_folds", "fold_teacher", "methods", "external_data", *SECTIONS}
# Run settings that do not change what a run computes; a reused teacher may differ in these. The thread
# count changes a run only in the last bits (the order of float reductions): a finished teacher is kept
# rather than trained again for it, and its own config.yaml still records the count it ran with.
NOT_COMPARED = {"output", "resume", "quiet", "workers", "device", "tensorboard", "data_root", "threads"}
# Quick mode (a smoke test of the pipeline, not a measurement): images per split and epochs. Data sets
# without a count option (csv) keep all their images: only the epochs shrink.
QUICK_IMAGES, QUICK_EPOCHS = 320, 1
QUICK_COUNT_OPTIONS = {"fashion_mosaic": "num_mosaics", "fashion_scenes": "num_scenes"}

log = logging.getLogger("mlkd")


def list_settings() -> list[str]:
    """The names of the suite's settings (the YAML files of ``mlkd/configs/suite``), sorted."""
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def _read(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in chain:
        raise ValueError(f"setting files inherit in a circle: {' -> '.join(map(str, chain + (path,)))}")
    if not path.is_file():
        raise FileNotFoundError(f"setting file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; valid keys: {sorted(TOP_KEYS)}")
    for section in SECTIONS:
        check_keys(data.get(section) or {}, f"{path} [{section}]")
    if "inherit" not in data:
        return data
    # `inherit` is relative to the file that names it.
    parent_path = (path.parent / data["inherit"]).resolve()
    parent = _read_parent(parent_path, chain + (path,))
    merged = {k: v for k, v in parent.items() if k in TOP_KEYS - {"inherit"}}
    for section in SECTIONS:
        merged[section] = {**(parent.get(section) or {}), **(data.get(section) or {})}
    for key in ("methods", "teacher_of", "teacher_folds", "fold_teacher", "external_data"):
        if key in data:
            merged[key] = data[key]
    return merged


def _read_parent(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if path.parent == SUITE_DIR.resolve():
        return _read(path, chain)
    # A file outside the suite (such as mlkd/configs/demo.yaml): only its sections and methods count,
    # not the keys the suite does not use (`quick`, `seeds`, `figures`).
    data = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in data.items() if k in TOP_KEYS}


def load_setting(name: str) -> dict[str, Any]:
    """The resolved setting ``name``: ``common``, ``teacher``, ``student`` dicts, ``methods``, ``teacher_of``.

    Raises:
        ValueError: unknown setting (the message lists the valid ones), unknown keys, circular inheritance.
    """
    if name not in list_settings():
        raise ValueError(f"unknown setting {name!r}; valid settings: {', '.join(list_settings())}")
    setting = _read((SUITE_DIR / f"{name}.yaml").resolve())
    if not setting.get("methods"):
        raise ValueError(f"setting {name!r} lists no methods")
    setting["teacher_of"] = setting.get("teacher_of") or name
    setting["name"] = name
    return setting


def data_root(value: str | None) -> str | None:
    """A setting's ``data_root`` as an absolute path without ``..``: relative ones are relative to the repository
    root (so a copy of the repository beside it reads the same folder, named the same way)."""
    return None if value is None else str((ROOT / value).resolve())


def run_configs(setting: dict[str, Any], quick: bool = False) -> tuple[RunConfig, RunConfig]:
    """The teacher's and the students' base `RunConfig` of a resolved setting (``quick``: smoke-test size)."""
    common = {**setting["common"], "quiet": True}
    teacher = {**common, **setting["teacher"]}
    student = {**common, **setting["student"]}
    for part in (teacher, student):
        part["data_root"] = data_root(part.get("data_root"))
    if quick:
        for part in (teacher, student):
            key = QUICK_COUNT_OPTIONS.get(part.get("dataset", RunConfig.dataset))
            if key:
                part["dataset_options"] = {**part.get("dataset_options", {}), key: QUICK_IMAGES}
            part["epochs"] = QUICK_EPOCHS
    return make_config(teacher), make_config(student)


def missing_data(name: str, setting: dict[str, Any], cfgs: Sequence[RunConfig]) -> str | None:
    """Why data that the setting reads from a ``data_root`` is not there, or ``None`` when it is.

    Such data is not built or downloaded by mlkd (the posters are kept outside the repository), so its
    absence is a matter of this machine, said in one message before anything trains, not a traceback
    from deep in a run. The message names the data set (the setting's ``external_data``) and the folder
    where it was expected; the folder, a split file or an image the split lists may be missing.
    """
    for cfg in cfgs:
        if cfg.data_root is None:
            continue
        try:
            for split in (cfg.train_split, cfg.test_split):
                create_dataset(cfg.dataset, cfg.data_root, split, **cfg.dataset_options)
        except FileNotFoundError as err:
            what = setting.get("external_data") or f"its {cfg.dataset} data set"
            return (f"setting {name!r} needs {what}, which is not present: expected in "
                    f"{Path(cfg.data_root).resolve()} (the setting's data_root {setting['common'].get('data_root')!r}, "
                    f"relative to the repository root {ROOT}). Put the data set there, or run another setting. "
                    f"({err})")
    return None


def select_methods(setting: dict[str, Any], wanted: Sequence[str] | None) -> list[tuple[str, str, dict[str, float]]]:
    """``(label, distiller, lambdas)`` for `compare`: all of the setting's methods, or those named in ``wanted``.

    A name matches a label of the setting (case-insensitive) first, else it is taken as a distiller name
    with its default weights (labelled by the name).
    """
    entries = [(m["label"], m["method"], dict(m.get("lambdas") or {})) for m in setting["methods"]]
    if not wanted:
        return entries
    by_label = {label.lower(): (label, method, lambdas) for label, method, lambdas in entries}
    chosen = [by_label.get(w.lower(), (w, w, {})) for w in wanted]
    labels = [c[0] for c in chosen]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--methods names a method twice: {', '.join(wanted)}")
    return chosen


def ensure_teacher(cfg: RunConfig, folder: Path) -> dict[str, Any]:
    """Train the teacher into ``folder``, or reuse it there; returns its test metrics.

    A finished teacher (``best.pt`` and ``metrics.json``) is reused when its saved configuration equals
    ``cfg`` up to `NOT_COMPARED`; an unfinished one resumes from ``last.pt``.

    Raises:
        ValueError: the folder holds a teacher of another configuration.
    """
    saved = folder / "config.yaml"
    if saved.exists():
        old = yaml.safe_load(saved.read_text()) or {}
        new = make_config(cfg, output=str(folder)).to_dict()
        # A key the saved file lacks (a field added to RunConfig since) counts as its default.
        defaults = RunConfig().to_dict()
        # An unset lr is resolved by fit from the schedule (`default_lr`): the saved rate stands for it.
        differ = sorted(k for k in new if k not in NOT_COMPARED and old.get(k, defaults[k]) != new[k]
                        and not (k == "lr" and new[k] is None))
        if differ:
            raise ValueError(f"{folder} holds a teacher trained with other settings ({', '.join(differ)}); "
                             "delete that folder to train it again, or pass another --output")
    if (folder / "best.pt").exists() and (folder / "metrics.json").exists():
        log.info("accuracy: reusing the finished teacher in %s", folder)
        return json.loads((folder / "metrics.json").read_text())
    resume = (folder / "last.pt").exists()
    log.info("accuracy: %s the teacher %s in %s", "resuming" if resume else "training", cfg.model, folder)
    return fit(make_config(cfg, output=str(folder), resume=resume)).metrics


def fold_teacher_folders(teacher_of: str, count: int, changes: dict[str, Any], out: Path) -> list[Path]:
    """Where the ``count`` fold teachers of ``teacher_of``'s teacher, changed by ``changes``, are kept.

    ``OUTPUT/TEACHER_OF/teacher_fold{k}of{K}``, the changes appended to the name (``_epochs12``), so every
    setting that asks for the same fold teachers shares one training of them.
    """
    suffix = "".join(f"_{key}{_folder_word(value)}" for key, value in sorted(changes.items()))
    return [out / teacher_of / f"teacher_fold{k}of{count}{suffix}" for k in range(count)]


def _folder_word(value: Any) -> str:
    # A RunConfig value as part of a folder name: 12 -> "12", [0.1, 2] -> "0.1-2", "a b" -> "a_b".
    text = "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text)


def fold_teachers(setting: dict[str, Any], teacher_cfg: RunConfig, out: Path) -> list[Path]:
    """The folders of a setting's cross-fitted teachers (``teacher_folds: K``), trained or reused; [] without."""
    count = setting.get("teacher_folds")
    if not count:
        return []
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ValueError(f"teacher_folds is the number of cross-fitted teachers, an integer >= 2, got {count!r}")
    changes = setting.get("fold_teacher") or {}
    check_keys(changes, "fold_teacher")
    folders = fold_teacher_folders(setting["teacher_of"], count, changes, out)
    for k, folder in enumerate(folders):
        ensure_teacher(make_config(teacher_cfg, **changes, hold_out_fold=[k, count]), folder)
    return folders


def _run_dir_name(label: str) -> str:
    # The folder `compare` gives a method's runs.
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def validation_summary(students: Path, methods: Sequence[tuple[str, str, dict]], seeds: Sequence[int]) -> dict[str, Any]:
    """Best validation mAP of every student run, per method: ``{label: {"values": [...], "mean": m}}``."""
    summary = {}
    for label, _, _ in methods:
        values = []
        for seed in seeds:
            path = students / _run_dir_name(label) / f"seed{seed}" / "metrics.json"
            if path.exists():
                values.append(json.loads(path.read_text())["best_val_mAP"])
        if values:
            summary[label] = {"values": values, "mean": sum(values) / len(values)}
    return summary


def results_markdown(name: str, command: str, teacher_metrics: dict[str, Any], val: dict[str, Any],
                     comparison: dict[str, Any], wall_s: float, fold_val: dict[str, float] | None = None,
                     fold_fit: dict[str, dict[str, Any] | None] | None = None) -> str:
    """``results.md``: the command, the validation mAP (teacher, fold teachers and students), how closely the
    teachers fit their training images (when their runs recorded it, `mlkd.engine.fit`), then the test
    comparison."""
    lines = [f"# Accuracy suite: {name}", "",
             f"Command: `{command}`  ", f"Finished {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {wall_s:.0f} s.",
             "", "## Validation mAP (what settings are chosen on)", "",
             "| run | val mAP | per seed |", "|---|---|---|"]
    if "best_val_mAP" in teacher_metrics:
        lines.append(f"| teacher | {100 * teacher_metrics['best_val_mAP']:.2f} | |")
    if fold_val:
        values = " / ".join(f"{100 * v:.2f}" for v in fold_val.values())
        lines.append(f"| fold teachers (they teach) | {100 * sum(fold_val.values()) / len(fold_val):.2f} | {values} |")
    for label, stats in val.items():
        seeds = " / ".join(f"{100 * v:.2f}" for v in stats["values"])
        lines.append(f"| {label} | {100 * stats['mean']:.2f} | {seeds} |")
    if "vanilla" in val and "best_val_mAP" in teacher_metrics:
        gap = 100 * (teacher_metrics["best_val_mAP"] - val["vanilla"]["mean"])
        lines += ["", f"Teacher - vanilla student gap on validation: {gap:.2f} mAP points."]
        if fold_val:
            fold_gap = 100 * (sum(fold_val.values()) / len(fold_val) - val["vanilla"]["mean"])
            lines.append(f"Fold teachers (mean) - vanilla student gap on validation: {fold_gap:.2f} mAP points.")
    lines += _fit_lines(teacher_metrics.get("fit"), fold_fit)
    lines += ["", "## Test split", "", markdown_table(comparison)]
    return "\n".join(lines) + "\n"


def _fit_lines(fit: dict[str, Any] | None, fold_fit: dict[str, dict[str, Any] | None] | None) -> list[str]:
    """results.md's lines on the teachers' fit of their own training images (validation-side facts only)."""
    lines = []
    if fit:
        lines.append(f"Teacher on its {fit['train_images']:,} training images (the students' too, unless fold "
                     f"teachers teach): {fit['train_mAP']:.2f} mAP.")
    if fold_fit and all(fold_fit.values()):
        held = " / ".join(f"{f['held_out_mAP']:.2f}" for f in fold_fit.values())
        train = " / ".join(f"{f['train_mAP']:.2f}" for f in fold_fit.values())
        lines.append(f"Fold teachers on the fold each teaches (never seen): {held} mAP; on their own training "
                     f"images: {train}.")
    return [""] + lines if lines else []


def run_setting(name: str, seeds: Sequence[int], methods: Sequence[str] | None = None,
                output: str | Path = "runs/accuracy", quick: bool = False, command: str = "") -> dict[str, Any]:
    """Teacher (trained or reused), students over ``seeds``, and the results files of setting ``name``."""
    t0 = time.perf_counter()
    setting = load_setting(name)
    out = Path(output)
    entries = select_methods(setting, methods)
    teacher_setting = setting if setting["teacher_of"] == name else load_setting(setting["teacher_of"])
    teacher_cfg, _ = run_configs(teacher_setting, quick)
    _, student_cfg = run_configs(setting, quick)
    missing = missing_data(name, setting, (teacher_cfg, student_cfg))
    if missing:
        raise FileNotFoundError(missing)
    teacher_dir = out / setting["teacher_of"] / "teacher"
    teacher_metrics = ensure_teacher(teacher_cfg, teacher_dir)
    teacher_path, folds = teacher_dir / "best.pt", fold_teachers(setting, teacher_cfg, out)
    if folds:
        student_cfg = make_config(student_cfg, fold_teachers=[str(d / "best.pt") for d in folds])
        teacher_path = None
    students = out / name / "students"
    comparison = compare(teacher_path, entries, seeds, config=student_cfg, output=students,
                         teacher_metrics=teacher_metrics)
    val = validation_summary(students, entries, seeds)
    fold_metrics = {str(d): json.loads((d / "metrics.json").read_text()) for d in folds}
    fold_val = {d: m.get("best_val_mAP") for d, m in fold_metrics.items()}
    fold_fit = {d: m.get("fit") for d, m in fold_metrics.items()}
    result = {"setting": name, "command": command, "teacher": str(teacher_dir),
              "teacher_val_mAP": teacher_metrics.get("best_val_mAP"), "teacher_fit": teacher_metrics.get("fit"),
              "fold_teachers_val_mAP": fold_val or None, "fold_teachers_fit": fold_fit or None,
              "val": val, "comparison": comparison, "quick": quick}
    wall = time.perf_counter() - t0
    _write(out / name / "results.json", json.dumps(result, indent=2))
    _write(out / name / "results.md", results_markdown(name, command, teacher_metrics, val, comparison, wall,
                                                       fold_val, fold_fit))
    return result


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting", nargs="?", help=f"one of: {', '.join(list_settings())}")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0,1,2,3,4)")
    parser.add_argument("--methods", help="comma-separated labels of the setting's methods or distiller names "
                                          "(default: all the setting lists)")
    parser.add_argument("--output", help="root folder (default runs/accuracy, with --quick runs/accuracy_quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 320 images (csv settings: all), 1 epoch (no measurement)")
    parser.add_argument("--list", action="store_true", help="list the settings and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list or not args.setting:
        for name in list_settings():
            s = load_setting(name)
            root = s["common"].get("data_root")
            absent = ", not present" if missing_data(name, s, run_configs(s)) else ""
            where = f" ({root}{absent})" if root else ""
            print(f"{name:15s} {s['common'].get('dataset')}{where}  {len(s['methods'])} methods: "
                  + ", ".join(m["label"] for m in s["methods"]))
        return 0 if args.list else 2
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    output = args.output or ("runs/accuracy_quick" if args.quick else "runs/accuracy")
    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        run_setting(args.setting, seeds, methods, output, args.quick, command)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(output) / args.setting / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a teacher help less on the images it was trained on? A teacher that never saw the students' images
against the suite's teacher, which did.

    python benchmarks/teacher_overlap.py [--setting posters_short] [--seeds 0,1,2,3,4]
                                         [--methods vanilla,kd,pkt,l2d] [--output runs/teacher_overlap]

Issue 19 found no real-photo setting where distillation pays, although the posters teacher is 5-7 validation
mAP points ahead of the students. One suspect: every suite teacher is trained on the very images its students
then train on, and a network that has fitted its training images returns them nearly as their labels, which
the students already have. This script measures it on a suite setting that reads a csv data set with a carved
validation split (the ``posters_*`` settings):

1. The setting's training carve (its ``val_fraction`` of ``train.csv`` held out with mlkd's fixed split seed,
   the same validation images as the suite's) is cut in two halves A and B (``--split-seed``).
2. **Teacher A**: the setting's teacher configuration trained on A only (``OUTPUT/teacherA``).
   **The suite's teacher** (``runs/accuracy/TEACHER_OF/teacher``, trained if missing): trained on A and B.
3. The setting's student configuration trains on B only, validated on the suite's validation images, with
   each method distilled from each teacher, over the seeds (``OUTPUT/students_from_A``, ``.../from_suite``).
   ``--epochs`` defaults to twice the setting's, so that the students take as many optimizer steps as the
   setting's students on the whole carve.
4. Each teacher's mAP on B's images (what the students train on), on the validation images and on the test
   split.
5. When the setting's own comparison has run (``SUITE_OUTPUT/SETTING/results.json``), teacher A's students on B
   against the setting's students on the whole carve: the recipe "teacher on one half, student on the other"
   against the usual one (not paired: Welch intervals).

Writes ``OUTPUT/results.md`` and ``results.json`` and prints the markdown: validation mAP (what may be read
while choosing) and test mAP, gains over the vanilla student and the difference between the two teachers'
students, paired by seed, Student t 95 % intervals. The split files are written under ``OUTPUT/data``; they
list the images by absolute path, so the images themselves stay where they are (the posters are never copied).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy as suite  # noqa: E402
from mlkd.api import evaluate  # noqa: E402
from mlkd.bench import compare  # noqa: E402
from mlkd.config import RunConfig, make_config  # noqa: E402
from mlkd.data.splits import SPLIT_SEED  # noqa: E402
from mlkd.stats import t_interval, t_quantile  # noqa: E402

CSV_OPTIONS = {"allow_outside_root": True}  # the split files name the images by absolute path


def read_rows(path: Path) -> list[list[str]]:
    """The ``[image, labels]`` rows of a csv split file, header dropped."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return [r for r in rows[1:] if r]


def write_halves(source: Path, val_fraction: float, split_seed: int, out: Path) -> dict[str, int]:
    """Data roots ``out/A`` and ``out/B``: halves of the training carve, the same validation images and test split.

    The carve repeats `mlkd.data.splits.build_datasets` (fraction, ``SPLIT_SEED``, ``torch.randperm``), so the
    validation images are those of every suite run on ``source``; tests/test_teacher_overlap.py checks it.
    """
    train = read_rows(source / "train.csv")
    test = read_rows(source / "test.csv")
    n = len(train)
    n_val = max(1, int(round(val_fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    val, rest = sorted(perm[:n_val]), sorted(perm[n_val:])
    order = torch.randperm(len(rest), generator=torch.Generator().manual_seed(split_seed)).tolist()
    halves = {"A": sorted(rest[i] for i in order[: len(rest) // 2]),
              "B": sorted(rest[i] for i in order[len(rest) // 2:])}
    # One class list for both roots (the union over the source's files, sorted, as the csv reader builds it),
    # so that teachers and students of either half predict the same classes in the same order.
    classes = sorted({c.strip() for _, labels in train + test for c in labels.split("|") if c.strip()})
    absolute = lambda rows: [[str((source / image).resolve()), labels] for image, labels in rows]  # noqa: E731
    for name, idx in halves.items():
        root = out / name
        root.mkdir(parents=True, exist_ok=True)
        splits = {"train": [train[i] for i in idx], "val": [train[i] for i in val], "test": test}
        for split, rows in splits.items():
            tmp = root / f"{split}.csv.tmp"
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["image", "labels"])
                writer.writerows(absolute(rows))
            tmp.replace(root / f"{split}.csv")
        (root / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    return {"carve": len(rest), "A": len(halves["A"]), "B": len(halves["B"]), "val": len(val), "test": len(test)}


def teacher_fit(checkpoint: Path, root_b: Path, img_size: int) -> dict[str, float]:
    """A teacher's mAP (points) on B's training images, the validation images and the test split."""
    return {split: 100 * evaluate(checkpoint, dataset="csv", data_root=str(root_b), split=split, img_size=img_size,
                                  dataset_options=CSV_OPTIONS)["mAP"]
            for split in ("train", "val", "test")}


def best_val(folder: Path) -> float:
    """The best validation mAP (points) of a finished run, the one its ``best.pt`` was chosen by."""
    epochs = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    return 100 * max(e["val_mAP"] for e in epochs if "val_mAP" in e)


def per_seed(comparison_dir: Path, labels: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[str, np.ndarray]]:
    """``{label: {"val": [...], "test": [...]}}`` in points, ordered by seed."""
    comp = json.loads((comparison_dir / "comparison.json").read_text())
    return {label: {"val": np.array([best_val(comparison_dir / label / f"seed{s}") for s in seeds]),
                    "test": 100 * np.array(comp["methods"][label]["mAP"]["values"])} for label in labels}


def _ci(diff: np.ndarray) -> str:
    i = t_interval(diff)
    bold = "**" if i.low > 0 or i.high < 0 else ""
    return f"{bold}{i.estimate:+.2f} [{i.low:+.2f}, {i.high:+.2f}]{bold}"


def welch(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), low, high)``: Welch's interval for runs that are not paired (other images), with the
    degrees of freedom rounded down (a slightly wider interval; `t_quantile` takes whole degrees)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    q = t_quantile(confidence, max(1, int(df)))
    d = float(a.mean() - b.mean())
    return d, d - q * se, d + q * se


def _welch_cell(a: np.ndarray, b: np.ndarray) -> str:
    d, low, high = welch(a, b)
    bold = "**" if low > 0 or high < 0 else ""
    return f"{bold}{d:+.2f} [{low:+.2f}, {high:+.2f}]{bold}"


def whole_carve_section(whole: dict[str, np.ndarray], runs: dict[str, dict[str, dict[str, np.ndarray]]],
                        labels: Sequence[str]) -> list[str]:
    """The students of teacher A on half B against the setting's own students (all the carve, the suite's teacher)."""
    lines = ["", "## Against the setting's own students (test mAP)", "",
             "The setting's students train on the whole carve with the suite's teacher "
             "(`benchmarks/accuracy.py SETTING`, its results.json); these train on half B with teacher A. Not paired "
             "(other images): Welch 95 % intervals, degrees of freedom rounded down (**bold**: excludes 0).", "",
             "| method | on B, from teacher A | on the whole carve | B from A − whole, same method "
             "| B from A − vanilla on the whole carve |", "|---|---|---|---|---|"]
    for label in labels:
        if label not in whole:
            continue
        a = runs["A"][label]["test"]
        lines.append(f"| {label} | {a.mean():.2f} ± {a.std(ddof=1):.2f} | {whole[label].mean():.2f} ± "
                     f"{whole[label].std(ddof=1):.2f} | {_welch_cell(a, whole[label])} | "
                     f"{_welch_cell(a, whole['vanilla'])} |")
    return lines


def report(command: str, sizes: dict[str, int], fits: dict[str, dict[str, float]],
           runs: dict[str, dict[str, dict[str, np.ndarray]]], labels: Sequence[str], wall: float,
           whole: dict[str, np.ndarray] | None = None) -> str:
    lines = [f"# Teacher overlap: {sizes['setting']}", "", f"Command: `{command}`  ",
             f"Finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {wall:.0f} s.", "",
             f"Training carve {sizes['carve']} images: half A {sizes['A']} (teacher A), half B {sizes['B']} "
             f"(every student, {sizes['epochs']} epochs); validation {sizes['val']} (the suite's), test {sizes['test']}.",
             "",
             "## The teachers (mAP)", "", "| teacher | trained on | on B (the students' images) | validation | test |",
             "|---|---|---|---|---|"]
    for name, trained in (("A", "A"), ("suite", "A and B")):
        f = fits[name]
        lines.append(f"| {name} | {trained} | {f['train']:.2f} | {f['val']:.2f} | {f['test']:.2f} |")
    for split, title in (("val", "Validation mAP"), ("test", "Test mAP")):
        lines += ["", f"## {title} of the students (trained on B), {sizes['seeds']} seeds", "",
                  "Gain over the vanilla student, and teacher A's student minus the suite teacher's, paired by seed, "
                  "Student t 95 % (**bold**: excludes 0).", "",
                  "| method | from teacher A | gain | from the suite's teacher | gain | A − suite |", "|---|---|---|---|---|---|"]
        van = runs["A"]["vanilla"][split]
        lines.append(f"| vanilla | {van.mean():.2f} ± {van.std(ddof=1):.2f} | reference | "
                     f"{runs['suite']['vanilla'][split].mean():.2f} | reference | |")
        for label in labels:
            if label == "vanilla":
                continue
            a, s = runs["A"][label][split], runs["suite"][label][split]
            lines.append(f"| {label} | {a.mean():.2f} | {_ci(a - van)} | {s.mean():.2f} | "
                         f"{_ci(s - runs['suite']['vanilla'][split])} | {_ci(a - s)} |")
    if whole and "vanilla" in whole:
        lines += whole_carve_section(whole, runs, labels)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", default="posters_short", help="a suite setting on a csv data set with a "
                        "carved validation split (default posters_short)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--methods", default="vanilla,kd,pkt,l2d", help="distiller names; vanilla is always run")
    parser.add_argument("--epochs", type=int, help="students' epochs on half B (default: twice the setting's)")
    parser.add_argument("--split-seed", type=int, default=1, help="seed of the A/B halves (default 1)")
    parser.add_argument("--suite-output", default="runs/accuracy", help="where the suite's teacher is (or goes)")
    parser.add_argument("--output", default="runs/teacher_overlap")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = ["vanilla"] + [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "vanilla"]
    setting = suite.load_setting(args.setting)
    teacher_setting = suite.load_setting(setting["teacher_of"])
    teacher_cfg, _ = suite.run_configs(teacher_setting)
    _, student_cfg = suite.run_configs(setting)
    if student_cfg.dataset != "csv" or student_cfg.data_root is None or student_cfg.val_split is not None:
        print(f"error: {args.setting} does not read a csv data set with a carved validation split; "
              "pick a posters_* setting", file=sys.stderr)
        return 2
    missing = suite.missing_data(args.setting, setting, (teacher_cfg, student_cfg))
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    out = Path(args.output)
    sizes = {"setting": args.setting, **write_halves(Path(student_cfg.data_root), student_cfg.val_fraction,
                                                     args.split_seed, out / "data")}
    suite_teacher = Path(args.suite_output) / setting["teacher_of"] / "teacher"
    suite.ensure_teacher(teacher_cfg, suite_teacher)
    teacher_a = out / "teacherA"
    # val_split named, not left to the root's val.csv, so that the saved configuration equals this one on a rerun.
    suite.ensure_teacher(make_config(teacher_cfg, data_root=str(out / "data" / "A"), dataset_options=CSV_OPTIONS,
                                     val_split="val"), teacher_a)
    epochs = args.epochs or 2 * student_cfg.epochs
    students: RunConfig = make_config(student_cfg, data_root=str(out / "data" / "B"), dataset_options=CSV_OPTIONS,
                                      val_split="val", epochs=epochs)
    entries = [(m if m == "vanilla" else m.upper(), m, {}) for m in methods]
    labels = [label for label, _, _ in entries]
    runs, fits = {}, {}
    for name, teacher in (("A", teacher_a), ("suite", suite_teacher)):
        folder = out / ("students_from_A" if name == "A" else "students_from_suite")
        compare(str(teacher / "best.pt"), entries, seeds, config=students, output=folder)
        runs[name] = per_seed(folder, labels, seeds)
        fits[name] = teacher_fit(teacher / "best.pt", out / "data" / "B", teacher_cfg.img_size)
    # The setting's own comparison (students on the whole carve), when benchmarks/accuracy.py has run it.
    whole = None
    own = Path(args.suite_output) / args.setting / "results.json"
    if own.is_file():
        methods_own = json.loads(own.read_text())["comparison"]["methods"]
        whole = {label: 100 * np.array(m["mAP"]["values"]) for label, m in methods_own.items()}
    command = ("python benchmarks/teacher_overlap.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    markdown = report(command, {**sizes, "epochs": epochs, "seeds": len(seeds)}, fits, runs, labels,
                      time.perf_counter() - t0, whole)
    data = {"command": command, "sizes": sizes, "epochs": epochs, "teachers": fits,
            "students": {k: {m: {s: v.tolist() for s, v in d.items()} for m, d in r.items()} for k, r in runs.items()}}
    for name, text in (("results.json", json.dumps(data, indent=2)), ("results.md", markdown)):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much of a distillation epoch is the teacher, and what `--cache-teacher` saves.

    .venv/bin/python benchmarks/teacher_cache.py          # writes section teacher_cache of docs/benchmarks.md

The `quadrants` pair (the demo's until issue 20) on the embedded default (`fashion_mosaic`, no
augmentation): an EfficientNet-Lite0
teacher at 112 px, a `tiny_cnn` student at 56 px, L2D, batch 64, on the CPU. The same three-epoch
distillation runs twice side by side, without and with the cache; the first epoch with the cache fills
it (the teacher runs), the later ones read it. Timing does not depend on the teacher's weights, so the
teacher checkpoint here holds a randomly initialised model.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import machine_line, publish  # noqa: E402
from _setup import (quadrants_classes, quadrants_distill_config, quadrants_run_parser, quadrants_teacher, scratch_folder,  # noqa: E402
                    teacher_checkpoint)

from mlkd.config import make_config  # noqa: E402
from mlkd.engine.trainer import fit  # noqa: E402


def main() -> None:
    args = quadrants_run_parser(epochs=3).parse_args()
    with scratch_folder("mlkd_cache_bench_") as work:
        classes = quadrants_classes()
        common = quadrants_distill_config(teacher_checkpoint(work / "teacher.pt", classes), args.mosaics, args.epochs,
                                     augment=False)
        rows = {}
        for label, cache in (("without cache", False), ("with --cache-teacher", True)):
            t0 = time.perf_counter()
            result = fit(make_config(common, cache_teacher=cache, output=str(work / label.replace(" ", "_"))))
            rows[label] = ([r["epoch_seconds"] for r in result.history], time.perf_counter() - t0)
        # The teacher's share: its forward pass alone over one epoch's batches.
        model = quadrants_teacher(len(classes)).eval()
        n_train = (args.mosaics - round(0.1 * args.mosaics)) // 64 * 64  # the default val_fraction, drop_last
        x = torch.rand(64, 3, 112, 112)
        with torch.no_grad():
            model(x)
            t0 = time.perf_counter()
            for _ in range(3):
                model(x)
            teacher_epoch = (time.perf_counter() - t0) / 3 * n_train / 64

    plain, cached = rows["without cache"][0], rows["with --cache-teacher"][0]
    lines = [
        "## Teacher forward pass and `--cache-teacher`",
        "",
        f"Command: `.venv/bin/python benchmarks/teacher_cache.py` (fashion_mosaic, {args.mosaics} mosaics of which "
        f"{n_train} train per epoch, EfficientNet-Lite0 teacher at 112 px → tiny_cnn student at 56 px, L2D, batch 64, "
        "CPU, float32). Seconds per training epoch, the two runs side by side in one process:",
        "",
        "| epoch | without cache (s) | with --cache-teacher (s) | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    for e, (a, b) in enumerate(zip(plain, cached), 1):
        lines.append(f"| {e}{' (fills the cache)' if e == 1 else ''} | {a:.2f} | {b:.2f} | {a / b:.1f}× |")
    lines += ["", f"The teacher's forward pass alone over one epoch's batches: {teacher_epoch:.2f} s, "
                  f"{100 * teacher_epoch / plain[-1]:.0f} % of an uncached epoch.",
              "Without augmentation each image has one view; with it the cache holds K fixed augmented views "
              "per image (see the section `teacher_views` below), and `mlkd bench`/`mlkd demo` share one cache "
              "across all students of the same teacher and data.",
              "", machine_line()]
    publish("teacher_cache", lines, write=not args.no_write)


if __name__ == "__main__":
    main()

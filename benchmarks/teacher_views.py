"""The teacher cache with augmentation: epoch time without a cache vs with K cached augmented views.

    .venv/bin/python benchmarks/teacher_views.py          # writes section teacher_views of docs/benchmarks.md

The `quadrants` pair as in `benchmarks/teacher_cache.py` (EfficientNet-Lite0 teacher at 112 px, `tiny_cnn`
student at 56 px, L2D, batch 64, CPU), but with the paper's augmentation on (Cutout + RandAugment).
Two runs side by side: without a cache (a fresh augmented view every epoch, the teacher runs every
step) and with `--cache-teacher --teacher-views K` (the first epochs fill one view each, the teacher
runs on every image of that view in fixed chunks; once each view is cached, the teacher is idle).
Timing does not depend on the teacher's weights, so the teacher checkpoint holds a random model.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import machine_line, publish  # noqa: E402
from _setup import quadrants_classes, quadrants_distill_config, quadrants_run_parser, scratch_folder, teacher_checkpoint  # noqa: E402

from mlkd.config import make_config  # noqa: E402
from mlkd.data.views import epoch_view  # noqa: E402
from mlkd.engine.trainer import fit  # noqa: E402


def main() -> None:
    parser = quadrants_run_parser(epochs=4)
    parser.add_argument("--views", type=int, default=2)
    args = parser.parse_args()
    with scratch_folder("mlkd_views_bench_") as work:
        common = quadrants_distill_config(teacher_checkpoint(work / "teacher.pt", quadrants_classes()), args.mosaics,
                                     args.epochs, augment=True)
        runs = {"plain": dict(cache_teacher=False),
                "cached": dict(cache_teacher=True, teacher_views=args.views)}
        seconds = {}
        for label, extra in runs.items():
            result = fit(make_config(common, output=str(work / label), **extra))
            seconds[label] = [r["epoch_seconds"] for r in result.history]

    n_train = args.mosaics - round(0.1 * args.mosaics)
    new_view, seen = [], set()
    for e in range(args.epochs):
        view = epoch_view(0, e, args.views)
        new_view.append(view not in seen)
        seen.add(view)
    plain, cached = seconds["plain"], seconds["cached"]
    after = [c for c, new in zip(cached, new_view) if not new]
    lines = [
        "## Teacher cache with augmentation (`--cache-teacher --teacher-views K`)",
        "",
        f"Command: `.venv/bin/python benchmarks/teacher_views.py --views {args.views} --epochs {args.epochs}` "
        f"(fashion_mosaic, {args.mosaics} mosaics, {n_train} training images, Cutout + RandAugment on, "
        "EfficientNet-Lite0 teacher at 112 px → tiny_cnn student at 56 px, L2D, batch 64, CPU, float32, "
        "workers 0). Seconds per training epoch, the two runs one after the other in one process:",
        "",
        f"| epoch | no cache, fresh views (s) | cache, K = {args.views} views (s) | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    for e, (a, b) in enumerate(zip(plain, cached)):
        note = f" (fills view {epoch_view(0, e, args.views)})" if new_view[e] else ""
        lines.append(f"| {e + 1}{note} | {a:.2f} | {b:.2f} | {a / b:.1f}× |")
    if after:
        mean_plain, mean_after = sum(plain) / len(plain), sum(after) / len(after)
        lines += ["", f"Once every view is cached, an epoch takes {mean_after:.2f} s against {mean_plain:.2f} s "
                      f"without the cache ({mean_plain / mean_after:.1f}× faster). A filling epoch costs about "
                      "what an uncached one does: the teacher runs on all images of the view (not only the "
                      "full batches) in chunks of 64, and each image of that view is augmented twice (for the "
                      "teacher's chunk and for the student's batch). The K views cost K teacher passes in all, however many "
                      "epochs and students (in one `mlkd bench` process) use them; the cached epoch's "
                      "remaining time is the student's step and the augmentation of its batch."]
    lines += ["", machine_line()]
    publish("teacher_views", lines, write=not args.no_write)


if __name__ == "__main__":
    main()

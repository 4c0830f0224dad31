"""How much of a distillation epoch is the teacher, and what `--cache-teacher` saves.

    .venv/bin/python benchmarks/teacher_cache.py          # writes section teacher_cache of docs/benchmarks.md

The demo's pair on the embedded default (`fashion_mosaic`, no augmentation): an EfficientNet-Lite0
teacher at 112 px, a `tiny_cnn` student at 56 px, L2D, batch 64, on the CPU. The same three-epoch
distillation runs twice side by side, without and with the cache; the first epoch with the cache fills
it (the teacher runs), the later ones read it. Timing does not depend on the teacher's weights, so the
teacher checkpoint here holds a randomly initialised model.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import machine_line, write_section  # noqa: E402

from mlkd.config import make_config  # noqa: E402
from mlkd.data import create_dataset  # noqa: E402
from mlkd.engine.checkpoint import save_checkpoint  # noqa: E402
from mlkd.engine.trainer import fit  # noqa: E402
from mlkd.models import create_model  # noqa: E402


def teacher_checkpoint(path: Path, classes: list[str], img_size: int) -> Path:
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", len(classes), embed_dim=128, num_heads=4, ffn_dim=256)
    stats = model.data_config
    return save_checkpoint({"model": model.state_dict(), "model_args": model.model_args, "classes": classes,
                            "config": {"img_size": img_size},
                            "input_norm": {"mean": list(stats["mean"]), "std": list(stats["std"])}}, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mosaics", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlkd_cache_bench_"))
    try:
        classes = create_dataset("fashion_mosaic", None, "test", num_mosaics=1).classes
        teacher = teacher_checkpoint(work / "teacher.pt", classes, 112)
        common = dict(dataset="fashion_mosaic", dataset_options={"num_mosaics": args.mosaics}, img_size=56,
                      augment=False, batch_size=64, device="cpu", tensorboard=False, quiet=True,
                      model="tiny_cnn", model_options={"embed_dim": 64, "num_heads": 4, "ffn_dim": 128},
                      epochs=args.epochs, lr=2e-3, method="l2d", teacher=str(teacher))
        rows = {}
        for label, cache in (("without cache", False), ("with --cache-teacher", True)):
            t0 = time.perf_counter()
            result = fit(make_config(common, cache_teacher=cache, output=str(work / label.replace(" ", "_"))))
            rows[label] = ([r["epoch_seconds"] for r in result.history], time.perf_counter() - t0)
        # The teacher's share: its forward pass alone over one epoch's batches.
        model = create_model("tf_efficientnet_lite0", len(classes), embed_dim=128, num_heads=4, ffn_dim=256).eval()
        n_train = (args.mosaics - round(0.1 * args.mosaics)) // 64 * 64  # the default val_fraction, drop_last
        x = torch.rand(64, 3, 112, 112)
        with torch.no_grad():
            model(x)
            t0 = time.perf_counter()
            for _ in range(3):
                model(x)
            teacher_epoch = (time.perf_counter() - t0) / 3 * n_train / 64
    finally:
        shutil.rmtree(work, ignore_errors=True)

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
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("teacher_cache", text)


if __name__ == "__main__":
    main()

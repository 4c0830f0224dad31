"""How closely a suite setting's teacher has fitted its training images: its mAP on them against new images.

    python benchmarks/teacher_fit.py SETTING[,SETTING...] [--output runs/accuracy]

A distilled student reads the teacher's outputs on the student's training images, which are the images the suite's
teachers were trained on. Where the teacher has fitted them, those outputs are close to the labels the student
already has, and what the teacher knows about new images (its validation mAP) does not reach the student
(docs/results.md, "why the posters teacher does not pay"). This script scores the teacher of each setting
(``OUTPUT/TEACHER_OF/teacher``, trained when missing, as ``benchmarks/accuracy.py`` does) on:

- its training images: the carve it trained on, read as evaluation reads images (no augmentation, the
  teacher's own side);
- the validation images (the carve held out, or the setting's validation split);

and prints a markdown table: mAP on each, their difference, and the mean binary cross-entropy of the teacher's
probabilities to the labels on each. Trains nothing when the teachers exist.

Teachers trained by mlkd since 2026-12-07 record their training-image mAP themselves (``fit`` in best.pt and
metrics.json, `mlkd.engine.fit`), and distillation runs print it; this script also scores older teachers and adds
the BCE.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy as suite  # noqa: E402
from mlkd.config import make_config  # noqa: E402
from mlkd.data import build_datasets  # noqa: E402
from mlkd.engine.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from mlkd.engine.evaluate import ModelInput, compute_metrics, eval_loader, predict  # noqa: E402


def fit_of(checkpoint: Path, cfg) -> dict[str, dict[str, float]]:
    """``{"train": {...}, "val": {...}}``: mAP (points), mean BCE and image count of the teacher on each split."""
    state = load_checkpoint(checkpoint)
    model, _ = model_from_checkpoint(state, source=checkpoint)
    # The training images as evaluation reads them: no augmentation, at the teacher's side.
    train, val, _ = build_datasets(make_config(cfg, augment=False, read_size=None))
    device = torch.device("cpu")
    out = {}
    for name, data in (("train", train), ("val", val)):
        scores, targets = predict(model, eval_loader(data, 64, 0, device), device,
                                  ModelInput.from_stats(state.get("input_norm")))
        metrics = compute_metrics(scores, targets, 0.5, data.classes)
        probs = torch.as_tensor(scores, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
        bce = F.binary_cross_entropy(probs, torch.as_tensor(targets, dtype=torch.float64)).item()
        out[name] = {"mAP": 100 * metrics["mAP"], "bce": bce, "images": len(data)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", help="comma-separated suite settings")
    parser.add_argument("--output", default="runs/accuracy", help="the suite's output root (default runs/accuracy)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = ["| setting (teacher) | training images | validation images | train mAP | val mAP | difference "
            "| train BCE | val BCE |", "|---|---|---|---|---|---|---|---|"]
    done = set()
    for name in [s.strip() for s in args.settings.split(",") if s.strip()]:
        setting = suite.load_setting(name)
        owner = setting["teacher_of"]
        if owner in done:
            continue
        done.add(owner)
        teacher_setting = suite.load_setting(owner)
        cfg, _ = suite.run_configs(teacher_setting)
        missing = suite.missing_data(owner, teacher_setting, (cfg,))
        if missing:
            print(f"error: {missing}", file=sys.stderr)
            return 2
        folder = Path(args.output) / owner / "teacher"
        suite.ensure_teacher(cfg, folder)
        fit = fit_of(folder / "best.pt", cfg)
        t, v = fit["train"], fit["val"]
        rows.append(f"| `{owner}` ({cfg.model}, {cfg.img_size} px) | {t['images']} | {v['images']} | {t['mAP']:.2f} "
                    f"| {v['mAP']:.2f} | {t['mAP'] - v['mAP']:+.2f} | {t['bce']:.4f} | {v['bce']:.4f} |")
    command = ("python benchmarks/teacher_fit.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    print(f"Command: `{command}`\n\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

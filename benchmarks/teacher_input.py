"""What the teacher knows at its own input against what it knows on the student's images, resized up.

    .venv/bin/python benchmarks/teacher_input.py [clutter,posters_scratch] [--output runs/accuracy]

For each suite setting, the setting's finished teacher (``OUTPUT/SETTING/teacher/best.pt``, written by
`benchmarks/accuracy.py`) scores the setting's validation carve twice: read at the teacher's own
resolution, and read at the student's resolution and then interpolated up to the teacher's, which is
what a distillation run handed the teacher before 36bbabb, and still hands it where the training images are
no larger than the student's side (`mlkd.engine.teacher.resolve_read_size`; `mlkd.engine.evaluate.ModelInput`).
Prints a Markdown table of validation mAP; docs/results.md quotes it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402
from mlkd.config import make_config  # noqa: E402
from mlkd.data import build_datasets  # noqa: E402
from mlkd.engine.checkpoint import model_from_checkpoint  # noqa: E402
from mlkd.engine.evaluate import ModelInput, eval_loader, predict  # noqa: E402
from mlkd.metrics import mean_average_precision  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="?", default="clutter,posters_scratch")
    parser.add_argument("--output", default="runs/accuracy")
    args = parser.parse_args()
    device = torch.device("cpu")
    print("| setting | teacher at its own input | teacher on the student's images, resized up |")
    print("|---|---|---|")
    for name in args.settings.split(","):
        teacher_cfg, student_cfg = accuracy.run_configs(accuracy.load_setting(name))
        path = Path(args.output) / name / "teacher" / "best.pt"
        if not path.exists():
            print(f"error: no teacher at {path}; run benchmarks/accuracy.py {name} first", file=sys.stderr)
            return 2
        model, state = model_from_checkpoint(str(path))
        model.eval()
        cells = []
        for cfg, size in ((teacher_cfg, None), (student_cfg, teacher_cfg.img_size)):
            val = build_datasets(make_config(cfg, augment=False)).val
            scores, targets = predict(model, eval_loader(val, 128, 0, device), device,
                                      ModelInput.from_stats(state.get("input_norm"), size))
            cells.append(f"{100 * mean_average_precision(scores, targets):.2f} ({cfg.img_size} px)")
        print(f"| `{name}` | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

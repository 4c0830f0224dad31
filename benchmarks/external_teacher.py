"""L2D from a teacher trained outside mlkd (a fitted label-wise head) against a teacher with its own head.

    .venv/bin/python benchmarks/external_teacher.py [--seeds 0,1,2,3,4] [--output runs/accuracy]

On the suite's `clutter` setting (the demo's), three teachers with the same backbone
(`tf_efficientnet_lite0`, ImageNet weights, 96 px) teach the same `tiny_cnn` student with `--method l2d`:

- **own head**: the setting's teacher, trained by `mlkd train` with its label-wise head
  (``OUTPUT/clutter/teacher``, shared with `benchmarks/accuracy.py clutter`; trained when missing);
- **plain, fitted head**: a plain timm classifier (global pooling + linear layer) fine-tuned with a plain
  PyTorch loop in this script (BCE, Adam, OneCycle, the teacher's epochs, lr and input), saved as a
  ``state_dict`` and given to mlkd as a teacher trained elsewhere (``teacher_model``/``teacher_weights``):
  L2D's LED terms then read the label-wise head mlkd fits to it;
- **own backbone, fitted head**: the own-head teacher handed to `mlkd.distill` as a plain module that
  returns its logits and feature maps only, so that mlkd fits a head to it. Same teacher, same logits:
  the difference to *own head* is the head alone.

Each is paired by seed with the others and with the vanilla student (gains: t-interval over seeds).
Writes ``OUTPUT/external_teacher/results.md`` and ``results.json``; the numbers go into docs/results.md
by hand, with this command.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402
import mlkd  # noqa: E402
from mlkd.config import make_config  # noqa: E402
from mlkd.data import build_datasets  # noqa: E402
from mlkd.engine.checkpoint import model_from_checkpoint  # noqa: E402
from mlkd.files import atomic_write_text  # noqa: E402
from mlkd.metrics import mean_average_precision  # noqa: E402
from mlkd.models.weights import load_efficientnet_lite  # noqa: E402
from mlkd.outputs import ModelOutput  # noqa: E402
from mlkd.stats import t_interval  # noqa: E402

log = logging.getLogger("mlkd")
SETTING = "clutter"
ARCH, WEIGHTS = "tf_efficientnet_lite0", "efficientnet-lite0"


def train_plain_teacher(cfg, path: Path) -> dict:
    """Fine-tune a plain timm classifier with a loop of our own (not mlkd's); save its state dict to ``path``.

    Returns the test mAP (percent) of the last epoch's weights and the normalisation it was trained with.
    """
    torch.manual_seed(cfg.seed)
    train, _, test = build_datasets(make_config(cfg, augment=False))
    model = timm.create_model(ARCH, num_classes=len(train.classes), pretrained=False)
    load_efficientnet_lite(model, WEIGHTS)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    loader = torch.utils.data.DataLoader(train, batch_size=cfg.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * len(loader),
                                                pct_start=0.2)
    for epoch in range(cfg.epochs):
        model.train()
        t0, total = time.perf_counter(), 0.0
        for images, targets in loader:
            loss = nn.functional.binary_cross_entropy_with_logits(model((images - mean) / std), targets.float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log.info("plain teacher epoch %d/%d: BCE %.4f (%.0f s)", epoch + 1, cfg.epochs, total / len(loader),
                 time.perf_counter() - t0)
    model.eval()
    scores, targets = [], []
    with torch.no_grad():
        for images, target in torch.utils.data.DataLoader(test, batch_size=128):
            scores.append(torch.sigmoid(model((images - mean) / std)))
            targets.append(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return {"test_mAP": 100 * float(mean_average_precision(torch.cat(scores), torch.cat(targets))),
            "mean": model.pretrained_cfg["mean"], "std": model.pretrained_cfg["std"]}


class LogitsAndFeatures(nn.Module):
    """An mlkd model seen as a plain classifier: its logits and stage maps, no label-wise embeddings."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        out: ModelOutput = self.model(x)
        return {"logits": out.logits, "features": list(out.features)}


def student_runs(folder: Path, seeds, make) -> dict[int, float]:
    """Test mAP (percent) per seed; ``make(seed, out)`` trains one run into ``out`` unless it is finished."""
    result = {}
    for seed in seeds:
        out = folder / f"seed{seed}"
        if not (out / "metrics.json").exists():
            make(seed, out)
        result[seed] = 100 * json.loads((out / "metrics.json").read_text())["mAP"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--output", default="runs/accuracy")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.output)
    work = out / "external_teacher"
    t_start = time.perf_counter()
    teacher_cfg, student_cfg = accuracy.run_configs(accuracy.load_setting(SETTING))
    own_metrics = accuracy.ensure_teacher(teacher_cfg, out / SETTING / "teacher")
    own_path = out / SETTING / "teacher" / "best.pt"

    plain_path = work / "plain_teacher" / "teacher.pth"
    plain_json = plain_path.with_suffix(".json")
    if not plain_json.exists():
        t0 = time.perf_counter()
        plain = train_plain_teacher(teacher_cfg, plain_path)
        atomic_write_text(plain_json, json.dumps({**plain, "seconds": time.perf_counter() - t0}))
    plain = json.loads(plain_json.read_text())
    (work / "plain_teacher" / "classes.txt").write_text("\n".join(build_datasets(teacher_cfg).train.classes) + "\n")

    student = make_config(student_cfg, method="l2d", teacher=None)
    rows = {
        "vanilla": student_runs(work / "vanilla", seeds, lambda s, o: mlkd.distill(
            method="vanilla", config=student, seed=s, output=str(o))),
        "own head": student_runs(work / "own_head", seeds, lambda s, o: mlkd.distill(
            str(own_path), config=student, seed=s, output=str(o))),
        "plain, fitted head": student_runs(work / "plain_fitted", seeds, lambda s, o: mlkd.distill(
            config=student, teacher_model=ARCH, teacher_weights=str(plain_path),
            teacher_classes=str(plain_path.parent / "classes.txt"), teacher_img_size=teacher_cfg.img_size,
            teacher_mean=list(plain["mean"]), teacher_std=list(plain["std"]), seed=s, output=str(o))),
    }
    own_model, state = model_from_checkpoint(str(own_path))
    norm = state.get("input_norm") or {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # None: no normalisation
    rows["own backbone, fitted head"] = student_runs(work / "own_fitted", seeds, lambda s, o: mlkd.distill(
        LogitsAndFeatures(own_model), config=student, teacher_classes=list(state["classes"]),
        teacher_img_size=teacher_cfg.img_size, teacher_mean=list(norm["mean"]), teacher_std=list(norm["std"]),
        seed=s, output=str(o)))

    def gain(a: str, b: str) -> dict[str, float]:
        diffs = [rows[a][s] - rows[b][s] for s in seeds]
        ci = t_interval(diffs)
        return {"mean": float(np.mean(diffs)), "low": ci.low if ci else math.nan, "high": ci.high if ci else math.nan}

    pairs = [("own head", "vanilla"), ("plain, fitted head", "vanilla"), ("own backbone, fitted head", "vanilla"),
             ("plain, fitted head", "own head"), ("own backbone, fitted head", "own head")]
    gains = {f"{a} − {b}": gain(a, b) for a, b in pairs}
    lines = [f"# L2D from a fitted label-wise head vs a teacher's own head (`{SETTING}`)", "",
             f"Command: `.venv/bin/python benchmarks/external_teacher.py --seeds {args.seeds}`; "
             f"{time.perf_counter() - t_start:.0f} s in this invocation (finished runs are reused).", "",
             f"Teachers (test mAP): own head {100 * own_metrics['mAP']:.2f}; plain timm classifier "
             f"{plain['test_mAP']:.2f} (its own loop, {plain.get('seconds', math.nan):.0f} s).", "",
             "| student (L2D unless vanilla) | test mAP, mean ± std | per seed |", "|---|---|---|"]
    for name, per_seed in rows.items():
        values = [per_seed[s] for s in seeds]
        lines.append(f"| {name} | {np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} | "
                     + ", ".join(f"{v:.2f}" for v in values) + " |")
    lines += ["", "| paired difference (test mAP points) | mean | 95 % t-interval over seeds |", "|---|---|---|"]
    for name, g in gains.items():
        lines.append(f"| {name} | {g['mean']:+.2f} | [{g['low']:+.2f}, {g['high']:+.2f}] |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(work / "results.md", text)
    atomic_write_text(work / "results.json", json.dumps({"rows": rows, "gains": gains, "plain_teacher": plain,
                                                         "own_teacher_mAP": own_metrics["mAP"]}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

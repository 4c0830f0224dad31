"""Where the gradient of a logit-distillation term goes, per label and per teacher confidence (issue 19).

    flock /tmp/cpu.lock .venv/bin/python benchmarks/logit_gradients.py \\
        --runs runs/ablation/scenes_large/runs/vanilla --teacher runs/accuracy/scenes_large/teacher

Why: on validation, MLD alone (binary KL per label, τ = 1, the balanced form's weight) gains more over the vanilla
student than the KD baseline (the same KL on logits divided by τ = 4), at any of three KD weights. Both terms vanish
exactly where the student's logits equal the teacher's; what differs is which (image, label) pairs carry their
gradient. This script measures that, with no training: for each finished student run in ``--runs`` (``seed<k>/``
with ``best.pt``) it takes the student's and the teacher's logits on a seeded subset of the run's training images
(read without augmentation, each model at its own size) and computes each term's gradient with respect to the
student's logits, per image and label, in the units the training objective applies (per image, at batch 64):

- ``BCE``: the task term, ``σ(z^s) − y`` (BCE is summed over the batch);
- ``KD τ=4, λ 10``: the KD baseline's default, ``(λ/64)·τ·(σ(z^s/τ) − σ(z^t/τ))``;
- ``KD τ=4, λ 192``: the same at the balanced MLD's weight;
- ``MLD τ=1, 3/image``: the default L2D's logit term, ``3·(σ(z^s) − σ(z^t))``.

For each term it reports the mean over images of ``Σ_k |g_ik|`` (its total pull), the share of that mass by the
teacher's probability ``σ(z^t)`` (confident negative < 0.01, 0.01–0.1, 0.1–0.9, 0.9–0.99, confident positive
> 0.99), and the share that pulls *against* the label (the sign of ``g`` opposite to BCE's: where the teacher says
the label is less certain than the target). The last is what the labels alone cannot give the student.
Means over the runs (seeds) are written to ``--output`` (default ``logit_gradients.md`` and ``.json`` in the folder
that holds the comparison, two levels above ``RUNS``: a comparison's own folder must hold nothing else).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import backbone_probe as bp  # noqa: E402
from mlkd.engine.checkpoint import model_from_checkpoint  # noqa: E402
from mlkd.engine.evaluate import ModelInput  # noqa: E402
from mlkd.files import atomic_write_text  # noqa: E402
from mlkd.losses.objective import BALANCED_WEIGHTS  # noqa: E402

BATCH = 64  # the reference batch size: batch-mean terms weigh 1/64 per image
BINS = ((0.0, 0.01), (0.01, 0.1), (0.1, 0.9), (0.9, 0.99), (0.99, 1.0))
BIN_NAMES = ("< 0.01", "0.01–0.1", "0.1–0.9", "0.9–0.99", "> 0.99")


@torch.no_grad()
def logits(model: torch.nn.Module, norm: ModelInput, images: torch.Tensor) -> np.ndarray:
    """``[n, q]`` float64 logits of ``model`` on ``images``, batched."""
    model.eval()
    out = [model(norm(images[i:i + bp.BATCH_SIZE])).logits.double() for i in range(0, len(images), bp.BATCH_SIZE)]
    return torch.cat(out).numpy()


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def term_gradients(zs: np.ndarray, zt: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Each term's gradient with respect to the student's logits, ``[n, q]``, in per-image units at batch 64."""
    def kd(lam: float, tau: float) -> np.ndarray:
        return (lam / BATCH) * tau * (sigmoid(zs / tau) - sigmoid(zt / tau))
    return {
        "BCE": sigmoid(zs) - y,
        "KD τ=4, λ 10": kd(10.0, 4.0),
        "KD τ=4, λ 192": kd(BALANCED_WEIGHTS["mld"] * BATCH, 4.0),
        "MLD τ=1, 3/image": BALANCED_WEIGHTS["mld"] * (sigmoid(zs) - sigmoid(zt)),
    }


def in_bin(p: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low <= p < high``; the last bin includes 1."""
    return (p >= low) & ((p < high) if high < 1.0 else (p <= high))


def describe(grads: dict[str, np.ndarray], zt: np.ndarray) -> dict[str, dict[str, float]]:
    """Total pull, share by teacher confidence, and share against the label, of every term."""
    pt = sigmoid(zt)
    bce_sign = np.sign(grads["BCE"])
    found = {}
    for name, g in grads.items():
        mass = np.abs(g)
        total = mass.sum()
        row = {"pull": float(total / len(g))}
        for (low, high), label in zip(BINS, BIN_NAMES):
            row[label] = float(mass[in_bin(pt, low, high)].sum() / total)
        row["against the label"] = float(mass[np.sign(g) == -bce_sign].sum() / total)
        found[name] = row
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="a method's folder of seed<k> runs (e.g. .../runs/vanilla)")
    parser.add_argument("--teacher", required=True, help="the teacher's run folder (with best.pt)")
    parser.add_argument("--max-train", type=int, default=2000, help="training images scored (seeded subset)")
    parser.add_argument("--output", help="output stem (default RUNS/logit_gradients)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    runs = sorted(p for p in Path(args.runs).glob("seed*") if (p / "best.pt").is_file())
    if not runs:
        print(f"no finished run (seed<k>/best.pt) in {args.runs}", file=sys.stderr)
        return 2
    cache = bp.ImageCache(args.max_train)
    teacher, state = model_from_checkpoint(Path(args.teacher) / "best.pt")
    t_size = int(state["config"]["img_size"])
    t_norm = ModelInput.from_stats(state.get("input_norm"), t_size)
    per_run = []
    for run in runs:
        student, s_state = model_from_checkpoint(run / "best.pt")
        config = s_state["config"]
        size = int(config["img_size"])
        train = cache.probe_train(config, size)
        zs = logits(student, ModelInput.from_stats(s_state.get("input_norm"), size), train.images)
        zt = logits(teacher, t_norm, cache.probe_train(config, t_size).images)
        per_run.append(describe(term_gradients(zs, zt, train.targets), zt))
    pt = sigmoid(zt)  # the teacher and the images are the same for every run
    share = {label: float(in_bin(pt, low, high).mean()) for (low, high), label in zip(BINS, BIN_NAMES)}
    terms = list(per_run[0])
    columns = ["pull", *BIN_NAMES, "against the label"]
    mean = {t: {c: float(np.mean([r[t][c] for r in per_run])) for c in columns} for t in terms}
    command = "python benchmarks/logit_gradients.py " + " ".join(sys.argv[1:])
    lines = [f"# Where each logit term's gradient goes (`{args.runs}`)", "",
             f"Command: `{command}` ({time.perf_counter() - t0:.0f} s); {len(runs)} student runs, "
             f"{len(train.targets)} training images each, gradients at the runs' best checkpoints.", "",
             "Share of the (image, label) pairs by the teacher's probability: "
             + ", ".join(f"{k} {100 * v:.1f} %" for k, v in share.items()) + ".", "",
             "| term | pull (Σ_k |g| per image) | " + " | ".join(f"share, p_t {c}" for c in BIN_NAMES)
             + " | share against the label |", "|---|---|" + "---|" * (len(BIN_NAMES) + 1)]
    for t in terms:
        m = mean[t]
        lines.append(f"| {t} | {m['pull']:.4f} | " + " | ".join(f"{100 * m[c]:.1f} %" for c in BIN_NAMES)
                     + f" | {100 * m['against the label']:.1f} % |")
    stem = Path(args.output) if args.output else Path(args.runs).resolve().parent.parent / "logit_gradients"
    text = "\n".join(lines) + "\n"
    atomic_write_text(stem.with_suffix(".md"), text)
    atomic_write_text(stem.with_suffix(".json"), json.dumps({"per_run": per_run, "mean": mean,
                                                             "teacher_share": share}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

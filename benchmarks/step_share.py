"""The distillation terms' share of a training step on the quadrants pair (CPU).

    .venv/bin/python benchmarks/step_share.py            # writes section step_share of docs/benchmarks.md

The `quadrants` setting's models (the demo's until issue 20) with random weights (timing does not
depend on them; nothing is downloaded): the
teacher tf_efficientnet_lite0 with the head of mlkd/configs/suite/quadrants.yaml (embed_dim 128, 4 heads, FFN 256)
at 112 px, the student tiny_cnn (embed_dim 64, 4 heads, FFN 128) at 56 px, 10 labels, batch 64, about
3.5 positives per image (the mosaics' density), float32. Timed, interleaved step by step:

- *teacher forward*: the frozen teacher on the batch, as the engine runs it without a cache;
- *vanilla step*: student forward, summed BCE, backward, Adam step;
- *L2D step*: the same with an L2D objective on the teacher's outputs (computed beforehand, so the step
  excludes the teacher, as with ``--cache-teacher``), in the paper's form (`L2DLoss()`) and in the form
  ``mlkd distill --method l2d`` runs (``create_distiller("l2d")``); both run as one fused autograd node
  on the CPU, and the default form is also timed through the shared general path (``_Objective.forward``,
  what CUDA and autocast run), side by side.

The distillation terms' share is (L2D step − vanilla step) / L2D step, without and with the teacher's
forward pass in the step.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import machine_line, publish  # noqa: E402
from _setup import STUDENT_SIZE, TEACHER_SIZE, quadrants_student, quadrants_teacher  # noqa: E402

from mlkd.losses import L2DLoss, create_distiller  # noqa: E402
from mlkd.losses.objective import _Objective  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = quadrants_teacher(10, img_size=TEACHER_SIZE).eval().requires_grad_(False)
    student = quadrants_student(10, img_size=STUDENT_SIZE).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(64, 3, 112, 112, generator=g), (torch.rand(64, 10, generator=g) < 0.35).float())
               for _ in range(4)]
    small = [torch.nn.functional.interpolate(x, size=56, mode="bilinear", antialias=True) for x, _ in batches]
    with torch.no_grad():
        t_outs = [teacher(x) for x, _ in batches]
    default = create_distiller("l2d")
    objectives = {"vanilla": create_distiller("vanilla"), "L2D, paper form": L2DLoss(),
                  "L2D, default form": default,
                  "L2D, default form, general path": lambda *a: _Objective.forward(default, *a)}

    def teacher_forward(i: int) -> None:
        teacher(batches[i][0])

    def step(name: str):
        def run(i: int) -> None:
            loss = objectives[name](student(small[i]), t_outs[i], batches[i][1])
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            optimizer.step()
        return run

    timed = {"teacher forward": teacher_forward, **{name: step(name) for name in objectives}}
    times: dict[str, list[float]] = {name: [] for name in timed}
    names = list(timed)
    for r in range(args.repeats + 3):
        # The teacher's large forward pass evicts the caches: run it last and rotate the steps' order
        # each round, so that no objective always follows it.
        shift = r % len(objectives)
        order = names[1:][shift:] + names[1:][:shift] + names[:1]
        for name in order:
            t0 = time.perf_counter()
            timed[name](r % len(batches))
            if r >= 3:
                times[name].append((time.perf_counter() - t0) * 1e3)
    ms = {name: statistics.median(v) for name, v in times.items()}
    teacher_ms, vanilla = ms["teacher forward"], ms["vanilla"]
    lines = [
        "## Distillation terms' share of a training step (quadrants pair, CPU)",
        "",
        "Command: `flock /tmp/mlkd-cpu.lock .venv/bin/python benchmarks/step_share.py`. Demo teacher "
        "(tf_efficientnet_lite0 at 112 px) and student (tiny_cnn, embed_dim 64, at 56 px), random weights, "
        "10 labels, batch 64, float32; medians of "
        f"{args.repeats} steps after 3 warm-up steps, interleaved in rotating order. A step is student forward + objective + "
        "backward + Adam step; the teacher's forward pass is timed apart (a step with `--cache-teacher` "
        "does not run it). *share* = (L2D step − vanilla step) / L2D step.",
        "",
        f"Teacher forward pass: {teacher_ms:.1f} ms per batch. Vanilla step: {vanilla:.1f} ms.",
        "",
        "| objective | step (ms) | terms (ms) | share of the step | share of step + teacher forward |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in objectives:
        if name == "vanilla":
            continue
        extra = ms[name] - vanilla
        lines.append(f"| {name} | {ms[name]:.1f} | {extra:.2f} | {100 * extra / ms[name]:.1f} % | "
                     f"{100 * extra / (ms[name] + teacher_ms):.1f} % |")
    lines += ["", machine_line()]
    publish("step_share", lines, write=not args.no_write)


if __name__ == "__main__":
    main()

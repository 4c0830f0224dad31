"""Forward + backward time of the L2D objective with fresh tensors each call, against the loop code.

Run from the repository root (inside the shared CPU lock on a shared machine):

    .venv/bin/python benchmarks/loss_speed.py            # writes section loss_speed of docs/benchmarks.md
    .venv/bin/python benchmarks/loss_speed.py --quick    # fewer repeats, prints the table only
    .venv/bin/python benchmarks/loss_speed.py --no-write # full repeats, prints the table only

Every call gets fresh inputs, as a training step does: the inputs rotate through a pool of distinct
tensors (so none is still in the CPU caches from the previous call) and every call allocates a fresh
gradient. All variants run side by side, interleaved call by call in one process (in an order drawn
afresh every round), so that they see the same machine load and the same memory-allocator state:

- *loop*: the official objective written as loops (tests/reference_losses.py: a Python loop over labels
  and images with boolean row selection and a host sync per set, as in the paper's code):
  BCE_sum + 10·MLD + 100·CD + 1000·ID;
- *L2DLoss*: `mlkd.losses.L2DLoss()` (the paper's form and weights), value checks on, as training runs it;
- *L2DLoss, no checks*: the same with ``validate=False``;
- *general path*: the same objective through the shared `_Objective.forward` path that CUDA, autocast
  and gathered embeddings take (on the CPU both L2D forms run as one fused autograd node instead);
- *functional*: ``bce_sum_loss + 10·mld_loss + 100·cd_loss + 1000·id_loss`` added by the user;
- *floor*: BCE_sum plus gathering the student's positive embeddings and back-propagating their sum into
  the full [N, q, d] tensor: the work no implementation of CD/ID can avoid.

Shapes (N, q, d) with about k positives per image (each label positive with probability k/q):
(64, 80, 768) k = 3 (MS-COCO-like) and (32, 1000, 768) k = 5.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the loop reference lives with the tests that check it
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import machine_line, write_section  # noqa: E402
from reference_losses import cd_ref, id_ref, mld_ref  # noqa: E402

from mlkd.losses import L2DLoss, bce_sum_loss, cd_loss, id_loss, mld_loss  # noqa: E402
from mlkd.losses.objective import _Objective  # noqa: E402
from mlkd.outputs import ModelOutput  # noqa: E402

SHAPES = [("MS-COCO-like", 64, 80, 768, 3.0), ("1,000 labels", 32, 1000, 768, 5.0)]
Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_inputs(n: int, q: int, d: int, k: float, seed: int = 0) -> Inputs:
    """Random logits, embeddings (student requires grad) and labels with about k positives per image."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, q, generator=g) < k / q).float()
    zs = torch.randn(n, q, generator=g).requires_grad_(True)
    zt = torch.randn(n, q, generator=g)
    es = torch.randn(n, q, d, generator=g).requires_grad_(True)
    et = torch.randn(n, q, d, generator=g)
    return zs, zt, es, et, y


def variants() -> dict[str, Callable[..., torch.Tensor]]:
    """Each variant maps (zs, zt, es, et, y) to the scalar it back-propagates."""
    checked, unchecked = L2DLoss(), L2DLoss(validate=False)
    return {
        "loop": lambda zs, zt, es, et, y: (F.binary_cross_entropy_with_logits(zs, y, reduction="sum")
                                           + 10 * mld_ref(zs, zt) + 100 * cd_ref(es, et, y, fast=True)
                                           + 1000 * id_ref(es, et, y, fast=True)),
        "l2d": lambda zs, zt, es, et, y: checked(ModelOutput(zs, es), ModelOutput(zt, et), y).total,
        "l2d_unchecked": lambda zs, zt, es, et, y: unchecked(ModelOutput(zs, es), ModelOutput(zt, et), y).total,
        "general": lambda zs, zt, es, et, y: _Objective.forward(checked, ModelOutput(zs, es), ModelOutput(zt, et),
                                                                y).total,
        "functional": lambda zs, zt, es, et, y: (bce_sum_loss(zs, y) + 10 * mld_loss(zs, zt)
                                                 + 100 * cd_loss(es, et, y) + 1000 * id_loss(es, et, y)),
        "floor": lambda zs, zt, es, et, y: (F.binary_cross_entropy_with_logits(zs, y, reduction="sum")
                                            + es[y.bool()].sum()),
    }


def time_shape(n: int, q: int, d: int, k: float, quick: bool) -> dict[str, float]:
    """Median ms of every variant at one shape, interleaved call by call; values checked first."""
    pool = [make_inputs(n, q, d, k, seed) for seed in range(4 if q <= 100 else 2)]
    fns = variants()
    zs, zt, es, et, y = pool[0]
    want = fns["loop"](zs.double(), zt.double(), es.double(), et.double(), y.double()).item()
    for name in ("l2d", "l2d_unchecked", "general", "functional"):
        got = fns[name](zs, zt, es, et, y).item()
        if abs(got - want) > 1e-4 * abs(want):
            raise RuntimeError(f"{name} {got} and the loop {want} disagree at {(n, q, d)}")
    rounds, loop_rounds = (8, 2) if quick else ((60, 15) if q <= 100 else (25, 5))
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds + 2):  # two warm-up rounds
        # A fresh order every round, so that no variant always runs after the same one (the second of
        # two similar calls finds warm caches and freshly freed buffers of its size).
        for name in random.Random(r).sample(names, len(names)):
            fn = fns[name]
            if name == "loop" and r >= loop_rounds + 2:
                continue
            zs, zt, es, et, y = pool[r % len(pool)]
            zs, es = zs.detach().requires_grad_(True), es.detach().requires_grad_(True)  # fresh gradients
            start = time.perf_counter()
            fn(zs, zt, es, et, y).backward()
            elapsed = (time.perf_counter() - start) * 1e3
            if r >= 2:
                times[name].append(elapsed)
    out = {name: statistics.median(v) for name, v in times.items()}
    out["positives"] = float(pool[0][4].sum())
    return out


def run(quick: bool) -> tuple[str, str]:
    """Time every shape; return the markdown table and a summary of the targets."""
    torch.manual_seed(0)
    lines = [
        "| shape | (N, q, d) | positives | loop (ms) | L2DLoss (ms) | L2DLoss, no checks (ms) | general path (ms) "
        "| functional (ms) | floor (ms) | loop / L2DLoss | loop / functional | L2DLoss / floor "
        "| L2DLoss − floor (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    above = {}
    for name, n, q, d, k in SHAPES:
        t = time_shape(n, q, d, k, quick)
        above[q] = t["l2d"] - t["floor"]
        lines.append(
            f"| {name} | ({n}, {q}, {d}) | {int(t['positives'])} | {t['loop']:.1f} | {t['l2d']:.2f} | "
            f"{t['l2d_unchecked']:.2f} | {t['general']:.2f} | {t['functional']:.2f} | {t['floor']:.2f} | {t['loop'] / t['l2d']:.0f}× | "
            f"{t['loop'] / t['functional']:.0f}× | {t['l2d'] / t['floor']:.2f}× | {above[q]:.2f} |"
        )
    summary = (f"Time above the floor at 1,000 labels / at 80 labels: {above[1000]:.2f} / {above[80]:.2f} ms "
               f"= {above[1000] / above[80]:.2f}×.")
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; print only, do not write docs")
    parser.add_argument("--no-write", action="store_true", help="full repeats, but print only, do not write docs")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own, one per core)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    table, summary = run(args.quick)
    command = (".venv/bin/python benchmarks/loss_speed.py" + (" --quick" if args.quick else "")
               + (f" --threads {args.threads}" if args.threads is not None else ""))
    section = "\n".join([
        "## Loss speed: the L2D objective, forward + backward, fresh tensors each call",
        "",
        f"Command: `flock /tmp/mlkd-cpu.lock {command}` (the flock keeps other jobs of this shared machine "
        "off the CPU while it runs)  ",
        machine_line(),
        "",
        "Median wall time of one forward + backward, float32, student and teacher d = 768, each label "
        "positive with probability k/q. Every call gets inputs it has not seen in the previous calls "
        "(a pool of distinct tensors) and allocates a fresh gradient, as a training step does; all "
        "columns are interleaved call by call in one process, in an order drawn afresh every round. *loop*: the official objective "
        "BCE_sum + 10·MLD + 100·CD + 1000·ID written as Python loops over labels and images "
        "(tests/reference_losses.py). *L2DLoss*: `L2DLoss()` with its value checks, which look at the "
        "finished total and read the [N, q, d] inputs only when it is not finite (on the CPU one fused "
        "autograd node). *general path*: the same objective through the shared path that CUDA, autocast "
        "and gathered embeddings take. *functional*: "
        "`bce_sum_loss + 10·mld_loss + 100·cd_loss + 1000·id_loss`. *floor*: BCE_sum plus gathering the "
        "positive student embeddings and back-propagating their sum into the full [N, q, d] tensor.",
        "",
        table,
        "",
        summary,
        "",
        "On this shared 2-core VM the absolute times move by up to about 1.5× between runs (other jobs, "
        "page faults when a fresh [N, q, d] gradient gets new pages from the OS); compare columns within "
        "one run.",
    ])
    print(section)
    if not (args.quick or args.no_write):
        write_section("loss_speed", section)


if __name__ == "__main__":
    main()

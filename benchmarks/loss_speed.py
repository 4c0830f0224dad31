"""Forward + backward time of the L2D terms (MLD + CD + ID): vectorised vs the loop reference.

Run from the repository root:

    .venv/bin/python benchmarks/loss_speed.py            # full run, writes section loss_speed of docs/benchmarks.md
    .venv/bin/python benchmarks/loss_speed.py --quick    # fewer repeats, prints the table only
    .venv/bin/python benchmarks/loss_speed.py --threads 1  # pin torch's intra-op threads

On a machine shared with another CPU-bound job, torch's default of one thread per core makes every
parallel region wait for a thread that is not scheduled, and the timings then measure that wait
(the same few-ms quantum for every variant) rather than the work; ``--threads 1`` keeps them
meaningful. The thread count is part of the machine line of the written section.

Shapes (N, q, d) with about k positives per image (each label positive with probability k/q):
(64, 80, 768) k=3 (MS-COCO-like), (64, 20, 768) k=1.5 (VOC-like), (32, 1000, 768) k=5.
"Floor": gather the student's positive embeddings and back-propagate their sum into the full
[N, q, d] tensor, the work no implementation of CD or ID can avoid.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the loop reference lives with the tests that check it
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import machine_line, write_section  # noqa: E402
from reference_losses import cd_ref, id_ref, mld_ref  # noqa: E402

from mlkd.losses import led_loss, mld_loss  # noqa: E402

SHAPES = [("MS-COCO-like", 64, 80, 768, 3.0), ("VOC-like", 64, 20, 768, 1.5), ("1,000 labels", 32, 1000, 768, 5.0)]


def make_inputs(n: int, q: int, d: int, k: float, seed: int = 0):
    """Random logits, embeddings (student requires grad) and labels with about k positives per image."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, q, generator=g) < k / q).float()
    zs = torch.randn(n, q, generator=g).requires_grad_(True)
    zt = torch.randn(n, q, generator=g)
    es = torch.randn(n, q, d, generator=g).requires_grad_(True)
    et = torch.randn(n, q, d, generator=g)
    return zs, zt, es, et, y


def median_ms(fn: Callable[[], None], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` in milliseconds after ``warmup`` untimed calls.

    The median, not the mean, because a shared machine adds rare long stalls.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_shape(n: int, q: int, d: int, k: float, quick: bool) -> dict[str, float]:
    """Times (ms) of the four variants at one shape; checks that vectorised and loop agree first."""
    zs, zt, es, et, y = make_inputs(n, q, d, k)

    def clear() -> None:
        zs.grad = None
        es.grad = None

    def vectorised(validate: bool) -> Callable[[], None]:
        def run() -> None:
            clear()
            (mld_loss(zs, zt, validate=validate)
             + led_loss(es, et, y, lambda_cd=1.0, lambda_id=1.0, validate=validate)).backward()
        return run

    def loop() -> None:
        clear()
        (mld_ref(zs, zt) + cd_ref(es, et, y, fast=True) + id_ref(es, et, y, fast=True)).backward()

    def floor() -> None:
        clear()
        es[y.bool()].sum().backward()

    fast = (mld_loss(zs, zt) + led_loss(es, et, y, lambda_cd=1.0, lambda_id=1.0)).item()
    slow = (mld_ref(zs, zt) + cd_ref(es, et, y, fast=True) + id_ref(es, et, y, fast=True)).item()
    if abs(fast - slow) > 1e-4 * abs(slow):
        raise RuntimeError(f"vectorised {fast} and loop {slow} disagree at {(n, q, d)}")
    reps, loop_reps = (10, 2) if quick else (100, 7)
    return {
        "loop": median_ms(loop, loop_reps, 1),
        "vec": median_ms(vectorised(False), reps, 3),
        "vec_checked": median_ms(vectorised(True), reps, 3),
        "floor": median_ms(floor, reps, 3),
        "positives": float(y.sum()),
    }


def run(quick: bool) -> str:
    """Time every shape and return the markdown table."""
    torch.manual_seed(0)
    lines = [
        "| shape | (N, q, d) | positives | loop (ms) | vectorised (ms) | with value checks (ms) | floor (ms) "
        "| loop / vectorised | vectorised / floor | vectorised − floor (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, n, q, d, k in SHAPES:
        t = time_shape(n, q, d, k, quick)
        lines.append(
            f"| {name} | ({n}, {q}, {d}) | {int(t['positives'])} | {t['loop']:.1f} | {t['vec']:.2f} | "
            f"{t['vec_checked']:.2f} | {t['floor']:.2f} | {t['loop'] / t['vec']:.0f}× | "
            f"{t['vec'] / t['floor']:.1f}× | {t['vec'] - t['floor']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; print only, do not write docs")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own, one per core)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    table = run(args.quick)
    command = ("python benchmarks/loss_speed.py" + (" --quick" if args.quick else "")
               + (f" --threads {args.threads}" if args.threads is not None else ""))
    section = "\n".join([
        "## Loss speed: MLD + CD + ID, forward + backward",
        "",
        f"Command: `{command}`  ",
        machine_line(),
        "",
        "Median wall time of one forward + backward of `mld_loss + led_loss` with λ_CD = λ_ID = 1 "
        "(i.e. MLD + CD + ID; `led_loss` gathers the positives once for both terms, as `L2DLoss` does), "
        "with `validate=False` "
        "and with the default value checks) against the loop implementation of tests/reference_losses.py "
        "(a Python loop over labels and images with boolean row selection, as in the paper's code), "
        "float32, student and teacher d = 768. Each label is positive with probability k/q "
        "(k = 3, 1.5, 5 positives per image). Floor: gather the positive student embeddings and "
        "back-propagate their sum into the full [N, q, d] tensor.",
        "",
        table,
        "",
        "Timings on a shared 2-core VM move by up to about 1.5× between runs (other jobs, page faults "
        "when the [N, q, d] gradient is freshly allocated); compare columns within one run.",
    ])
    print(section)
    if not args.quick:
        write_section("loss_speed", section)


if __name__ == "__main__":
    main()

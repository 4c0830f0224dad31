"""Training speed with 1 and 2 torch threads, on an idle machine and beside a busy process.

    flock /tmp/mlkd-cpu.lock .venv/bin/python benchmarks/threads.py   # writes section threads of docs/benchmarks.md

"Busy" runs one CPU-bound Python process (``while True: pass``) beside the measurement, as another
job on a shared machine would. Each cell is the training throughput (student forward, BCE, backward,
Adam step; random images) over at least 3 s after two warm-up steps. The script also reports what the
automatic choice of `mlkd.engine.threads.choose_threads` picks in both conditions, and whether 1 and 2
threads give bitwise equal weights after a few steps (they decide whether a rerun with another thread
count reproduces a run exactly).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import machine_line, write_section  # noqa: E402

from mlkd.engine.threads import busy_cores, choose_threads  # noqa: E402
from mlkd.losses import create_distiller  # noqa: E402
from mlkd.models import create_model  # noqa: E402

# (label, model, img_size, batch, model options)
MODELS = [
    ("tiny_cnn, 56 px (the demo's student)", "tiny_cnn", 56, 64, {"embed_dim": 64, "num_heads": 4, "ffn_dim": 128}),
    ("tf_efficientnet_lite0, 112 px (the demo's teacher)", "tf_efficientnet_lite0", 112, 32,
     {"embed_dim": 128, "num_heads": 4, "ffn_dim": 256}),
    ("resnet18, 112 px", "resnet18", 112, 32, {"embed_dim": 128, "num_heads": 4, "ffn_dim": 256}),
]
NUM_CLASSES = 10


def images_per_second(name: str, img_size: int, batch: int, options: dict, threads: int, seconds: float) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, img_size=img_size, **options).train()
    loss = create_distiller("vanilla")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, img_size, img_size)
    y = (torch.rand(batch, NUM_CLASSES) < 0.3).float()

    def step() -> None:
        out = loss(model(x), None, y)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()

    for _ in range(2):
        step()
    steps, t0 = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - t0 < seconds:
        step()
        steps += 1
    return steps * batch / (time.perf_counter() - t0)


def weights_after_steps(threads: int, steps: int = 5) -> torch.Tensor:
    """All parameters of a tiny_cnn after ``steps`` Adam steps, flattened."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model("tiny_cnn", NUM_CLASSES, img_size=56, embed_dim=64, num_heads=4, ffn_dim=128,
                         dropout=0.0).train()
    loss = create_distiller("vanilla")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.rand(64, 3, 56, 56, generator=gen)
        y = (torch.rand(64, NUM_CLASSES, generator=gen) < 0.3).float()
        out = loss(model(x), None, y)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per cell")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    default = torch.get_num_threads()
    # The first model built in a process pays one-time set-up costs: a throwaway cell absorbs them.
    images_per_second(*MODELS[0][1:], threads=default, seconds=1.0)
    rows, auto = [], {}
    for condition in ("idle", "busy"):
        hog = None
        if condition == "busy":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            auto[condition] = (busy_cores(), choose_threads(None))
            for label, name, size, batch, options in MODELS:
                rates = {n: images_per_second(name, size, batch, options, n, args.seconds) for n in (1, 2)}
                rows.append((label, condition, batch, rates[1], rates[2]))
                print(f"{condition:5} {label:52} 1 thread {rates[1]:8.1f} img/s   2 threads {rates[2]:8.1f} img/s",
                      flush=True)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    torch.set_num_threads(default)
    diff = (weights_after_steps(1) - weights_after_steps(2)).abs().max().item()
    same = (weights_after_steps(2) - weights_after_steps(2)).abs().max().item()
    print(f"tiny_cnn weights after 5 steps, 1 vs 2 threads: max |difference| {diff:.3g}; 2 vs 2: {same:.3g}")
    for condition, (busy, choice) in auto.items():
        print(f"automatic choice, {condition}: {busy:.2f} cores busy -> {choice.threads} thread(s) ({choice.reason})")

    lines = ["## Threads: idle and busy machine", "",
             "Command: `flock /tmp/mlkd-cpu.lock .venv/bin/python benchmarks/threads.py`. Training throughput "
             "(forward, BCE, backward, Adam step on random images) in images/s with 1 and 2 torch threads; "
             "*busy* = one CPU-bound process (`while True: pass`) running beside it, as another job on a shared "
             "machine.", "",
             "| model | machine | batch | 1 thread | 2 threads | best |", "|---|---|---:|---:|---:|---|"]
    for label, condition, batch, one, two in rows:
        best = "1 thread" if one > two else "2 threads"
        ratio = max(one, two) / min(one, two)
        lines.append(f"| {label} | {condition} | {batch} | {one:.1f} | {two:.1f} | {best} ({ratio:.2f}×) |")
    lines += ["", "The automatic choice (`--threads` unset; `mlkd.engine.threads.choose_threads`) samples the cores "
              "busy with other processes for 0.25 s (`/proc/stat` minus this process's own time) and keeps torch's "
              "default while the free cores allow it:", ""]
    for condition, (busy, choice) in auto.items():
        lines.append(f"- {condition}: {busy:.2f} cores busy → {choice.threads} thread(s)")
    lines += ["", f"Weights of a tiny_cnn after 5 Adam steps with 1 vs 2 threads: max |difference| {diff:.3g} "
              f"({'bitwise equal' if diff == 0 else 'not bitwise equal'}; two runs with 2 threads: {same:.3g}), so "
              + ("the thread count does not change results." if diff == 0 else
                 "an exact rerun needs the same thread count: pass `--threads N` where reruns must match."),
              "", machine_line()]
    if not args.no_write:
        write_section("threads", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

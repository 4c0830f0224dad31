"""What inference-only settings buy for the teacher's forward pass on the CPU.

    .venv/bin/python benchmarks/teacher_speed.py            # writes section teacher_speed of docs/benchmarks.md
    .venv/bin/python benchmarks/teacher_speed.py --no-compile --no-write

The `quadrants` setting's teacher (the demo's until issue 20; tf_efficientnet_lite0 with the head of
mlkd/configs/suite/quadrants.yaml: embed_dim 128, 4 heads,
FFN 256, 10 labels) with random weights (timing does not depend on them; nothing is downloaded), a batch
of 64 images at 112 px, float32. Each setting is timed (median of the timed calls after warm-up calls,
all settings interleaved call by call) and its outputs are compared with the plain forward pass:

- *plain*: ``teacher(x)`` as the engine calls it (parameters frozen, so autograd records nothing);
- *no_grad*, *inference_mode*: the same inside `torch.no_grad` / `torch.inference_mode`;
- *channels_last*: model and input in NHWC memory format (oneDNN's preferred layout), inference mode;
- *bf16 autocast*: ``torch.autocast("cpu", dtype=torch.bfloat16)``, inference mode, outputs cast back;
- *compile*: ``torch.compile(teacher)`` (default mode), inference mode; its compile time is listed apart.
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
from _setup import TEACHER_SIZE, quadrants_teacher  # noqa: E402


def max_rel_diff(out, ref) -> float:
    """Largest |a − b| / max|b| over logits and label-wise embeddings."""
    worst = 0.0
    for a, b in ((out.logits, ref.logits), (out.label_embeddings, ref.label_embeddings)):
        worst = max(worst, float((a.float() - b).abs().max() / b.abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = quadrants_teacher(10, img_size=TEACHER_SIZE).eval().requires_grad_(False)
    nhwc = quadrants_teacher(10, img_size=TEACHER_SIZE)
    nhwc.load_state_dict(model.state_dict())
    nhwc = nhwc.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    x = torch.rand(64, 3, 112, 112)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)

    def plain():
        return model(x)

    def no_grad():
        with torch.no_grad():
            return model(x)

    def inference():
        with torch.inference_mode():
            return model(x)

    def channels_last():
        with torch.inference_mode():
            return nhwc(x_nhwc)

    def bf16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    settings = {"plain": plain, "no_grad": no_grad, "inference_mode": inference,
                "channels_last": channels_last, "bf16 autocast": bf16}
    compile_s = None
    if not args.no_compile:
        compiled = torch.compile(model)

        def compiled_fn():
            with torch.inference_mode():
                return compiled(x)

        t0 = time.perf_counter()
        compiled_fn()
        compile_s = time.perf_counter() - t0
        settings["compile"] = compiled_fn
    ref = plain()
    diffs = {name: max_rel_diff(fn(), ref) for name, fn in settings.items()}
    times: dict[str, list[float]] = {name: [] for name in settings}
    for r in range(args.repeats + 2):
        for name, fn in settings.items():
            t0 = time.perf_counter()
            fn()
            if r >= 2:
                times[name].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(times["plain"])
    lines = [
        "## Teacher forward pass: inference-only settings (CPU)",
        "",
        "Command: `flock /tmp/mlkd-cpu.lock .venv/bin/python benchmarks/teacher_speed.py`. The quadrants teacher "
        "(tf_efficientnet_lite0, quadrants head, random weights), batch 64 at 112 px, float32; median of "
        f"{args.repeats} calls after 2 warm-up calls, all settings interleaved. *difference* is the largest "
        "|output − plain output| / max|plain output| over logits and label-wise embeddings.",
        "",
        "| setting | ms / batch | vs plain | difference |",
        "|---|---:|---:|---:|",
    ]
    for name, ts in times.items():
        t = statistics.median(ts)
        lines.append(f"| {name} | {t:.1f} | {base / t:.2f}× | {diffs[name]:.1e} |")
    if compile_s is not None:
        lines += ["", f"torch.compile: first call (compilation) {compile_s:.1f} s."]
    lines += ["", machine_line()]
    publish("teacher_speed", lines, write=not args.no_write)


if __name__ == "__main__":
    main()

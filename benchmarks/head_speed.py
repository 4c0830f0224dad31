"""Speed and memory of the label-wise head for growing label spaces (q = 80, 1000, 9600).

Setting: d = 768, 8 heads, FFN 2048, dropout 0.1, a 7×7 map of C_in = 512 channels (ResNet-18/34 at
224 px), batch N = 8, float32 on CPU. The head alone is measured (no backbone).

Each configuration runs in a fresh subprocess so that its peak resident memory (``ru_maxrss``, the
high-water mark of the whole process as the OS sees it) belongs to that configuration only. The table
gives that peak and its growth over the process's RSS just before the first forward (Python, torch,
the head's parameters and the inputs already loaded): the growth is what the forward+backward of the
head needs on top of the model.

    python benchmarks/head_speed.py            # writes the head_speed section of docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

N, D, C_IN, TOKENS = 8, 768, 512, 49
# (q, chunk_labels): None is the head's default (chunks of 256 labels above 2048 labels, else one
# chunk = q, the unchunked layer); the others force a chunking for comparison.
CONFIGS = ((80, None), (1000, None), (1000, 256), (9600, None), (9600, 9600))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(q: int, repeats: int, chunk: int | None) -> dict:
    """Time and peak memory of one configuration, in this process (``chunk``: the head's
    ``chunk_labels``; None for its default)."""
    from mlkd.models.head import LabelWiseHead

    torch.manual_seed(0)
    extra = {} if chunk is None else {"chunk_labels": chunk}
    head = LabelWiseHead(C_IN, q, embed_dim=D, num_heads=8, ffn_dim=2048, dropout=0.1, **extra)
    tokens = torch.randn(N, TOKENS, C_IN)
    targets = torch.randint(0, 2, (N, q)).float()
    base = _rss_mib()

    def train_step() -> None:
        head.zero_grad(set_to_none=True)
        _, logits = head(tokens)
        F.binary_cross_entropy_with_logits(logits, targets, reduction="sum").backward()

    head.train()
    train_step()  # warm-up
    train = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        train_step()
        train.append(time.perf_counter() - t0)
    peak_train = _rss_mib()
    head.eval()
    infer = []
    with torch.no_grad():
        head(tokens)
        for _ in range(repeats):
            t0 = time.perf_counter()
            head(tokens)
            infer.append(time.perf_counter() - t0)
    return {
        "q": q, "chunk": head.chunk_labels, "params_m": sum(p.numel() for p in head.parameters()) / 1e6,
        "train_s": statistics.median(train), "infer_s": statistics.median(infer),
        "base_mib": base, "peak_mib": peak_train, "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", type=int, help="internal: measure one q in this process, print JSON")
    parser.add_argument("--chunk", type=int, default=None, help="internal: chunk_labels of --one")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.repeats, args.chunk)))
        return

    from _report import machine_line, publish  # benchmarks/ is on sys.path when run by path

    load_before = os.getloadavg()[0]
    rows = []
    for q, chunk in CONFIGS:
        cmd = [sys.executable, __file__, "--one", str(q), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd + ([] if chunk is None else ["--chunk", str(chunk)]),
                             check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(r, file=sys.stderr)
    emb_mib = {r["q"]: N * r["q"] * D * 4 / 2**20 for r in rows}
    chunk_note = ("*chunk* is the head's `chunk_labels`: with more labels than that, the decoder layer runs "
                  "label chunk by label chunk and recomputes each chunk in backward (activation "
                  "checkpointing); a chunk equal to q is the unchunked layer.")
    lines = [
        "## Label-wise head: time and memory vs number of labels",
        "",
        f"Head alone (d = {D}, 8 heads, FFN 2048, dropout 0.1), {TOKENS} tokens of {C_IN} channels "
        f"(a 7×7 map), batch N = {N}, float32, CPU. Times are medians of {args.repeats} runs after one "
        "warm-up; *train* = forward + BCE + backward, *inference* = eval-mode forward without autograd. "
        "Memory is the process's peak resident set (`ru_maxrss`) in a fresh subprocess per row, and its "
        "growth over the RSS measured just before the first forward (interpreter, torch, head and "
        "inputs loaded); for scale, one `[N, q, d]` float32 tensor is listed too. " + chunk_note,
        "",
        "| q | chunk | head params (M) | train step (s) | inference (s) | peak RSS (MiB) | growth (MiB) "
        "| one [N,q,d] (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['q']} | {r['chunk']} | {r['params_m']:.2f} | {r['train_s']:.3f} | {r['infer_s']:.3f} | "
                     f"{r['peak_mib']:.0f} | {r['peak_mib'] - r['base_mib']:.0f} | {emb_mib[r['q']]:.0f} |")
    # Other processes share the CPU on a busy machine; the 1-minute load average tells a reader how much.
    lines += ["", machine_line(),
              f"1-minute load average before / after the runs: {load_before:.2f} / {os.getloadavg()[0]:.2f}.",
              "", "Command: `python benchmarks/head_speed.py`"]
    publish("head_speed", lines, write=not args.no_write)


if __name__ == "__main__":
    main()

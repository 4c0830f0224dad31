"""The teacher-cache fill under DDP: how many images each process runs the teacher on, and for how long.

    .venv/bin/python benchmarks/ddp_cache.py                      # this checkout
    .venv/bin/python benchmarks/ddp_cache.py --repo ../mlkd-old   # another checkout (e.g. a worktree of HEAD)

The same small CPU distillation with `--cache-teacher` runs twice, as one process and under
`torchrun --nproc_per_node=N` with gloo (N = `--nproc`, default 2): a randomly initialised
EfficientNet-Lite0 teacher at 112 px (timing does not depend on its weights), a `tiny_cnn` student at
56 px, L2D, `fashion_mosaic` built from synthetic Fashion-MNIST-shaped images, no augmentation (one
view: the first epoch fills the cache, later epochs read it). Every process gets `--threads` torch
threads (default: the cores divided by N), so the N-process run uses the whole machine.

What is measured, in each process, wraps `mlkd.engine.teacher_cache.fill_view` (the per-epoch cache
fill) of the checkout under test, whatever its version: the seconds spent in it and the images it
reports the teacher saw. Nothing in the library is switched; the code of ``--repo`` runs as it is, so
the "before" of a change is measured by pointing ``--repo`` at a checkout of the old commit:

    git worktree add /tmp/mlkd-before OLD_COMMIT && .venv/bin/python benchmarks/ddp_cache.py --repo /tmp/mlkd-before

The script prints a Markdown table (and writes JSON with ``--json``); it writes no documentation.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _worker(repo: Path, record: Path, argv: list[str]) -> int:
    """Run ``mlkd ARGV`` from ``repo`` with `fill_view` timed; write this process's record into ``record``."""
    sys.path.insert(0, str(repo))
    import mlkd.engine.teacher_cache as teacher_cache

    if not Path(teacher_cache.__file__).resolve().is_relative_to(repo):
        raise RuntimeError(f"mlkd was imported from {teacher_cache.__file__}, not from --repo {repo}")
    original, calls = teacher_cache.fill_view, []

    def timed_fill(*args, **kwargs):
        t0 = time.perf_counter()
        images = original(*args, **kwargs)
        calls.append({"images": images, "seconds": time.perf_counter() - t0})
        return images

    # Modules that imported the function by name (the trainer) hold their own reference: replace every one.
    for name, module in list(sys.modules.items()):
        if name == "mlkd" or name.startswith("mlkd."):
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, timed_fill)
    from mlkd.cli import main

    t0 = time.perf_counter()
    code = main(argv)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    (record / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": world, "calls": calls, "seconds": time.perf_counter() - t0}))
    return code


def _prepare(work: Path) -> tuple[Path, Path]:
    """Synthetic data and a random teacher checkpoint, made with this checkout's code."""
    # Imported here, not at the top: a worker must import mlkd from --repo before anything else does.
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]
    from _setup import TEACHER_SIZE, teacher_checkpoint
    from synthetic import write_fashion_like

    from mlkd.data import create_dataset

    root = write_fashion_like(work / "data", n_train=2000, n_test=200)
    classes = create_dataset("fashion_mosaic", str(root), "test", num_mosaics=1).classes
    return root, teacher_checkpoint(work / "teacher.pt", classes, TEACHER_SIZE)


def _launch(args, nproc: int, work: Path, root: Path, teacher: Path) -> dict:
    """One distillation with ``nproc`` processes; its per-rank records and wall time."""
    from _setup import STUDENT_MODEL, STUDENT_HEAD, STUDENT_SIZE

    record = work / f"records_{nproc}"
    head = [f for k, v in STUDENT_HEAD.items() for f in ("--model-option", f"{k}={v}")]
    record.mkdir()
    distill = ["distill", "--teacher", str(teacher), "--method", "l2d", "--cache-teacher", "--no-augment",
               "--dataset", "fashion_mosaic", "--data-root", str(root), "--dataset-option",
               f"num_mosaics={args.mosaics}", "--img-size", str(STUDENT_SIZE), "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs), "--lr", "2e-3", "--model", STUDENT_MODEL, *head, "--device", "cpu",
               "--threads", str(args.threads), "--quiet", "--output", str(work / f"run_{nproc}")]
    script = [str(Path(__file__).resolve()), "--worker", "--repo", str(args.repo), "--record", str(record), "--"]
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "PYTHONPATH": str(args.repo), "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *launcher, *script, *distill], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"the {nproc}-process run failed ({r.returncode}):\n{r.stderr[-4000:]}")
    ranks = [json.loads((record / f"rank{k}.json").read_text()) for k in range(nproc)]
    log = (work / f"run_{nproc}" / "log.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch_seconds"] for line in log]
    return {"processes": nproc, "wall_seconds": wall, "epoch_seconds": epochs, "ranks": ranks}


def _table(runs: list[dict]) -> str:
    """One row per process of each run."""
    lines = ["| processes | rank | teacher images (cache fill) | fill seconds | epoch seconds | whole command, s |",
             "|---:|---:|---:|---:|---|---:|"]
    for run in runs:
        for r in run["ranks"]:
            images = sum(c["images"] for c in r["calls"])
            seconds = sum(c["seconds"] for c in r["calls"])
            epochs = ", ".join(f"{s:.1f}" for s in run["epoch_seconds"])
            lines.append(f"| {run['processes']} | {r['rank']} | {images} | {seconds:.1f} | {epochs} | "
                         f"{run['wall_seconds']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose mlkd runs (default: this one)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the DDP run")
    parser.add_argument("--mosaics", type=int, default=1500, help="fashion_mosaic images (a tenth for validation)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores / nproc)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    args.repo = args.repo.resolve()
    if args.worker:
        return _worker(args.repo, args.record, rest[1:] if rest[:1] == ["--"] else rest)
    if not (args.repo / "mlkd" / "engine" / "teacher_cache.py").is_file():
        parser.error(f"--repo {args.repo} is not an mlkd checkout (no mlkd/engine/teacher_cache.py); give its root")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.nproc)
    work = Path(tempfile.mkdtemp(prefix="mlkd_ddp_cache_"))
    try:
        root, teacher = _prepare(work)
        runs = [_launch(args, n, work, root, teacher) for n in (1, args.nproc)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from _report import machine_line

    print(f"Checkout: {args.repo}. {args.mosaics} mosaics, {args.epochs} epochs, batch {args.batch_size} per process, "
          f"{args.threads} threads per process.\n{machine_line()}\n")
    print(_table(runs))
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                    if k not in ("worker", "record")}
        args.json.write_text(json.dumps({"settings": settings, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

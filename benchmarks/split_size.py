"""How many evaluation images it takes to tell two methods apart, and what choosing an epoch adds.

Issue 19 saw validation gains of 3-4 mAP points (140 carved images) that did not hold on 600 test images.
This script splits the disagreement between validation and test into its parts, from the finished runs of
one comparison (``mlkd bench`` / ``benchmarks/accuracy.py``; each run folder holds ``test_scores.npz``,
``log.jsonl`` and ``metrics.json``):

- **image noise**: the spread of one seed's paired mAP difference (method A - method B) over evaluation
  sets of n images drawn from the same population. It is estimated by drawing n of the test images with
  replacement (a bootstrap of size n) and shrinks as 1/sqrt(n); it is what a validation split of n images
  adds to each comparison it makes.
- **seed noise**: the spread of the full test-set difference over seeds (training randomness); a larger
  split does not shrink it, more seeds do.
- **epoch-choice bias**: how much higher the best epoch's validation mAP is than the final epoch's. A run's
  ``best_val_mAP`` is chosen on the split it is read on, so comparing methods by it favours the noisier one.

Run::

    python benchmarks/split_size.py --runs runs/demo/students --a L2D --b vanilla
    python benchmarks/split_size.py --runs runs/accuracy/posters_scratch/students --a L2D --b vanilla \\
        --sizes 140,500,1047,2000

Prints a markdown report (``--output FILE`` also writes it). Reads only finished runs; trains nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlkd.stats import bootstrap_map, t_interval

Z95 = 1.959963984540054  # two-sided 95 % normal quantile: the half-width of one seed's difference


def sized_counts(population: int, n: int, resamples: int, seed: int) -> np.ndarray:
    """Multiplicities ``[resamples, population]`` of ``resamples`` draws of ``n`` images with replacement."""
    idx = np.random.default_rng(seed).integers(0, population, size=(resamples, n))
    flat = (idx + population * np.arange(resamples)[:, None]).reshape(-1)
    return np.bincount(flat, minlength=resamples * population).reshape(resamples, population)


def _read_run(folder: Path) -> dict[str, Any]:
    scores = folder / "test_scores.npz"
    metrics = folder / "metrics.json"
    log = folder / "log.jsonl"
    for path in (scores, metrics, log):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {folder} is not a finished run of mlkd bench; "
                                    "finish the comparison first (rerun its command)")
    with np.load(scores) as z:
        s, t = z["scores"], z["targets"]
    epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    val = [e["val_mAP"] for e in epochs if "val_mAP" in e]
    m = json.loads(metrics.read_text())
    return {"scores": s, "targets": t, "test_mAP": m["mAP"], "best_val": m["best_val_mAP"],
            "final_val": val[-1], "epochs": len(val)}


def analyse(runs: Path, a: str, b: str, sizes: Sequence[int], resamples: int = 300,
            seed: int = 0) -> dict[str, Any]:
    """The parts of the A - B difference for the seeds both methods finished in the comparison ``runs``."""
    seeds = sorted(int(p.name[4:]) for p in (runs / a).glob("seed*") if (runs / b / p.name).is_dir())
    if len(seeds) < 2:
        raise ValueError(f"{runs} holds fewer than two seeds that both {a} and {b} ran; need two or more")
    per_seed = []
    for s in seeds:
        ra, rb = _read_run(runs / a / f"seed{s}"), _read_run(runs / b / f"seed{s}")
        if not np.array_equal(ra["targets"], rb["targets"]):
            raise ValueError(f"seed {s}: {a} and {b} were scored on different test images; compare runs of one bench")
        population = ra["targets"].shape[0]
        image_sd = {}
        # The full test set's size too: its image noise is part of the seed spread measured on it.
        for n in sorted(set(sizes) | {population}):
            # The same draws for A and B: the difference is paired on the images, as a validation split is.
            counts = sized_counts(population, n, resamples, seed + 7919 * s + n)
            diff = bootstrap_map(ra["scores"], ra["targets"], counts) - bootstrap_map(rb["scores"], rb["targets"], counts)
            image_sd[n] = float(diff.std(ddof=1))
        per_seed.append({"seed": s, "test_diff": ra["test_mAP"] - rb["test_mAP"],
                         "best_val_diff": ra["best_val"] - rb["best_val"],
                         "final_val_diff": ra["final_val"] - rb["final_val"],
                         "epoch_bias_a": ra["best_val"] - ra["final_val"],
                         "epoch_bias_b": rb["best_val"] - rb["final_val"],
                         "image_sd": image_sd, "test_images": population})
    return {"runs": str(runs), "a": a, "b": b, "seeds": seeds, "sizes": list(sizes), "per_seed": per_seed}


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _interval(values: Sequence[float]) -> str:
    iv = t_interval(np.asarray(values) * 100)
    return f"{iv.estimate:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}]"


def report(result: dict[str, Any]) -> str:
    """Markdown: image noise by split size, seed noise, the split size a difference needs, epoch-choice bias."""
    a, b, ps = result["a"], result["b"], result["per_seed"]
    test_diffs = np.array([p["test_diff"] for p in ps])
    seed_sd = float(test_diffs.std(ddof=1))
    n_seeds = len(ps)
    lines = [f"# {a} - {b}: evaluation-set size and epoch choice ({result['runs']})", "",
             f"Seeds {', '.join(map(str, result['seeds']))}; {ps[0]['test_images']} test images. "
             f"Test mAP difference {_interval(test_diffs)} (paired t over seeds); its spread over seeds "
             f"{100 * seed_sd:.2f} points (training randomness plus the test set's own image noise).", "",
             "| images n | image-noise sd of one seed's difference | 95 % half-width, one seed | "
             f"95 % half-width of the mean over {n_seeds} seeds (image + seed noise) |",
             "|---|---|---|---|"]
    for n in result["sizes"]:
        sd = float(np.sqrt(np.mean([p["image_sd"][n] ** 2 for p in ps])))
        # Seed noise measured on the full test set already holds that set's image noise; remove it once.
        sd_test = float(np.sqrt(np.mean([p["image_sd"][ps[0]["test_images"]] ** 2 for p in ps])))
        seed_only = max(seed_sd ** 2 - sd_test ** 2, 0.0)
        mean_half = Z95 * math.sqrt((seed_only + sd ** 2) / n_seeds)
        lines.append(f"| {n} | {100 * sd:.2f} | ±{100 * Z95 * sd:.2f} | ±{100 * mean_half:.2f} |")
    ref = result["sizes"][0]
    sd_ref = float(np.sqrt(np.mean([p["image_sd"][ref] ** 2 for p in ps])))
    need = {d: int(math.ceil(ref * (Z95 * sd_ref / (d / 100)) ** 2)) for d in (0.5, 1.0, 2.0)}
    lines += ["", "Images one seed's comparison needs for its 95 % image-noise half-width to be below a difference "
              "of d points (scaling the first row's sd as 1/sqrt(n)): " +
              ", ".join(f"d = {d:g}: {need[d]:,}" for d in need) + ".", "",
              "| seed | test diff | best-epoch val diff | final-epoch val diff | "
              f"best - final val, {a} | best - final val, {b} |", "|---|---|---|---|---|---|"]
    for p in ps:
        lines.append(f"| {p['seed']} | {_pts(p['test_diff'])} | {_pts(p['best_val_diff'])} | {_pts(p['final_val_diff'])} "
                     f"| {_pts(p['epoch_bias_a'])} | {_pts(p['epoch_bias_b'])} |")
    lines.append(f"| mean | {_pts(test_diffs.mean())} | {_pts(np.mean([p['best_val_diff'] for p in ps]))} | "
                 f"{_pts(np.mean([p['final_val_diff'] for p in ps]))} | {_pts(np.mean([p['epoch_bias_a'] for p in ps]))} "
                 f"| {_pts(np.mean([p['epoch_bias_b'] for p in ps]))} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", required=True, help="a comparison folder (mlkd bench --output / accuracy.py's students)")
    p.add_argument("--a", default="L2D", help="label of method A (default L2D)")
    p.add_argument("--b", default="vanilla", help="label of method B (default vanilla)")
    p.add_argument("--sizes", default="140,400,1000,4000",
                   help="evaluation-set sizes to simulate (default 140,400,1000,4000)")
    p.add_argument("--resamples", type=int, default=300, help="draws per seed and size (default 300)")
    p.add_argument("--output", help="also write the report to this file")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    if any(n < 1 for n in sizes):
        p.error(f"--sizes must be positive image counts; got {args.sizes}")
    try:
        text = report(analyse(Path(args.runs), args.a, args.b, sizes, args.resamples))
    except (FileNotFoundError, ValueError) as err:
        print(f"split_size: {err}", file=sys.stderr)
        return 2
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

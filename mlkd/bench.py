"""Method comparison: several distillers over several seeds on one teacher, with a table and plots."""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlkd.config import RunConfig, make_config
from mlkd.engine import distributed as ddp
from mlkd.engine.trainer import fit
from mlkd.losses import create_distiller

log = logging.getLogger("mlkd")

# Columns of the comparison table: (metrics.json key, heading).
COLUMNS = [("mAP", "mAP"), ("topk_OF1", "OF1 (top-k)"), ("topk_CF1", "CF1 (top-k)"),
           ("thr_OF1", "OF1 (p≥0.5)"), ("thr_CF1", "CF1 (p≥0.5)")]


def compare(teacher: str | Path, methods: Sequence[str | tuple[str, str, dict[str, float]]], seeds: Sequence[int],
            config: RunConfig | dict | str | Path | None = None, output: str | Path = "runs/bench",
            teacher_metrics: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Distil one student per (method, seed) from ``teacher`` and write the comparison.

    Args:
        teacher: the teacher checkpoint (``best.pt``).
        methods: distiller names, or ``(label, name, lambdas)`` triples for variants such as ablations
            (e.g. ``("MLD+CD", "l2d", {"id": 0})``).
        seeds: the seeds each method runs with; mean ± std are taken over them.
        config: the students' base configuration; ``**overrides`` as in `mlkd.distill`.
        teacher_metrics: the teacher's test metrics; read from ``metrics.json`` beside it when omitted.

    Writes into ``output``: one folder per run, ``comparison.md``, ``comparison.json``,
    ``comparison_map.png`` (mAP per method) and ``ap_gain_per_label.png`` (gain over ``vanilla``).

    Returns:
        The comparison as written to ``comparison.json``.
    """
    out = Path(output)
    base = make_config(config, **overrides)
    # Under torchrun, one process group serves every run of the comparison.
    owns_group = not ddp.current_info().enabled
    info, _ = ddp.init_distributed(base.device)
    try:
        result = _compare(teacher, methods, seeds, base, out, teacher_metrics, info)
    finally:
        if owns_group:
            ddp.shutdown_distributed()
    return result


def _compare(teacher, methods, seeds, base: RunConfig, out: Path, teacher_metrics, info: ddp.DistInfo) -> dict[str, Any]:
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    entries = [(e, e, {}) if isinstance(e, str) else tuple(e) for e in methods]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in entries}
    # Methods that need more of the teacher run first, so that a shared teacher cache
    # (--cache-teacher) is filled once with everything, not refilled for each wider need.
    needs = {name: create_distiller(name) for _, name, _ in entries}
    order = sorted(entries, key=lambda e: (needs[e[1]].uses_features, needs[e[1]].uses_embeddings), reverse=True)
    for label, name, lambdas in order:
        for seed in seeds:
            run_dir = out / re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") / f"seed{seed}"
            needs_teacher = needs[name].requires_teacher
            cfg = make_config(base, method=name, teacher=str(teacher) if needs_teacher else None, seed=seed,
                              output=str(run_dir),
                              lambdas={**base.lambdas, **lambdas},
                              resume=ddp.broadcast_object((run_dir / "last.pt").exists()))
            t0 = time.perf_counter()
            metrics = fit(cfg).metrics
            runs[label].append(metrics)
            log.info("bench: %-10s seed %d  val mAP %.2f%%  test mAP %.2f%%  (%.0f s, %s)", label, seed,
                     100 * metrics["best_val_mAP"], 100 * metrics["mAP"], time.perf_counter() - t0, run_dir)
    if teacher_metrics is None:
        path = Path(teacher).parent / "metrics.json"
        teacher_metrics = json.loads(path.read_text()) if path.exists() else None
    result = summarise(runs, teacher_metrics)
    result["teacher_checkpoint"] = str(teacher)
    result["seeds"] = list(seeds)
    result["student"] = base.model
    if not info.is_main:
        return result
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    (out / "comparison.md").write_text(markdown_table(result))
    plot_comparison(result, out / "comparison_map.png")
    if "vanilla" in runs:
        plot_ap_gain(runs, out / "ap_gain_per_label.png")
    return result


def summarise(runs: dict[str, list[dict[str, Any]]], teacher_metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds of every table column, per method."""
    methods = {}
    for label, metrics in runs.items():
        stats = {}
        for key, _ in COLUMNS:
            values = np.array([m[key] for m in metrics], dtype=float)
            stats[key] = {"values": values.tolist(), "mean": float(values.mean()),
                          "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
        methods[label] = stats
    teacher = None if teacher_metrics is None else {k: teacher_metrics[k] for k, _ in COLUMNS if k in teacher_metrics}
    return {"methods": methods, "teacher": teacher}


def markdown_table(result: dict[str, Any]) -> str:
    """The comparison as a markdown table, in percent, mean ± std over seeds."""
    n = len(result.get("seeds", [])) or "?"
    lines = ["| method | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    if result.get("teacher"):
        lines.append("| teacher | " + " | ".join(
            f"{100 * result['teacher'][k]:.2f}" if k in result["teacher"] else "–" for k, _ in COLUMNS) + " |")
    best = max(result["methods"], key=lambda m: result["methods"][m]["mAP"]["mean"])
    for label, stats in result["methods"].items():
        cells = [f"{100 * stats[k]['mean']:.2f} ± {100 * stats[k]['std']:.2f}" for k, _ in COLUMNS]
        name = f"**{label}**" if label == best else label
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Percent, mean ± sample std over {n} seeds, test split, each student's best-validation "
                 "checkpoint. Top-k = the paper's oracle protocol (each image predicts as many labels as it "
                 "truly has); p≥0.5 = the standard threshold protocol.")
    return "\n".join(lines) + "\n"


def plot_comparison(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["methods"])
    means = [100 * result["methods"][m]["mAP"]["mean"] for m in labels]
    stds = [100 * result["methods"][m]["mAP"]["std"] for m in labels]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(labels)), 4))
    ax.bar(labels, means, yerr=stds, capsize=4, color="tab:blue")
    if result.get("teacher") and "mAP" in result["teacher"]:
        ax.axhline(100 * result["teacher"]["mAP"], color="tab:red", ls="--", label="teacher")
        ax.legend()
    low = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0.0, low - 3), None)
    ax.set(ylabel="test mAP (%)", title="students by distillation method (mean ± std over seeds)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_ap_gain(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Per-label AP gain over the vanilla student (means over seeds), one bar group per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean_ap(metrics: list[dict[str, Any]]) -> dict[str, float]:
        names = metrics[0]["AP_per_label"].keys()
        return {c: float(np.mean([m["AP_per_label"][c] for m in metrics if m["AP_per_label"][c] is not None]))
                for c in names}

    base = mean_ap(runs["vanilla"])
    others = [m for m in runs if m != "vanilla"]
    classes = list(base)
    width = 0.8 / max(1, len(others))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) * max(1, len(others)) ** 0.5), 4))
    for j, label in enumerate(others):
        ap = mean_ap(runs[label])
        gains = [100 * (ap[c] - base[c]) for c in classes]
        ax.bar(np.arange(len(classes)) + (j - (len(others) - 1) / 2) * width, gains, width, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(classes)), classes, rotation=45, ha="right")
    ax.set(ylabel="AP gain over vanilla (points)", title="per-label AP gain over the vanilla student")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

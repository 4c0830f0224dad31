"""Method comparison: several distillers over several seeds on one teacher, with a table, statistics and plots.

Each method's gain over the vanilla student is paired by seed (the two students of a seed share their
initialisation and batch order) and comes with 95 % confidence intervals from `mlkd.stats`: a Student t
interval over the seeds' differences, and paired bootstraps over the test images (per seed pair, and
pooled over seeds). A gain is called significant only when its main interval excludes 0.
"""
from __future__ import annotations

import json
import logging
import re
import textwrap
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from mlkd.config import RunConfig, make_config
from mlkd.engine import distributed as ddp
from mlkd.engine.evaluate import load_scores
from mlkd.engine.preflight import check_distiller_options
from mlkd.engine.run_folder import LOCK_NAME, RunFolder, foreign_entries, output_folder
from mlkd.engine.threads import set_threads
from mlkd.engine.trainer import fit
from mlkd.files import atomic_write, atomic_write_text
from mlkd.losses import create_distiller
from mlkd.models.cost import run_costs
from mlkd.stats import Interval, bootstrap_counts, bootstrap_map, percentile_interval, t_interval

log = logging.getLogger("mlkd")

# Columns of the comparison table: (metrics.json key, heading).
COLUMNS = [("mAP", "mAP"), ("topk_OF1", "OF1 (top-k)"), ("topk_CF1", "CF1 (top-k)"),
           ("thr_OF1", "OF1 (p≥0.5)"), ("thr_CF1", "CF1 (p≥0.5)")]
# The paired statistics: coverage of every interval, and the test-image bootstrap's size and seed
# (fixed, so that a rerun of a comparison reports the same intervals).
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
# The method every gain is measured against.
REFERENCE = "vanilla"
# What a comparison writes at the top of its folder, besides one folder of runs per method.
BENCH_FILES = frozenset({"comparison.json", "comparison.md", "comparison_map.png", "ap_gain_per_label.png"})
# The folder of a comparison's fitted teacher heads (a teacher trained elsewhere, without label-wise head,
# under l2d/led/cd/id): shared by all its runs, so that the head is fitted once.
FITTED_HEADS = "fitted_heads"


def compare(teacher: str | Path | None, methods: Sequence[str | tuple[str, str, dict[str, float]]], seeds: Sequence[int],
            config: RunConfig | dict | str | Path | None = None, output: str | Path = "runs/bench",
            teacher_metrics: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Distil one student per (method, seed) from ``teacher`` and write the comparison.

    Args:
        teacher: the teacher checkpoint (``best.pt``), or None when the configuration names a teacher trained
            elsewhere (``teacher_model``, ``teacher_weights``; see `mlkd.distill`).
        methods: distiller names, or ``(label, name, lambdas)`` triples for variants such as ablations
            (e.g. ``("MLD+CD", "l2d", {"id": 0})``). Gains are reported when one of them is the
            ``vanilla`` method (the student trained without a teacher).
        seeds: the seeds each method runs with; mean ± std and the paired gains are taken over them.
        config: the students' base configuration; ``**overrides`` as in `mlkd.distill`.
        teacher_metrics: the teacher's test metrics; read from ``metrics.json`` beside it when omitted.

    Writes into ``output``: one folder per run, ``comparison.md``, ``comparison.json``,
    ``comparison_map.png`` (mAP per method and gain over vanilla with its interval) and
    ``ap_gain_per_label.png`` (per-label gain over vanilla, spread over seeds). ``output`` follows the
    rules of a run's folder (`RunFolder`): locked while the comparison runs, and refused when it holds
    anything but an earlier comparison's files and run folders, which are reused (finished runs) or
    resumed (unfinished ones).

    Returns:
        The comparison as written to ``comparison.json``.

    Raises:
        ValueError: a setting of any run is invalid (see `plan_runs`); raised before any run trains.
        FileNotFoundError: a method needs the teacher and ``teacher`` does not exist.
        FileExistsError, OutputInUseError: ``output`` holds other files, or another process uses it.
    """
    out = output_folder(output)
    seeds = [int(s) for s in seeds]
    base = make_config(config, **overrides)
    if base.teacher_model and base.teacher_head_cache is None:
        base = make_config(base, teacher_head_cache=str(out / FITTED_HEADS))
    runs = plan_runs(teacher, methods, seeds, base, out)
    if any(run.config.teacher for run in runs) and not Path(teacher).is_file():
        raise FileNotFoundError(f"--teacher {teacher} does not exist; pass the best.pt of an mlkd train run")
    if base.threads is None:
        # One thread count for every run, chosen once and recorded: results depend on it in the last
        # bits, and Adam turns those into different trajectories (a per-run automatic choice would not pair).
        base = make_config(base, threads=set_threads(None).threads)
    labels = [label for label, _, _ in _entries(methods)]
    # Under torchrun, one process group serves every run of the comparison.
    owns_group = not ddp.current_info().enabled
    info, _ = ddp.init_distributed(base.device)
    try:
        folder = _open_bench_folder(out, runs, info)
        try:
            result = _compare(teacher, labels, runs, seeds, base, out, teacher_metrics, info)
        except BaseException:
            if folder is not None and not folder.entries():  # no run started: leave no folder behind
                folder.discard_if_unused()
            raise
        finally:
            if folder is not None:
                folder.release()
    finally:
        if owns_group:
            ddp.shutdown_distributed()
    return result


class PlannedRun(NamedTuple):
    """One student run of a comparison: its method's label and distiller, and its checked configuration."""

    label: str
    method: str
    config: RunConfig


def run_folder_name(label: str) -> str:
    """The folder of a method's runs in a comparison: ``label`` with each run of characters other than
    letters, digits, ``_``, ``.`` and ``-`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def plan_runs(teacher: str | Path, methods: Sequence[str | tuple[str, str, dict[str, float]]],
              seeds: Sequence[int], base: RunConfig, output: Path) -> list[PlannedRun]:
    """Every run of a comparison in training order, each configuration checked; touches no file.

    Methods that need more of the teacher run first, so that a shared teacher cache (``--cache-teacher``)
    is filled once with everything, not refilled for each wider need.

    Args:
        teacher, methods, seeds: as in `compare`.
        base: the students' base configuration.
        output: the comparison's folder; run ``(label, seed)`` goes to ``output/<folder name>/seed<seed>``.

    Raises:
        ValueError: seeds that repeat or are out of range; a method that needs a teacher when none is given
            (neither ``teacher`` nor ``base.teacher_model``); labels that repeat, give no usable folder name
            (``..``, ``.``, empty, hidden, one of the comparison's files) or share a folder; a method's
            unknown or refused ``--lambda``/``--method-option``. Each message names the value and the fix.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, e.g. 0,1,2,3,4; got {seeds}")
    entries = _entries(methods)
    labels = [label for label, _, _ in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"method labels must be distinct; got {labels}")
    folders = _label_folders(labels, output)
    for label, name, lambdas in entries:
        try:
            check_distiller_options(name, {**base.lambdas, **lambdas}, base.method_options)
        except ValueError as err:
            raise ValueError(f"bench method {label!r}: {err}") from None
    needs = {name: create_distiller(name) for _, name, _ in entries}
    if teacher is None and not base.teacher_model and not base.fold_teachers:
        taught = [label for label, name, _ in entries if needs[name].requires_teacher]
        if taught:
            raise ValueError(f"bench methods {', '.join(map(repr, taught))} distil from a teacher: pass --teacher (a "
                             "best.pt of mlkd train), --teacher-model with --teacher-weights, or --fold-teachers")
    order = sorted(entries, key=lambda e: (needs[e[1]].uses_features, needs[e[1]].uses_embeddings), reverse=True)
    runs = []
    for label, name, lambdas in order:
        # A method without teacher gets none (the vanilla student), of either kind.
        teacher_fields = ({"teacher": None if teacher is None else str(teacher)} if needs[name].requires_teacher
                          else {"teacher": None, "teacher_model": None, "teacher_weights": None, "fold_teachers": None})
        for seed in seeds:
            cfg = make_config(base, method=name, **teacher_fields, seed=seed,
                              output=str(folders[label] / f"seed{seed}"), lambdas={**base.lambdas, **lambdas})
            runs.append(PlannedRun(label, name, cfg))
    return runs


def _entries(methods: Sequence[str | tuple[str, str, dict[str, float]]]) -> list[tuple[str, str, dict[str, float]]]:
    """``(label, distiller name, lambdas)`` of each method: a bare name is its own label."""
    return [(e, e, {}) if isinstance(e, str) else tuple(e) for e in methods]


def _label_folders(labels: list[str], output: Path) -> dict[str, Path]:
    """Each label's folder in ``output``; refuses unusable names and labels that would share one."""
    taken: dict[str, str] = {}  # folder name, lower-cased (case-insensitive file systems) -> label
    folders = {}
    for label in labels:
        name = run_folder_name(label)
        if name.strip(".") == "" or name.startswith(".") or name.lower() in BENCH_FILES:
            raise ValueError(f"method label {label!r} gives no usable folder name ({name!r}: labels become folder "
                             "names with each run of characters other than letters, digits, '_', '.' and '-' "
                             "replaced by '_'; a name may not be empty, start with '.', or be one of the "
                             f"comparison's files {sorted(BENCH_FILES)}); give it a label that starts with a "
                             "letter or digit, e.g. 'kd_T4'")
        other = taken.get(name.lower())
        if other is not None:
            raise ValueError(f"method labels {other!r} and {label!r} would share the run folder "
                             f"{output / name} (labels become folder names with each run of characters other "
                             "than letters, digits, '_', '.' and '-' replaced by '_', compared ignoring case); "
                             "give them labels that differ in a letter or digit")
        taken[name.lower()] = label
        folders[label] = output / name
    return folders


def _open_bench_folder(out: Path, runs: list[PlannedRun], info: ddp.DistInfo) -> RunFolder | None:
    """Take the comparison's folder (created, locked) and check it (rank 0; every rank gets the verdict)."""
    error: Exception | None = None
    folder = None
    if info.is_main:
        try:
            folder = RunFolder(out, BENCH_FILES | {FITTED_HEADS} | {Path(run.config.output).parent.name
                                                                   for run in runs}).open()
            error = _check_bench_folder(folder)
        except (OSError, ValueError) as err:
            error = err
        if error is not None and folder is not None:
            folder.discard_if_unused()
            folder.release()
    error = ddp.broadcast_object(error)
    if error is not None:
        raise error
    return folder


def _check_bench_folder(folder: RunFolder) -> FileExistsError | None:
    """The error for a folder that holds anything but an earlier comparison, or None.

    A comparison's own entries are its files and folders of runs (``seed<N>`` folders that an mlkd run
    opened). A folder without mlkd's lock (written by mlkd before comparisons took it) counts as an
    earlier comparison only when it holds at least one such run.
    """
    out = folder.path
    entries = folder.entries()
    if not entries:
        return None
    runs = {name: _runs_in(out / name) for name in entries}
    foreign = [name for name in foreign_entries(out, BENCH_FILES | {FITTED_HEADS}) if runs[name] is None]
    if not foreign and (folder.used_before or any(runs.values())):
        return None
    shown = foreign or entries
    listed = ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
    return FileExistsError(f"{out} holds files that are not an mlkd comparison ({listed}); mlkd never overwrites "
                           "them: choose another --output (a new or empty folder, or an earlier bench's own)")


def _runs_in(folder: Path) -> int | None:
    """How many run folders ``folder`` holds (``seed<N>`` folders with mlkd's lock, ``last.pt`` or
    ``config.yaml``: runs of older versions have no lock); None when it holds anything else or is not a
    plain folder."""
    if folder.is_symlink() or not folder.is_dir():
        return None
    count = 0
    for entry in folder.iterdir():
        opened = any((entry / name).is_file() and not (entry / name).is_symlink()
                     for name in (LOCK_NAME, "last.pt", "config.yaml"))
        if entry.is_symlink() or not entry.is_dir() or not re.fullmatch(r"seed\d+", entry.name) or not opened:
            return None
        count += 1
    return count


def _compare(teacher, labels: list[str], runs: list[PlannedRun], seeds: list[int], base: RunConfig, out: Path,
             teacher_metrics, info: ddp.DistInfo) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    folders: dict[str, list[Path]] = {label: [] for label in labels}
    for run in runs:
        run_dir = Path(run.config.output)
        cfg = make_config(run.config, threads=base.threads,
                          resume=ddp.broadcast_object((run_dir / "last.pt").exists()))
        t0 = time.perf_counter()
        metrics = fit(cfg).metrics
        results[run.label].append(metrics)
        folders[run.label].append(run_dir)
        log.info("bench: %-10s seed %d  val mAP %.2f%%  test mAP %.2f%%  (%.0f s, %s)", run.label, cfg.seed,
                 100 * metrics["best_val_mAP"], 100 * metrics["mAP"], time.perf_counter() - t0, run_dir)
    if teacher_metrics is None and teacher is not None:
        path = Path(teacher).parent / "metrics.json"
        teacher_metrics = json.loads(path.read_text()) if path.exists() else None
    result = summarise(results, teacher_metrics)
    result["teacher_checkpoint"] = (str(teacher) if teacher is not None else
                                    f"fold teachers {', '.join(base.fold_teachers)}" if base.fold_teachers else
                                    f"timm {base.teacher_model}, weights {base.teacher_weights}")
    result["seeds"] = list(seeds)
    result["student"] = base.model
    result["threads"] = base.threads
    result["cost"] = run_costs(results)  # parameters and MACs of the student and the teacher (mlkd.models.cost)
    if not info.is_main:
        return result
    methods = {run.label: run.method for run in runs}
    reference = next((label for label in labels if methods[label] == REFERENCE), None)
    scores = None
    if reference is not None:
        scores = {label: [load_scores(d / "test_scores.npz") for d in dirs] for label, dirs in folders.items()}
    result["gains"] = paired_gains(results, scores, seeds, reference)
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=2))
    atomic_write_text(out / "comparison.md", markdown_table(result))
    plot_comparison(result, out / "comparison_map.png")
    if reference is not None:
        plot_ap_gain(results, out / "ap_gain_per_label.png", reference)
    return result


def summarise(runs: dict[str, list[dict[str, Any]]], teacher_metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds of every table column, per method (std None for one seed)."""
    methods = {}
    for label, metrics in runs.items():
        stats = {}
        for key, _ in COLUMNS:
            values = np.array([m[key] for m in metrics], dtype=float)
            stats[key] = {"values": values.tolist(), "mean": float(values.mean()),
                          "std": float(values.std(ddof=1)) if len(values) > 1 else None}
        methods[label] = stats
    teacher = None if teacher_metrics is None else {k: teacher_metrics[k] for k, _ in COLUMNS if k in teacher_metrics}
    return {"methods": methods, "teacher": teacher}


def paired_gains(runs: dict[str, list[dict[str, Any]]],
                 scores: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None, seeds: Sequence[int],
                 reference: str | None, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                 bootstrap_seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """Each method's test-mAP gain over ``reference``, paired by seed, with its confidence intervals.

    Args:
        runs: per method label, the test metrics of its runs in the order of ``seeds``.
        scores: per method label, the ``(scores [n, q], targets [n, q])`` test outputs of its runs in
            the order of ``seeds`` (what `mlkd.engine.evaluate.save_scores` wrote).
        seeds: the seeds of the runs.
        reference: the label of the vanilla student, or None when the comparison has none.

    Returns:
        ``{"reference", "note", "confidence", "bootstrap", "methods": {label: {...}}}`` where each
        method has its per-seed gains with a bootstrap interval each, ``mean``, ``t_interval`` (None
        below two seeds), ``pooled_bootstrap`` (images resampled once, the gain averaged over seeds),
        ``ci`` (the main interval: t over seeds from two seeds on, else the bootstrap) and
        ``significant`` (the main interval excludes 0). Gains are fractions of mAP, like the metrics.
    """
    info = {"reference": reference, "confidence": confidence,
            "bootstrap": {"resamples": resamples, "seed": bootstrap_seed}, "methods": {}}
    if reference is None:
        info["note"] = (f"no gains: none of the methods is {REFERENCE!r}, the student trained without a teacher "
                        f"that gains are measured against; add {REFERENCE} to the methods")
        return info
    info["note"] = None
    targets = scores[reference][0][1]
    for label, outputs in scores.items():
        for seed, (_, t) in zip(seeds, outputs):
            if not np.array_equal(t, targets):
                raise ValueError(f"the test targets of {label} seed {seed} differ from those of {reference}: "
                                 "the runs of a comparison must share one test set")
    counts = bootstrap_counts(targets.shape[0], resamples, bootstrap_seed)
    replicates = {label: [bootstrap_map(s, targets, counts) for s, _ in outputs] for label, outputs in scores.items()}
    for label in runs:
        if label == reference:
            continue
        gains = np.array([m["mAP"] - r["mAP"] for m, r in zip(runs[label], runs[reference])])
        boot = [replicates[label][k] - replicates[reference][k] for k in range(len(seeds))]
        per_seed = [{"seed": seed, "gain": float(g), "bootstrap": percentile_interval(g, b, confidence).to_dict()}
                    for seed, g, b in zip(seeds, gains, boot)]
        pooled = percentile_interval(float(gains.mean()), np.mean(boot, axis=0), confidence)
        over_seeds = t_interval(gains, confidence)
        main: Interval = over_seeds if over_seeds is not None else pooled
        info["methods"][label] = {
            "per_seed": per_seed, "mean": float(gains.mean()),
            "t_interval": None if over_seeds is None else over_seeds.to_dict(),
            "pooled_bootstrap": pooled.to_dict(),
            "ci": {"low": main.low, "high": main.high,
                   "kind": f"t over {len(seeds)} seeds" if over_seeds is not None
                   else "bootstrap over test images (1 seed: the seed-to-seed spread is not covered)"},
            "significant": main.excludes_zero,
        }
    return info


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def markdown_table(result: dict[str, Any]) -> str:
    """The comparison as markdown tables, in percent: mean ± std over seeds, then the gains over vanilla."""
    n = len(result.get("seeds", []))
    gains = result.get("gains") or {}
    by_method = gains.get("methods", {})
    reference = gains.get("reference")
    gain_head = f"Δ mAP vs {reference} (95% CI)" if reference else None
    heads = [h for _, h in COLUMNS] + ([gain_head] if gain_head else [])
    lines = ["| method | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    if result.get("teacher"):
        cells = [f"{100 * result['teacher'][k]:.2f}" if k in result["teacher"] else "–" for k, _ in COLUMNS]
        lines.append("| teacher | " + " | ".join(cells + (["–"] if gain_head else [])) + " |")
    best = max(result["methods"], key=lambda m: result["methods"][m]["mAP"]["mean"])
    for label, stats in result["methods"].items():
        cells = [f"{100 * stats[k]['mean']:.2f}" + (f" ± {100 * stats[k]['std']:.2f}" if stats[k]["std"] is not None
                                                     else "") for k, _ in COLUMNS]
        if gain_head:
            g = by_method.get(label)
            cells.append("reference" if g is None else
                         f"{_points(g['mean'])} [{_points(g['ci']['low'])}, {_points(g['ci']['high'])}]"
                         + (" significant" if g["significant"] else ""))
        name = f"**{label}**" if label == best else label
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    spread = f"mean ± sample std over {n} seeds" if n > 1 else "one seed (no spread across seeds)"
    threads = f" {result['threads']} CPU thread(s) per run." if result.get("threads") else ""
    lines.append(f"Percent, {spread}, test split, each student's best-validation checkpoint.{threads} "
                 "Top-k = the paper's oracle protocol (each image predicts as many labels as it truly has); "
                 "p≥0.5 = the standard threshold protocol.")
    if not reference:
        lines.append("")
        lines.append(f"No gains reported: {gains.get('note') or 'no reference method'}.")
        return "\n".join(lines) + "\n"
    lines.append("")
    lines.append(f"### Gains over {reference} (test mAP points, paired by seed)")
    lines.append("")
    lines.append("| method | mean gain | t-interval over seeds | pooled bootstrap | per seed: gain [bootstrap CI] "
                 "| significant |")
    lines.append("|---|---|---|---|---|---|")
    for label, g in by_method.items():
        t = g["t_interval"]
        t_cell = "n/a (1 seed)" if t is None else f"[{_points(t['low'])}, {_points(t['high'])}]"
        p = g["pooled_bootstrap"]
        per_seed = "; ".join(f"s{e['seed']} {_points(e['gain'])} [{_points(e['bootstrap']['low'])}, "
                             f"{_points(e['bootstrap']['high'])}]" for e in g["per_seed"])
        lines.append(f"| {label} | {_points(g['mean'])} | {t_cell} | [{_points(p['low'])}, {_points(p['high'])}] "
                     f"| {per_seed} | {'yes' if g['significant'] else 'no'} |")
    boot = gains["bootstrap"]
    lines.append("")
    lines.append(f"{100 * gains['confidence']:.0f}% intervals. t-interval: Student t on the per-seed differences "
                 f"(the seed-to-seed spread). Bootstrap: {boot['resamples']} resamples of the test images with "
                 f"replacement (seed {boot['seed']}), both runs of a pair scored on the same resample (the test-set "
                 "sampling only); pooled = the gain averaged over the seed pairs on each resample. A gain is "
                 "significant when its main interval excludes 0: the t-interval from two seeds on, the bootstrap "
                 "with one seed.")
    return "\n".join(lines) + "\n"


def _save_figure(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def plot_comparison(result: dict[str, Any], path: Path) -> None:
    """Test mAP per method on an axis from 0, beside each method's gain over vanilla with its main interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["methods"])
    n = len(result.get("seeds", [])) or len(result["methods"][labels[0]]["mAP"]["values"])
    means = [100 * result["methods"][m]["mAP"]["mean"] for m in labels]
    stds = [100 * (result["methods"][m]["mAP"]["std"] or 0.0) for m in labels]
    gains = result.get("gains") or {}
    by_method = gains.get("methods", {})
    width = max(7.0, 1.0 + 0.9 * len(labels) + 0.6 * len(by_method))
    fig, (ax, ax_gain) = plt.subplots(1, 2, figsize=(width, 4.6), layout="constrained",
                                      gridspec_kw={"width_ratios": [max(2, len(labels)), max(2, len(by_method))]})
    ax.bar(labels, means, yerr=stds if n > 1 else None, capsize=4, color="tab:blue")
    if result.get("teacher") and "mAP" in result["teacher"]:
        ax.axhline(100 * result["teacher"]["mAP"], color="tab:red", ls="--", label="teacher")
        ax.legend(loc="lower right")
    ax.set_ylim(0, 100)  # from 0: a cut axis would exaggerate gaps of a few tenths
    ax.set(ylabel="test mAP (%)", title="test mAP" + (" (mean ± std)" if n > 1 else ""))
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    if by_method:
        names = list(by_method)
        g = np.array([100 * by_method[m]["mean"] for m in names])
        low = np.array([100 * by_method[m]["ci"]["low"] for m in names])
        high = np.array([100 * by_method[m]["ci"]["high"] for m in names])
        colors = ["tab:green" if by_method[m]["significant"] else "tab:gray" for m in names]
        ax_gain.bar(names, g, yerr=np.vstack([g - low, high - g]), capsize=4, color=colors)
        ax_gain.axhline(0, color="black", lw=0.8)
        kind = "t over seeds" if n > 1 else "test-image bootstrap"
        ax_gain.set(ylabel=f"gain over {gains['reference']} (mAP points)",
                    title=textwrap.fill(f"gain, {100 * gains['confidence']:.0f}% CI ({kind}); "
                                        "green = significant", 30))
        plt.setp(ax_gain.get_xticklabels(), rotation=30, ha="right")
    else:
        ax_gain.axis("off")
        note = gains.get("note") or f"no gains: {REFERENCE} is not among the methods"
        ax_gain.text(0.5, 0.5, textwrap.fill(note, 28), ha="center", va="center", transform=ax_gain.transAxes)
    title = (f"Students by distillation method ({result.get('student', 'student')}, "
             f"{n} seed{'s' if n != 1 else ''})")
    fig.suptitle(textwrap.fill(title, max(30, int(12 * width))))
    _save_figure(fig, path)
    plt.close(fig)


def plot_ap_gain(runs: dict[str, list[dict[str, Any]]], path: Path, reference: str = REFERENCE) -> None:
    """Per-label AP gain over ``reference``, paired by seed: mean over seeds with ± sample std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def ap_matrix(metrics: list[dict[str, Any]], classes: list[str]) -> np.ndarray:  # [seeds, labels]
        return np.array([[np.nan if m["AP_per_label"][c] is None else m["AP_per_label"][c] for c in classes]
                         for m in metrics], dtype=float)

    classes = list(runs[reference][0]["AP_per_label"])
    base = ap_matrix(runs[reference], classes)
    others = [m for m in runs if m != reference]
    n = base.shape[0]
    width = 0.8 / max(1, len(others))
    fig_width = max(6, 0.6 * len(classes) * max(1, len(others)) ** 0.5)
    fig, ax = plt.subplots(figsize=(fig_width, 4.2), layout="constrained")
    x = np.arange(len(classes))
    for j, label in enumerate(others):
        diffs = 100 * (ap_matrix(runs[label], classes) - base)  # paired by seed
        spread = np.std(diffs, axis=0, ddof=1) if n > 1 else None
        ax.bar(x + (j - (len(others) - 1) / 2) * width, np.mean(diffs, axis=0), width, yerr=spread,
               capsize=2, label=label, error_kw={"lw": 0.8})
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, classes, rotation=45, ha="right")
    spread_text = f"mean ± std over {n} seeds" if n > 1 else "1 seed, no spread"
    ax.set(ylabel=f"AP gain over {reference} (points)",
           title=textwrap.fill(f"per-label AP gain over the {reference} student ({spread_text})",
                               int(8 * fig_width)))
    if others:
        ax.legend(fontsize=8, ncol=2, loc="best")
    _save_figure(fig, path)
    plt.close(fig)

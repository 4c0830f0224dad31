"""The demo's pictures: what the students predict on test images, and where distillation gains.

`write_demo_figures` reads the test scores every run of a finished demo wrote (``test_scores.npz``, in
the test split's order) and the test scenes' layout, and writes into the demo's folder:

* ``predictions.png``: the first test images (no choice), each with its true labels and the labels
  the teacher, the vanilla student and the distilled student predict at the runs' threshold, for one
  seed; a label the distilled student gets right and the vanilla student wrong is marked green, the
  reverse red;
* ``gains.png``: AP gain over the vanilla student per label, and AP per object-size bin for the
  teacher and the students, with the gains per bin;
* ``gains.md``: the same numbers as tables.

AP per size bin (`ap_by_size`): for each label, the positives are the scenes whose largest object of
that label falls in the bin, the negatives are all scenes without the label; the bin's mAP is the mean
over labels. A student that only finds large objects thus scores high in the large bin and low in the
small one, whatever the other objects of the scene.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlkd.bench import run_folder_name
from mlkd.config import RunConfig
from mlkd.data import create_dataset
from mlkd.engine.evaluate import load_scores
from mlkd.files import atomic_write, atomic_write_text
from mlkd.metrics import average_precision_per_label
from mlkd.stats import Interval, t_interval

#: Upper edges (exclusive) of the small and medium bins, in canvas pixels of an object's side: the
#: clutter items are 8-48 px (log-uniform), about half of them under 20 px.
SIZE_EDGES = (20, 32)
SIZE_NAMES = ("small (< 20 px)", "medium (20–31 px)", "large (≥ 32 px)")
FILES = ("predictions.png", "gains.png", "gains.md")
CONFIDENCE = 0.95
# One colour per kind of model, in every panel.
_COLORS = {"teacher": "tab:red", "reference": "tab:gray"}
_METHOD_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")


def size_bins(sizes: np.ndarray, edges: Sequence[int] = SIZE_EDGES) -> np.ndarray:
    """The size bin of every (scene, label): ``[N, q]`` int64, ``-1`` where the label is absent (size 0).

    Args:
        sizes: ``[N, q]`` side in pixels of each label's largest object per scene, 0 when absent.
        edges: increasing upper edges (exclusive) of all bins but the last.
    """
    sizes = np.asarray(sizes)
    return np.where(sizes > 0, np.searchsorted(np.asarray(edges), sizes, side="right"), -1)


def ap_by_size(scores: np.ndarray, targets: np.ndarray, sizes: np.ndarray,
               edges: Sequence[int] = SIZE_EDGES) -> np.ndarray:
    """AP of every label within every size bin.

    Args:
        scores: ``[N, q]`` test scores.
        targets: ``[N, q]`` binary ground truth.
        sizes: ``[N, q]`` side of each label's largest object per scene, 0 where absent.
        edges: as in `size_bins`.

    Returns:
        ``[len(edges) + 1, q]`` float64: for bin ``b`` and label ``j``, the AP of the scenes with label
        ``j`` whose largest ``j`` object is in bin ``b``, ranked among all scenes without ``j``; NaN when
        no positive falls in the bin.

    Raises:
        ValueError: the shapes differ, or ``sizes`` and ``targets`` disagree on which labels are present.
    """
    scores, targets, sizes = np.asarray(scores), np.asarray(targets), np.asarray(sizes)
    if not scores.shape == targets.shape == sizes.shape or scores.ndim != 2:
        raise ValueError(f"scores, targets and sizes must be [N, q] arrays of one shape; got {scores.shape}, "
                         f"{targets.shape}, {sizes.shape}")
    if not np.array_equal(sizes > 0, targets > 0):
        raise ValueError("sizes and targets disagree on which labels are present: the scores and the scenes "
                         "come from different test sets (other data set options?)")
    bins = size_bins(sizes, edges)
    out = np.full((len(edges) + 1, scores.shape[1]), np.nan)
    for b in range(len(edges) + 1):
        for j in range(scores.shape[1]):
            keep = (bins[:, j] == b) | (targets[:, j] == 0)
            if (bins[:, j] == b).any():
                out[b, j] = average_precision_per_label(scores[keep, j:j + 1], targets[keep, j:j + 1])[0]
    return out


@dataclass
class Paired:
    """A student's value minus the vanilla student's, paired by seed.

    Attributes:
        values: ``[seeds, ...]`` the differences, in points.
        mean: ``[...]`` their mean over seeds.
        intervals: per entry, the 95 % t-interval over seeds (None below two seeds).
    """

    values: np.ndarray
    mean: np.ndarray
    intervals: list[Interval | None]


def _paired(method: np.ndarray, reference: np.ndarray) -> Paired:
    diffs = 100 * (method - reference)  # [seeds, k]
    return Paired(diffs, diffs.mean(axis=0), [t_interval(diffs[:, k], CONFIDENCE) if np.isfinite(diffs[:, k]).all()
                                              else None for k in range(diffs.shape[1])])


def check_figure_settings(labels: Sequence[str], reference: str, figures: dict[str, Any]) -> None:
    """Refuse ``figures`` settings that name no student (checked before anything trains).

    Raises:
        ValueError: a method of ``figures["methods"]`` or ``reference`` is not among ``labels``, or
            ``figures["images"]`` is not a positive integer.
    """
    unknown = [m for m in [*figures.get("methods", []), reference] if m not in labels]
    if unknown or not figures.get("methods"):
        raise ValueError(f"demo figures: methods {unknown or '(none)'} are not among the demo's students "
                         f"{list(labels)}; name student labels in `figures: methods` of mlkd/configs/demo.yaml")
    images = figures.get("images")
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"demo figures: `images` must be a positive integer (test images in the grid), got "
                         f"{images!r}; set `figures: images` in mlkd/configs/demo.yaml")


def write_demo_figures(out: str | Path, data: RunConfig, labels: Sequence[str], reference: str,
                       seeds: Sequence[int], figures: dict[str, Any]) -> dict[str, Any]:
    """Write ``predictions.png``, ``gains.png`` and ``gains.md`` of the finished demo in ``out``.

    Args:
        out: the demo's folder (``teacher/`` and ``students/<label>/seed<N>/``, each with ``test_scores.npz``).
        data: a run configuration whose ``dataset``, ``dataset_options`` and ``data_root`` built the test
            split (a data set with ``largest_sizes()`` and ``scene(i)``, such as ``fashion_scenes``).
        labels: the students' method labels.
        reference: the label of the vanilla student.
        seeds: the students' seeds; the grid shows the students of the first.
        figures: ``images`` (how many first test images the grid shows) and ``methods`` (labels
            compared with the reference; the first one is in the grid).

    Returns:
        The numbers of ``gains.md``: ``sizes`` and ``labels`` (AP tables and paired gains) and ``grid``
        (counts of labels one student gets right and the other wrong, over the whole test split).

    Raises:
        ValueError: see `check_figure_settings`; or the saved scores do not belong to this test split.
        FileNotFoundError: a run's ``test_scores.npz`` is missing.
    """
    check_figure_settings(labels, reference, figures)
    out = Path(out)
    seeds = list(seeds)
    shown = list(figures["methods"])
    test = create_dataset(data.dataset, data.data_root, "test", **data.dataset_options)
    targets = test.targets.numpy()
    sizes = test.largest_sizes()
    classes = list(test.classes)

    def scores_of(path: Path) -> np.ndarray:
        scores, saved = load_scores(path)
        if not np.array_equal(saved, targets):
            raise ValueError(f"{path} does not hold the scores of this test split (its targets differ): the run "
                             "was made with other data set options; run the demo into a new --output")
        return scores

    teacher = scores_of(out / "teacher" / "test_scores.npz")
    models = [reference, *shown]
    students = {m: [scores_of(out / "students" / run_folder_name(m) / f"seed{s}" / "test_scores.npz")
                    for s in seeds] for m in models}
    size_ap = {"teacher": ap_by_size(teacher, targets, sizes)[None]}
    label_ap = {"teacher": average_precision_per_label(teacher, targets)[None]}
    for m in models:
        size_ap[m] = np.stack([ap_by_size(s, targets, sizes) for s in students[m]])          # [seeds, bins, q]
        label_ap[m] = np.stack([average_precision_per_label(s, targets) for s in students[m]])  # [seeds, q]
    bin_map = {m: np.nanmean(v, axis=2) for m, v in size_ap.items()}  # [seeds, bins]
    numbers = {
        "sizes": {"names": list(SIZE_NAMES), "positives": np.bincount(size_bins(sizes)[sizes > 0],
                                                                      minlength=len(SIZE_NAMES)).tolist(),
                  "ap": bin_map, "gains": {m: _paired(bin_map[m], bin_map[reference]) for m in shown}},
        "labels": {"names": classes, "positives": targets.sum(axis=0).astype(int).tolist(), "ap": label_ap,
                   "gains": {m: _paired(label_ap[m], label_ap[reference]) for m in shown}},
    }
    threshold = data.threshold
    grid = {"teacher": teacher, reference: students[reference][0], shown[0]: students[shown[0]][0]}
    right = {m: (s >= threshold) == (targets > 0) for m, s in grid.items()}
    numbers["grid"] = {"method": shown[0], "reference": reference, "seed": seeds[0], "images": figures["images"],
                       "threshold": threshold, "scenes": len(targets),
                       "better": int((right[shown[0]] & ~right[reference]).sum()),
                       "worse": int((~right[shown[0]] & right[reference]).sum())}
    _plot_grid(out / "predictions.png", [test.scene(i) for i in range(min(figures["images"], len(test)))],
               classes, targets, grid, reference, shown[0], threshold, seeds[0])
    _plot_gains(out / "gains.png", numbers, reference, shown, len(seeds))
    atomic_write_text(out / "gains.md", gains_markdown(numbers, reference, shown, seeds))
    return numbers


def _cell(x: float, spread: float | None = None) -> str:
    return f"{x:.2f}" if spread is None else f"{x:.2f} ± {spread:.2f}"


def _gain_cell(mean: float, interval: Interval | None) -> str:
    if interval is None:
        return f"{mean:+.2f}"
    text = f"{mean:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}]"
    return f"**{text}**" if interval.excludes_zero else text


def gains_markdown(numbers: dict[str, Any], reference: str, shown: Sequence[str], seeds: Sequence[int]) -> str:
    """``gains.md``: AP per object-size bin and per label (teacher, students, paired gains), and the grid's counts."""
    n = len(seeds)
    spread = n > 1

    def model_cells(ap: dict[str, np.ndarray], k: int) -> list[str]:
        cells = [_cell(100 * ap["teacher"][0, k])]
        for m in [reference, *shown]:
            v = 100 * ap[m][:, k]
            cells.append(_cell(v.mean(), v.std(ddof=1) if spread else None))
        return cells

    def table(part: dict[str, Any], first: str) -> list[str]:
        head = [first, "positives", "teacher", reference, *shown, *(f"{m} − {reference}" for m in shown)]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for k, name in enumerate(part["names"]):
            gains = [_gain_cell(part["gains"][m].mean[k], part["gains"][m].intervals[k]) for m in shown]
            cells = [name, f"{part['positives'][k]:,}", *model_cells(part["ap"], k), *gains]
            rows.append("| " + " | ".join(cells) + " |")
        return rows

    sizes, labels, grid = numbers["sizes"], numbers["labels"], numbers["grid"]
    ap = {m: np.nanmean(v, axis=1, keepdims=True) for m, v in labels["ap"].items()}  # [seeds, 1]: the mAP
    all_labels = {"names": ["all (mAP)"], "positives": [sum(labels["positives"])], "ap": ap,
                  "gains": {m: _paired(ap[m], ap[reference]) for m in shown}}
    seed_text = f"seeds {', '.join(map(str, seeds))}" if n > 1 else f"seed {seeds[0]}"
    lines = [
        "# Demo: where distillation gains", "",
        f"Test split ({grid['scenes']:,} scenes); each student's best-validation checkpoint, {seed_text}; "
        f"AP in percent, students as mean{' ± sample std' if spread else ''} over seeds. Gains: AP points over "
        f"the {reference} student, paired by seed"
        + (f", mean with the 95 % t-interval over seeds (**bold**: it excludes 0)." if spread else "."), "",
        "## Per object size", "",
        "A label's AP within a size bin: the scenes whose largest object of that label falls in the bin "
        "(its positives; sizes are the objects' sides in the 96 px canvas) ranked among all scenes without "
        "the label (its negatives); the bin's value is the mean over labels.", "",
        *table(sizes, "largest object of the label"), "",
        "## Per label", "",
        *table(labels, "label"), *table(all_labels, "label")[2:], "",
        "## The prediction grid (predictions.png)", "",
        f"The first {grid['images']} test images (no choice), students of seed {grid['seed']}, labels predicted at "
        f"p ≥ {grid['threshold']:g}. Over all {grid['scenes']:,} test images × {len(labels['names'])} labels, "
        f"the {grid['method']} student is right where the {grid['reference']} student is wrong {grid['better']:,} "
        f"times, and wrong where it is right {grid['worse']:,} times.",
    ]
    return "\n".join(lines) + "\n"


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))


def _plot_grid(path: Path, images: list[np.ndarray], classes: list[str], targets: np.ndarray,
               scores: dict[str, np.ndarray], reference: str, method: str, threshold: float, seed: int) -> None:
    """Each image above a small table: per label present or predicted, whether it is true and who predicts it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cols = min(4, len(images))
    rows = math.ceil(len(images) / cols)
    fig = plt.figure(figsize=(3.2 * cols, 4.7 * rows + 0.9))
    grid = fig.add_gridspec(2 * rows, cols, height_ratios=[2.7, 2.0] * rows, hspace=0.06, wspace=0.1,
                            top=1 - 0.9 / (4.7 * rows + 0.9), bottom=0.01, left=0.01, right=0.99)
    heads = ["true", "teacher", reference, method]
    xs = [0.47, 0.61, 0.77, 0.92]
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        ax.imshow(image, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"test image {i}", fontsize=9)
        tab = fig.add_subplot(grid[2 * r + 1, c])
        tab.set_axis_off()
        tab.set_xlim(0, 1)
        tab.set_ylim(0, 1)
        said = {name: scores[name][i] >= threshold for name in ("teacher", reference, method)}
        truth = targets[i] > 0
        shown = [j for j in range(len(classes)) if truth[j] or any(p[j] for p in said.values())]
        step = 1 / max(9, len(shown) + 1)  # a header line and one line per listed label
        for x, head in zip(xs, heads):
            tab.text(x, 1 - step / 2, head, ha="center", va="center", fontsize=7.5, fontweight="bold")
        for row, j in enumerate(shown):
            y = 1 - (row + 1.5) * step
            gained = said[method][j] == truth[j] and said[reference][j] != truth[j]
            lost = said[method][j] != truth[j] and said[reference][j] == truth[j]
            if gained or lost:
                tab.add_patch(Rectangle((0, y - step / 2), 1, step, color="#b7e4b0" if gained else "#f4b6b0", lw=0))
            tab.text(0.01, y, classes[j], va="center", fontsize=8)
            marks = [truth[j], said["teacher"][j], said[reference][j], said[method][j]]
            for x, mark in zip(xs, marks):
                tab.text(x, y, "✓" if mark else "·", ha="center", va="center", fontsize=9)
    side = images[0].shape[0] if images else 0
    fig.suptitle(f"The first {len(images)} test images ({side} px scenes). Under each: the labels that are true "
                 f"or predicted by a model; ✓ = true (first column) or predicted at p ≥ {threshold:g} (students "
                 f"of seed {seed}).\nGreen: {method} right, {reference} wrong; red: {method} wrong, {reference} "
                 "right.", fontsize=10)
    _save(fig, path)
    plt.close(fig)


def _plot_gains(path: Path, numbers: dict[str, Any], reference: str, shown: Sequence[str], n_seeds: int) -> None:
    """Three panels: AP gain per label, mAP per size bin (teacher and students), gain per size bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"teacher": _COLORS["teacher"], reference: _COLORS["reference"],
              **{m: _METHOD_COLORS[k % len(_METHOD_COLORS)] for k, m in enumerate(shown)}}
    ci_text = "95 % t-interval over seeds" if n_seeds > 1 else "one seed: no interval"
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), layout="constrained", gridspec_kw={"width_ratios": [1.6, 1.1, 1]})

    def gain_bars(ax, part: dict[str, Any]) -> None:
        x = np.arange(len(part["names"]))
        width = 0.8 / len(shown)
        for k, m in enumerate(shown):
            g = part["gains"][m]
            err = None
            if all(iv is not None for iv in g.intervals):
                err = np.array([[g.mean[i] - iv.low, iv.high - g.mean[i]] for i, iv in enumerate(g.intervals)]).T
            ax.bar(x + (k - (len(shown) - 1) / 2) * width, g.mean, width, yerr=err, capsize=3, color=colors[m],
                   label=f"{m} − {reference}")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, part["names"], rotation=30, ha="right")
        ax.legend(fontsize=8)

    gain_bars(axes[0], numbers["labels"])
    axes[0].set(ylabel="AP gain (points)", title=f"AP gain over {reference} per label\n({ci_text})")
    sizes = numbers["sizes"]
    x = np.arange(len(sizes["names"]))
    models = ["teacher", reference, *shown]
    width = 0.8 / len(models)
    for k, m in enumerate(models):
        v = 100 * sizes["ap"][m]
        err = v.std(axis=0, ddof=1) if v.shape[0] > 1 else None
        axes[1].bar(x + (k - (len(models) - 1) / 2) * width, v.mean(axis=0), width, yerr=err, capsize=3,
                    color=colors[m], label=m)
    ticks = [name.replace(" (", "\n(") for name in sizes["names"]]
    axes[1].set_xticks(x, ticks)
    axes[1].set_ylim(0, 100)
    axes[1].set(ylabel="mAP (%)", title="mAP by the size of the label's largest object\n(mean ± std over seeds)")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    gain_bars(axes[2], sizes)
    axes[2].set_xticks(x, ticks, rotation=0, ha="center")
    gap = 100 * (sizes["ap"]["teacher"][0] - sizes["ap"][reference].mean(axis=0))
    axes[2].plot(x, gap, "v", color=colors["teacher"], label=f"teacher − {reference}")
    axes[2].legend(fontsize=8)
    axes[2].set(ylabel="mAP gain (points)", title=f"mAP gain over {reference} by object size\n({ci_text})")
    _save(fig, path)
    plt.close(fig)

"""What each distillation method does to the student's backbone, as opposed to its head (issue 19).

    flock /tmp/cpu.lock .venv/bin/python benchmarks/backbone_probe.py \\
        --runs runs/accuracy/posters_scratch/students --teacher runs/accuracy/posters_scratch/teacher \\
        --labels vanilla,PKT,L2D --seeds 0,1,2

Reads finished student runs written by `mlkd.bench.compare` (``RUNS/LABEL/seed<k>/`` with ``best.pt``,
``config.yaml`` and ``metrics.json``; a seed without metrics.json is still training and is left out) and
the teacher's ``best.pt``. For each student run, on the run's validation split only (never the test
split), it measures:

- ``head_val_mAP``: the student's own validation mAP from its logits; it must equal metrics.json's
  ``best_val_mAP`` (a warning is printed when it is off by more than 1e-6);
- ``probe_val_mAP``: a linear probe on the frozen student's pooled backbone features (global average of
  ``ModelOutput.features[-1]``): one L2-regularised scikit-learn ``LogisticRegression`` per label (lbfgs,
  ``C=1``, features standardised with the statistics of the probe-training images), fitted on a seeded
  subset of ``--max-train`` training images (the same subset for every run of a data set, so that runs
  stay paired; evaluation transform at the student's size, no augmentation), scored on the validation
  images (mAP over the labels with a validation positive). Labels that are constant on the probe-training
  images cannot be fitted and are left out (named, and listed in ``probe_skipped_labels``);
  ``probe_minus_head`` compares the two on the labels both score;
- ``cka_to_teacher``: linear CKA (Kornblith et al. 2019) between the student's and the teacher's pooled
  deepest features on the validation images, each model reading the images at its own resolution and
  normalisation;
- ``label_cka_to_teacher``: the same CKA between the label-wise embeddings (``ModelOutput.label_embeddings``)
  of the (image, label) pairs whose validation target is 1;
- the head's per-label validation AP (class order) and each label's positives in the training split.

mAP and AP are in points (x100), CKA in [0, 1]; AP is mlkd's `average_precision_per_label`, which equals
scikit-learn's ``average_precision_score``. Writes ``--output`` (default ``backbone_probe.json`` beside the first
``--runs`` folder, not inside it: a comparison's folder holding other files is refused when the bench is extended),
one record per run, and a Markdown summary beside it (same stem, ``.md``): per
method label the mean over seeds, the paired difference to ``vanilla`` (mean and 95 % t-interval over
seeds), and the per-label AP gain over vanilla on the more frequent half of the labels against the rarer
half (by training positives).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlkd.config import make_config  # noqa: E402
from mlkd.data import build_datasets  # noqa: E402
from mlkd.data.splits import Splits  # noqa: E402
from mlkd.engine.checkpoint import model_from_checkpoint  # noqa: E402
from mlkd.engine.evaluate import ModelInput  # noqa: E402
from mlkd.files import atomic_write_text, make_folder  # noqa: E402
from mlkd.metrics import average_precision_per_label  # noqa: E402
from mlkd.stats import t_interval  # noqa: E402

BASELINE = "vanilla"
BATCH_SIZE = 128
PROBE_SEED = 0  # picks the probe-training subset; fixed so that every run of a data set sees the same images
PROBE_C = 1.0
PROBE_MAX_ITER = 2000
HEAD_TOLERANCE = 1e-6  # allowed |head_val_mAP - best_val_mAP| (as fractions) before a warning
# The run settings that decide which images and labels the splits hold (not their size or augmentation).
DATA_KEYS = ("dataset", "data_root", "dataset_options", "train_split", "val_split", "test_split", "val_fraction")
METRICS = (("head_val_mAP", "head val mAP", 2), ("probe_val_mAP", "probe val mAP", 2),
           ("probe_minus_head", "probe − head", 2), ("cka_to_teacher", "CKA to teacher", 3),
           ("label_cka_to_teacher", "label CKA to teacher", 3))


@dataclass
class Images:
    """Decoded images of one split at one size, in [0, 1], with their binary targets."""

    images: Tensor  # [n, 3, H, W]
    targets: np.ndarray  # [n, q] float64


@dataclass
class Embedding:
    """What a frozen model gives on a set of images."""

    scores: np.ndarray  # [n, q] sigmoid scores, as mlkd's `predict` computes them
    pooled: np.ndarray  # [n, C] global average of the deepest feature map
    label_embeddings: np.ndarray | None  # [n, q, d], None for a model without a label-wise head


class ImageCache:
    """The validation and probe-training images of a data set, decoded once per size and shared by every run.

    Args:
        max_train: size of the seeded probe-training subset of the training split.
    """

    def __init__(self, max_train: int):
        self.max_train = max_train
        self._splits: dict[tuple[str, int], Splits] = {}
        self._images: dict[tuple[str, int, str], Images] = {}
        self._positives: dict[str, list[int]] = {}

    def val(self, config: dict[str, Any], size: int) -> Images:
        """The run's validation split at ``size`` px (evaluation transform)."""
        return self._get(config, size, "val")

    def probe_train(self, config: dict[str, Any], size: int) -> Images:
        """The seeded probe-training subset of the run's training split at ``size`` px, without augmentation."""
        return self._get(config, size, "train")

    def train_positives(self, config: dict[str, Any]) -> list[int]:
        """Positives of each label over the whole training split (not only the probe subset)."""
        key = _data_key(config)
        if key not in self._positives:
            train = self.splits(config, int(config["img_size"])).train
            self._positives[key] = [int(p) for p in _targets(train).sum(0)]
        return self._positives[key]

    def splits(self, config: dict[str, Any], size: int) -> Splits:
        """The run's splits at ``size`` px with plain evaluation-transform training images.

        Only the run's data settings are kept: the validation carve depends on them alone (a fixed seed,
        `mlkd.data.splits.SPLIT_SEED`), so the teacher's copy at its own size holds the same images.
        """
        key = (_data_key(config), size)
        if key not in self._splits:
            data = {k: config[k] for k in DATA_KEYS if k in config}
            self._splits[key] = build_datasets(make_config(data, img_size=size, augment=False, read_size=None))
        return self._splits[key]

    def _get(self, config: dict[str, Any], size: int, split: str) -> Images:
        key = (_data_key(config), size, split)
        if key not in self._images:
            splits = self.splits(config, size)
            dataset = splits.val
            if split == "train":
                dataset = splits.train
                if len(dataset) > self.max_train:
                    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(PROBE_SEED))
                    dataset = Subset(dataset, sorted(chosen[:self.max_train].tolist()))
            self._images[key] = _decode(dataset)
        return self._images[key]


def _data_key(config: dict[str, Any]) -> str:
    return json.dumps({k: config.get(k) for k in DATA_KEYS}, sort_keys=True)


def _targets(dataset: Dataset) -> np.ndarray:
    """All targets of a data set or of a `Subset` of one, without decoding images."""
    if isinstance(dataset, Subset):
        return _targets(dataset.dataset)[list(dataset.indices)]
    return dataset.targets.numpy().astype(np.float64)


def _decode(dataset: Dataset) -> Images:
    images, targets = [], []
    for batch, target in DataLoader(dataset, batch_size=BATCH_SIZE, num_workers=0):
        images.append(batch)
        targets.append(target)
    return Images(torch.cat(images), torch.cat(targets).double().numpy())


@torch.no_grad()
def embed(model: nn.Module, norm: ModelInput, images: Tensor) -> Embedding:
    """Scores, pooled deepest features and label-wise embeddings of ``model`` on ``images`` (batched)."""
    model.eval()
    scores, pooled, label_embeddings = [], [], []
    for start in range(0, len(images), BATCH_SIZE):
        out = model(norm(images[start:start + BATCH_SIZE]))
        if not out.features:
            raise ValueError(f"{type(model).__name__} returns no feature maps (ModelOutput.features is empty)")
        # float32 sigmoid then float64, as `mlkd.engine.evaluate.predict`: saturated scores tie the same way
        scores.append(torch.sigmoid(out.logits.float()).double())
        pooled.append(out.features[-1].float().mean(dim=(2, 3)).double())
        if out.label_embeddings is not None:
            label_embeddings.append(out.label_embeddings.float())
    return Embedding(torch.cat(scores).numpy(), torch.cat(pooled).numpy(),
                     torch.cat(label_embeddings).numpy() if label_embeddings else None)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same ``n`` items: ``x [n, d1]``, ``y [n, d2]``.

    Computed in feature space, ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred
    ``Xc``, ``Yc`` (Kornblith et al. 2019), in float64.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
          classes: list[str]) -> tuple[np.ndarray, list[str], int]:
    """Per-label validation AP of logistic regressions on frozen features.

    Returns:
        ``[q]`` AP in [0, 1], NaN for a label without a validation positive or left out because it is
        constant on the probe-training images; the labels left out; how many fits stopped at ``PROBE_MAX_ITER``.
    """
    scaler = StandardScaler().fit(train_x)
    train_x, val_x = scaler.transform(train_x), scaler.transform(val_x)
    ap = np.full(len(classes), np.nan)
    skipped, unconverged = [], 0
    for j, name in enumerate(classes):
        positives = int(train_y[:, j].sum())
        if positives in (0, len(train_y)):  # one class only: there is nothing to separate
            skipped.append(name)
            continue
        fit = LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER, solver="lbfgs").fit(train_x, train_y[:, j])
        unconverged += int(fit.n_iter_[0] >= PROBE_MAX_ITER)
        ap[j] = average_precision_per_label(fit.decision_function(val_x)[:, None], val_y[:, j:j + 1])[0]
    return ap, skipped, unconverged


def positive_pairs(embeddings: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The label-wise embeddings ``[n, q, d]`` of the (image, label) pairs whose target is 1: ``[p, d]``."""
    return embeddings[targets > 0.5]


class Teacher:
    """The frozen teacher, its validation embedding computed once per data set."""

    def __init__(self, path: Path, images: ImageCache):
        self.model, state = model_from_checkpoint(path)
        self.classes = list(state["classes"])
        self.size = int(state["config"]["img_size"])
        self.norm = ModelInput.from_stats(state.get("input_norm"), self.size)
        self._images = images
        self._val: dict[str, Embedding] = {}

    def val(self, config: dict[str, Any]) -> Embedding:
        """The teacher's embedding of a run's validation images, read at the teacher's own size."""
        key = _data_key(config)
        if key not in self._val:
            self._val[key] = embed(self.model, self.norm, self._images.val(config, self.size).images)
        return self._val[key]


def probe_run(label: str, seed: int, folder: Path, teacher: Teacher, images: ImageCache) -> dict[str, Any]:
    """Every measurement of one finished student run (see the module docstring)."""
    model, state = model_from_checkpoint(folder / "best.pt")
    config, classes = state["config"], list(state["classes"])
    size = int(config["img_size"])
    norm = ModelInput.from_stats(state.get("input_norm"), size)
    val = images.val(config, size)
    student = embed(model, norm, val.images)

    head_ap = average_precision_per_label(student.scores, val.targets)
    head_map = float(np.nanmean(head_ap))
    recorded = json.loads((folder / "metrics.json").read_text())["best_val_mAP"]
    if abs(head_map - recorded) > HEAD_TOLERANCE:
        print(f"warning: {label} seed {seed}: validation mAP {head_map:.6f} from best.pt differs from "
              f"metrics.json's best_val_mAP {recorded:.6f}", file=sys.stderr)

    train = images.probe_train(config, size)
    probe_ap, skipped, unconverged = probe(embed(model, norm, train.images).pooled, train.targets,
                                           student.pooled, val.targets, classes)
    if skipped:
        print(f"note: {label} seed {seed}: probe leaves out {', '.join(skipped)} (constant on the "
              f"{len(train.targets)} probe-training images)", file=sys.stderr)
    if unconverged:
        print(f"warning: {label} seed {seed}: {unconverged} probe fits stopped at max_iter={PROBE_MAX_ITER}",
              file=sys.stderr)

    taught = teacher.val(config)
    label_cka = None
    if student.label_embeddings is not None and taught.label_embeddings is not None:
        shared = [c for c in classes if c in teacher.classes]
        if len(shared) < len(classes):
            print(f"note: label CKA of {label} seed {seed} leaves out the labels the teacher lacks: "
                  f"{', '.join(c for c in classes if c not in shared)}", file=sys.stderr)
        mine = [classes.index(c) for c in shared]
        theirs = [teacher.classes.index(c) for c in shared]
        positives = val.targets[:, mine]
        label_cka = linear_cka(positive_pairs(student.label_embeddings[:, mine], positives),
                               positive_pairs(taught.label_embeddings[:, theirs], positives))

    return {"label": label, "seed": seed, "run": str(folder),
            "head_val_mAP": 100 * head_map, "probe_val_mAP": 100 * float(np.nanmean(probe_ap)),
            # on the labels both score: a label the probe leaves out would otherwise count for the head only
            "probe_minus_head": 100 * float(np.nanmean(probe_ap - head_ap)),
            "cka_to_teacher": linear_cka(student.pooled, taught.pooled),
            "label_cka_to_teacher": label_cka,
            "per_label_ap": _points(head_ap), "probe_per_label_ap": _points(probe_ap),
            "classes": classes, "train_positives": images.train_positives(config),
            "probe_skipped_labels": skipped, "probe_train_images": len(train.targets),
            "val_images": len(val.targets)}


def _points(ap: np.ndarray) -> list[float | None]:
    """AP in points for JSON, None where it is undefined."""
    return [None if math.isnan(a) else 100 * float(a) for a in ap]


def find_runs(folders: list[Path], labels: list[str] | None, seeds: list[int] | None) -> list[tuple[str, int, Path]]:
    """The finished runs ``(label, seed, folder)`` of the method folders under ``folders``.

    Raises:
        ValueError: a label found under two ``--runs`` folders, or a requested label found nowhere.
    """
    methods: dict[str, Path] = {}
    for root in folders:
        for method in sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("seed*/best.pt"))):
            if method.name in methods:
                raise ValueError(f"the label {method.name!r} is in both {methods[method.name].parent} and {root}")
            methods[method.name] = method
    wanted = labels or sorted(methods, key=lambda name: (name != BASELINE, name))
    missing = [name for name in wanted if name not in methods]
    if missing:
        raise ValueError(f"no runs labelled {', '.join(missing)} under {', '.join(map(str, folders))}; "
                         f"found {', '.join(sorted(methods)) or 'none'}")
    runs = []
    for name in wanted:
        found = {int(p.name[4:]): p for p in methods[name].glob("seed*")
                 if p.name[4:].isdigit() and (p / "metrics.json").is_file() and (p / "best.pt").is_file()}
        for seed in seeds if seeds is not None else sorted(found):
            if seed in found:
                runs.append((name, seed, found[seed]))
            else:
                print(f"note: {name} seed {seed} has no finished run (metrics.json); left out", file=sys.stderr)
    return runs


def _cell(values: list[float], digits: int) -> str:
    """``mean [low, high]`` of paired differences over seeds (the mean alone with one seed)."""
    interval = t_interval(values)
    if interval is None:
        return f"{np.mean(values):+.{digits}f} (n=1)"
    return f"{interval.estimate:+.{digits}f} [{interval.low:+.{digits}f}, {interval.high:+.{digits}f}]"


def _half_gains(record: dict[str, Any], base: dict[str, Any]) -> tuple[float, float]:
    """Mean per-label AP gain over the baseline on the frequent half and on the rare half of the labels.

    Labels are ranked by training positives (more first); with an odd count the middle label joins the
    rare half. Labels without a validation positive (AP undefined) are left out of both means.
    """
    order = np.argsort(-np.asarray(base["train_positives"]), kind="stable")
    gains = [np.nan if a is None or b is None else a - b for a, b in zip(record["per_label_ap"], base["per_label_ap"])]
    gains = np.asarray(gains, dtype=np.float64)[order]
    half = len(order) // 2
    return float(np.nanmean(gains[:half])), float(np.nanmean(gains[half:]))


def summary(records: list[dict[str, Any]], command: str) -> str:
    """The Markdown summary: means over seeds, paired differences to vanilla, frequent vs rare label gains."""
    labels = list(dict.fromkeys(r["label"] for r in records))
    by_label = {name: {r["seed"]: r for r in records if r["label"] == name} for name in labels}
    lines = ["# Backbone probe", "", f"    {command}", "",
             "Validation split only. mAP in points; CKA (linear, Kornblith et al. 2019) in [0, 1]; probe: "
             "per-label logistic regression on the frozen student's pooled deepest features; probe − head on "
             "the labels both score.", "",
             "## Means over seeds", "",
             "| method | seeds | " + " | ".join(title for _, title, _ in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for name in labels:
        runs = list(by_label[name].values())
        cells = []
        for key, _, digits in METRICS:
            values = [r[key] for r in runs]
            cells.append("–" if None in values else f"{np.mean(values):.{digits}f}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    base = by_label.get(BASELINE)
    if base is None:
        lines += ["", f"No `{BASELINE}` runs: no paired differences."]
        return "\n".join(lines) + "\n"
    lines += ["", f"## Paired difference to `{BASELINE}` (mean [95 % t-interval] over seeds)", "",
              "| method | seeds | " + " | ".join(title for _, title, _ in METRICS)
              + " | AP gain, frequent half | AP gain, rare half |",
              "|---|---|" + "---|" * (len(METRICS) + 2)]
    for name in labels:
        if name == BASELINE:
            continue
        seeds = sorted(set(by_label[name]) & set(base))
        if not seeds:
            lines.append(f"| {name} | 0 | " + " | ".join("–" for _ in range(len(METRICS) + 2)) + " |")
            continue
        pairs = [(by_label[name][s], base[s]) for s in seeds]
        cells = []
        for key, _, digits in METRICS:
            values = [(r[key], b[key]) for r, b in pairs]
            cells.append("–" if any(None in v for v in values) else _cell([a - b for a, b in values], digits))
        halves = [_half_gains(r, b) for r, b in pairs]
        cells += [_cell([h[0] for h in halves], 2), _cell([h[1] for h in halves], 2)]
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |")
    lines += ["", "Frequent/rare halves: labels ranked by positives in the training split (the rarer half takes "
              "the middle label when their number is odd); gain = the method's per-label validation AP of the "
              "head minus vanilla's, averaged over the half's labels, then over seeds."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, action="append", required=True,
                        help="folder of method folders (RUNS/LABEL/seed<k>/); may be repeated")
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's run folder or its best.pt")
    parser.add_argument("--labels", help="comma-separated method labels (default: every method folder)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: every finished seed)")
    parser.add_argument("--max-train", type=int, default=4000,
                        help="probe-training images: a seeded subset of the training split (default 4000)")
    parser.add_argument("--output", type=Path, help="JSON file (default backbone_probe.json beside the first --runs folder)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    teacher_path = args.teacher / "best.pt" if args.teacher.is_dir() else args.teacher
    output = args.output or args.runs[0].parent / "backbone_probe.json"
    runs = find_runs(args.runs, args.labels.split(",") if args.labels else None,
                     [int(s) for s in args.seeds.split(",")] if args.seeds else None)
    if not runs:
        print("error: no finished runs to probe", file=sys.stderr)
        return 2

    images = ImageCache(args.max_train)
    teacher = Teacher(teacher_path, images)
    records = []
    for label, seed, folder in runs:
        t0 = time.perf_counter()
        record = probe_run(label, seed, folder, teacher, images)
        records.append(record)
        label_cka = record["label_cka_to_teacher"]
        print(f"{label} seed {seed}: head {record['head_val_mAP']:.2f}  probe {record['probe_val_mAP']:.2f}  "
              f"CKA {record['cka_to_teacher']:.3f}  label CKA "
              f"{'–' if label_cka is None else f'{label_cka:.3f}'}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    command = "python benchmarks/backbone_probe.py " + " ".join(sys.argv[1:])
    make_folder(output.parent)
    atomic_write_text(output, json.dumps({"teacher": str(teacher_path), "max_train": args.max_train,
                                          "probe": {"C": PROBE_C, "max_iter": PROBE_MAX_ITER, "solver": "lbfgs"},
                                          "runs": records}, indent=2) + "\n")
    markdown = summary(records, command)
    atomic_write_text(output.with_suffix(".md"), markdown)
    print(markdown)
    print(f"wrote {output} and {output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

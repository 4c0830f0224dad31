"""What a run shows and writes while it trains: progress bars, a per-epoch log, TensorBoard, plots."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from tqdm.auto import tqdm

from mlkd.files import atomic_write, atomic_write_text

log = logging.getLogger("mlkd")


# Without a terminal (a log file, CI), a progress line every this many seconds within long phases.
PROGRESS_INTERVAL_S = 60.0
# The end of the names of the TensorBoard event files a run writes: a resumed run replaces its own, no others.
EVENTS_SUFFIX = ".mlkd"


class Progress:
    """Iterates like its iterable while showing progress; never touches the iterable otherwise.

    On a terminal it draws a tqdm bar on stderr. Without one (a log file, CI) it logs a line every
    `PROGRESS_INTERVAL_S` seconds instead of writing carriage returns. The bar is created with a
    ``total`` only, never with the iterable itself: tqdm would call ``iter()`` on it, which for a
    DataLoader draws a shuffle seed from its generator and so would change the data order.
    """

    def __init__(self, iterable: Iterable, total: int, desc: str):
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.postfix: dict[str, str] = {}
        self._bar: tqdm | None = None

    def __iter__(self) -> Iterator:
        interactive = sys.stderr.isatty()
        self._bar = tqdm(total=self.total, desc=self.desc, leave=False, dynamic_ncols=True) if interactive else None
        last = time.monotonic()
        done = 0
        try:
            for item in self.iterable:
                yield item
                done += 1
                if self._bar is not None:
                    self._bar.update(1)
                elif time.monotonic() - last >= PROGRESS_INTERVAL_S and done < self.total:
                    last = time.monotonic()
                    extra = "  ".join(f"{k}={v}" for k, v in self.postfix.items())
                    log.info("%s: %d/%d  %s", self.desc, done, self.total, extra)
        finally:
            if self._bar is not None:
                self._bar.close()

    def set_postfix(self, values: dict[str, str]) -> None:
        """Numbers shown beside the bar (and in the periodic lines without a terminal)."""
        self.postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(values)


def progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    """A `Progress` over ``iterable`` when ``enabled``, else the bare iterable (quiet mode, non-zero ranks)."""
    return Progress(iterable, total, desc) if enabled else iterable


class RunLogger:
    """Per-epoch records to ``log.csv`` and ``log.jsonl``, mirrored to TensorBoard when installed.

    The files are rewritten whole (atomically) from the run's history after each epoch's commit, so
    after a crash and ``--resume`` they hold exactly the committed epochs, as in an uninterrupted run.
    TensorBoard's event files can only grow, so a run rebuilds them when it starts: it writes the
    committed history (a resumed run's) into a new event file, then removes the event files of its
    earlier sessions (named with `EVENTS_SUFFIX`). They then hold each committed epoch once, also one
    whose events a crash between the commit and the logs cut off. Only the process that writes files
    (rank 0) creates one.
    """

    def __init__(self, folder: Path, tensorboard: bool = True, history: Sequence[dict[str, Any]] = ()):
        self.folder = folder
        self.jsonl = folder / "log.jsonl"
        self.csv = folder / "log.csv"
        self.records: list[dict[str, Any]] = []
        self.writer = None
        earlier: list[Path] = []
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                log.info("tensorboard is not installed; writing log.csv and log.jsonl only")
            else:
                events = folder / "tensorboard"
                earlier = sorted(events.glob(f"events.out.tfevents.*{EVENTS_SUFFIX}")) if events.is_dir() else []
                # purge_step: TensorBoard hides the events of earlier sessions from the history's first epoch
                # on, should an event file of theirs stay (written without the suffix by an older mlkd).
                self.writer = SummaryWriter(str(events), purge_step=history[0]["epoch"] if history else None,
                                            filename_suffix=EVENTS_SUFFIX)
        if history:  # a resumed run: the files as of its last commit
            self.write(history)
        for path in earlier:  # only now: a crash before this point leaves the old files, not none
            path.unlink(missing_ok=True)

    def write(self, history: Sequence[dict[str, Any]]) -> None:
        """Rewrite the files from ``history`` (every committed epoch); send new epochs to TensorBoard."""
        new = history[len(self.records):]
        self.records = [dict(r) for r in history]
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.records))
        atomic_write_text(self.csv, _csv_text(self.records))
        if self.writer is not None:
            for record in new:
                for key, value in record.items():
                    if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                        self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _csv_text(records: Sequence[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return text.getvalue()


# The label-wise family: which named combination a set of nonzero L2D terms is (method.md).
_L2D_TERMS = ("mld", "cd", "id")
_L2D_NAMES = {frozenset(_L2D_TERMS): "L2D (MLD+CD+ID)", frozenset({"cd", "id"}): "LED (CD+ID)"}


@dataclass(frozen=True)
class CurvePlan:
    """What `plot_learning_curves` draws: the method as trained, and which loss terms are drawn.

    Attributes:
        method: the combination that was really trained, from the terms that were nonzero (an ``l2d``
            run with ``--lambda cd=0`` is ``"MLD+ID"``).
        drawn: the ``train_*`` keys drawn on the log-scale loss axis.
        always_zero: loss terms that were 0 at every epoch (weight 0), not drawn (a log axis cannot).
    """

    method: str
    drawn: list[str]
    always_zero: list[str]


def curve_plan(records: list[dict[str, Any]], method: str) -> CurvePlan:
    """Decide the learning curve's title and series from the epoch records of a run with ``method``."""
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k.startswith("train_") and k not in keys]
    positive = {k for k in keys if any(isinstance(r.get(k), (int, float)) and r[k] > 0 for r in records)}
    drawn = [k for k in keys if k in positive]
    always_zero = [k[len("train_"):] for k in keys if k not in positive]
    active = [k[len("train_"):] for k in drawn if k != "train_bce"]
    if method == "vanilla":
        name = "vanilla (BCE only)"
    elif method in ("l2d", "led", "mld", "cd", "id") and set(active) <= set(_L2D_TERMS):
        ordered = [t for t in _L2D_TERMS if t in active]
        name = _L2D_NAMES.get(frozenset(ordered), "+".join(t.upper() for t in ordered))
        if not ordered:
            name = f"{method} with every distillation weight 0 (BCE only)"
    else:
        zero_terms = [t for t in always_zero if t != "bce"]
        name = method.upper() + (f" without {', '.join(zero_terms)} (weight 0)" if zero_terms else "")
    return CurvePlan(name, drawn, always_zero)


def plot_learning_curves(records: list[dict[str, Any]], path: Path, title: str, method: str = "vanilla") -> None:
    """Training loss terms (log scale) and validation mAP against the epoch, as one PNG.

    Args:
        records: the per-epoch records (``epoch``, ``train_<term>``, ``val_mAP``, ...).
        path: the PNG to write.
        title: the run, e.g. ``"tiny_cnn on fashion_mosaic"``; the method as trained is appended
            (see `curve_plan`).
        method: the run's distiller name.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not records:
        return
    plan = curve_plan(records, method)
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    for key in plan.drawn:
        ax_loss.plot(epochs, [r.get(key, float("nan")) for r in records], marker=".", label=key[len("train_"):])
    loss_title = "training loss (weighted terms)"
    if plan.always_zero:
        loss_title += f"\nnot drawn, 0 at every epoch: {', '.join(plan.always_zero)}"
    ax_loss.set(xlabel="epoch", ylabel="loss per image", title=loss_title, yscale="log")
    if plan.drawn:
        ax_loss.legend(fontsize=8)
    ax_map.plot(epochs, [100 * r["val_mAP"] for r in records], marker="o")
    ax_map.set(xlabel="epoch", ylabel="mAP (%)", title="validation mAP")
    for ax in (ax_loss, ax_map):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.suptitle(f"{title}: {plan.method}")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)

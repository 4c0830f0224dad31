"""What a run shows and writes while it trains: progress bars, a per-epoch log, TensorBoard, plots."""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

from tqdm.auto import tqdm

log = logging.getLogger("mlkd")


def progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    """A tqdm bar (to stderr) when ``enabled``, else the bare iterable (quiet mode, non-zero ranks)."""
    if not enabled:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


class RunLogger:
    """Per-epoch records to ``log.csv`` and ``log.jsonl``, mirrored to TensorBoard when installed.

    Only the process that writes files (rank 0) creates one.
    """

    def __init__(self, folder: Path, tensorboard: bool = True, resume: bool = False):
        self.folder = folder
        self.jsonl = folder / "log.jsonl"
        self.csv = folder / "log.csv"
        self.records: list[dict[str, Any]] = []
        if resume and self.jsonl.exists():
            self.records = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
        else:
            for f in (self.jsonl, self.csv):
                f.unlink(missing_ok=True)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                log.info("tensorboard is not installed; writing log.csv and log.jsonl only")
            else:
                self.writer = SummaryWriter(str(folder / "tensorboard"))

    def truncate(self, epochs_done: int) -> None:
        """Drop records of epochs after the resumed checkpoint (a killed run may have logged more)."""
        self.records = [r for r in self.records if r["epoch"] <= epochs_done]
        self._rewrite()

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._write_csv()
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()

    def _rewrite(self) -> None:
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        self._write_csv()

    def _write_csv(self) -> None:
        keys: list[str] = []
        for r in self.records:
            keys += [k for k in r if k not in keys]
        with self.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.records)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_learning_curves(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss terms and validation mAP against the epoch, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    for key in records[0]:
        if key.startswith("train_"):
            ax_loss.plot(epochs, [r.get(key, float("nan")) for r in records], label=key[len("train_"):])
    ax_loss.set(xlabel="epoch", ylabel="loss per image", title="training loss", yscale="log")
    ax_loss.legend(fontsize=8)
    ax_map.plot(epochs, [100 * r["val_mAP"] for r in records], marker="o")
    ax_map.set(xlabel="epoch", ylabel="mAP (%)", title="validation mAP")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

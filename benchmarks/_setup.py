"""The `quadrants` setting's teacher/student pair (the demo's until issue 20), as the benchmarks build it.

Random weights, nothing downloaded.

Timing does not depend on the weights, so every benchmark uses randomly initialised models of the
shapes that ``mlkd/configs/suite/quadrants.yaml`` trains: an EfficientNet-Lite0 teacher at 112 px and a
``tiny_cnn`` student at 56 px on the embedded ``fashion_mosaic`` set (10 labels).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from mlkd.data import create_dataset
from mlkd.engine.checkpoint import save_checkpoint
from mlkd.models import create_model

TEACHER_MODEL = "tf_efficientnet_lite0"
TEACHER_HEAD = {"embed_dim": 128, "num_heads": 4, "ffn_dim": 256}  # quadrants.yaml's teacher head
TEACHER_SIZE = 112
STUDENT_MODEL = "tiny_cnn"
STUDENT_HEAD = {"embed_dim": 64, "num_heads": 4, "ffn_dim": 128}  # quadrants.yaml's student head
STUDENT_SIZE = 56


def quadrants_classes() -> list[str]:
    """The label names of the embedded ``fashion_mosaic`` set (no download, no data root)."""
    return create_dataset("fashion_mosaic", None, "test", num_mosaics=1).classes


def quadrants_teacher(num_classes: int, **options) -> nn.Module:
    """A randomly initialised quadrants teacher; ``options`` go to ``create_model`` (e.g. ``img_size``).

    Seed torch first where the weights must be the same from run to run.
    """
    return create_model(TEACHER_MODEL, num_classes, **TEACHER_HEAD, **options)


def quadrants_student(num_classes: int, **options) -> nn.Module:
    """A randomly initialised quadrants student; ``options`` go to ``create_model``."""
    return create_model(STUDENT_MODEL, num_classes, **STUDENT_HEAD, **options)


def teacher_checkpoint(path: Path, classes: list[str], img_size: int = TEACHER_SIZE) -> Path:
    """Save a quadrants teacher with weights from seed 0 as a checkpoint `--teacher` accepts.

    Args:
        path: Where to write the checkpoint.
        classes: The label names it records (its head has ``len(classes)`` outputs).
        img_size: The resolution it records as trained at (the student's views are resized to it).

    Returns:
        ``path``.
    """
    torch.manual_seed(0)
    model = quadrants_teacher(len(classes))
    stats = model.data_config
    return save_checkpoint({"model": model.state_dict(), "model_args": model.model_args, "classes": classes,
                            "config": {"img_size": img_size},
                            "input_norm": {"mean": list(stats["mean"]), "std": list(stats["std"])}}, path)


def quadrants_run_parser(epochs: int) -> argparse.ArgumentParser:
    """The flags of a benchmark that trains the quadrants pair: ``--mosaics``, ``--epochs`` (default
    ``epochs``) and ``--no-write`` (print the section without writing docs/benchmarks.md)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mosaics", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--no-write", action="store_true")
    return parser


def quadrants_distill_config(teacher: Path, mosaics: int, epochs: int, augment: bool) -> dict:
    """The settings of a quadrants distillation (L2D, batch 64, CPU) from ``teacher`` into the quadrants student.

    Args:
        teacher: A teacher checkpoint (see `teacher_checkpoint`).
        mosaics: Training mosaics of ``fashion_mosaic`` (10 % of them are carved for validation).
        epochs: Training epochs.
        augment: Whether the paper's augmentation (Cutout + RandAugment) is on.

    Returns:
        Keyword values for ``make_config``, without ``output``.
    """
    return dict(dataset="fashion_mosaic", dataset_options={"num_mosaics": mosaics}, img_size=STUDENT_SIZE,
                augment=augment, batch_size=64, device="cpu", tensorboard=False, quiet=True,
                model=STUDENT_MODEL, model_options=dict(STUDENT_HEAD), epochs=epochs, lr=2e-3, method="l2d",
                teacher=str(teacher))


@contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder for a benchmark's runs, deleted afterwards even if the benchmark fails."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)

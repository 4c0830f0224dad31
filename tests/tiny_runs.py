"""The tiny teacher/student runs the engine tests repeat: a ``tiny_cnn`` on 32 px ``fashion_mosaic``
mosaics of a `synthetic.write_fashion_like` folder, trained on the CPU in seconds. Each test file
keeps its own sizes (mosaics, head, epochs, threads) as arguments, so that its numbers stay its own.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mlkd.engine import trainer as trainer_module

HEAD = {"embed_dim": 16, "num_heads": 2, "ffn_dim": 16}  # the label-wise head of most tiny runs


def tiny_run(data_root: str | Path, output: str | Path, mosaics: int, head: dict[str, int] = HEAD,
             **overrides: Any) -> dict[str, Any]:
    """Keyword values of `mlkd.train` / `mlkd.distill` for a tiny run.

    The run: ``tiny_cnn`` with ``head`` at 32 px, batch 16, 2 epochs at lr 1e-2, no augmentation, on
    the CPU, quiet, without TensorBoard.

    Args:
        data_root: A folder written by `synthetic.write_fashion_like`.
        output: The run folder.
        mosaics: Training mosaics (``dataset_options.num_mosaics``).
        head: The head's ``model_options``.
        **overrides: RunConfig fields that replace the values above or add to them.

    Returns:
        A new dictionary (the caller may change it).
    """
    values = dict(dataset="fashion_mosaic", data_root=str(data_root), dataset_options={"num_mosaics": mosaics},
                  img_size=32, batch_size=16, epochs=2, lr=1e-2, model="tiny_cnn", model_options=dict(head),
                  augment=False, device="cpu", quiet=True, output=str(output), tensorboard=False)
    values.update(overrides)
    return values


def tiny_flags(data_root: str | Path, output: str | Path, mosaics: int, epochs: int, head: dict[str, int] = HEAD,
               batch: int = 16, threads: int | None = None) -> list[str]:
    """The flags of `mlkd train` / `mlkd distill` for the run of `tiny_run` (without ``--no-tensorboard``).

    Args:
        data_root: A folder written by `synthetic.write_fashion_like`.
        output: The run folder.
        mosaics: Training mosaics (``--dataset-option num_mosaics=``).
        epochs: Training epochs.
        head: The head's ``--model-option`` values.
        batch: The batch size.
        threads: ``--threads``; None leaves the flag out (the automatic choice).

    Returns:
        The flags; later flags of the caller override them (``--model-option`` included).
    """
    model_options = [flag for key, value in head.items() for flag in ("--model-option", f"{key}={value}")]
    threads_flag = [] if threads is None else ["--threads", str(threads)]
    return ["--dataset", "fashion_mosaic", "--data-root", str(data_root), "--dataset-option", f"num_mosaics={mosaics}",
            "--img-size", "32", "--batch-size", str(batch), "--epochs", str(epochs), "--lr", "1e-2",
            "--model", "tiny_cnn", *model_options, "--no-augment", "--device", "cpu", *threads_flag, "--quiet",
            "--output", str(output)]


@contextmanager
def interrupted_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> Iterator[None]:
    """Run the block as if Ctrl-C came during its ``epoch``-th epoch; the block must be interrupted.

    The ``epoch``-th call of the trainer's ``run_epoch`` inside the block raises KeyboardInterrupt
    before training (so the epochs before it are complete and checkpointed); afterwards the real
    ``run_epoch`` is back.

    Raises:
        pytest.fail.Exception: If the block finishes without that interruption.
    """
    real = trainer_module.run_epoch
    calls = 0

    def interrupted(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "run_epoch", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(trainer_module, "run_epoch", real)

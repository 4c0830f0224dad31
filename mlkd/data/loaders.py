"""DataLoaders with the defaults mlkd trains and evaluates with.

Reproducibility: the shuffling order comes from a `torch.Generator` seeded with ``seed`` (or from the
`DistributedSampler`'s seed), and each worker process seeds Python's and NumPy's generators from the
torch seed PyTorch gives it, which itself derives from that generator; so a fixed seed gives the same
batches, augmentations included, for any ``workers`` > 0. With ``workers=0`` the transforms run in the
main process and draw from its global torch generator: seed it (``torch.manual_seed``) for the same
guarantee.
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mlkd.data.folds import FoldBatchSampler


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed Python's and NumPy's generators from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


# A training loader drops its last incomplete batch (an epoch of equal batches, and no batch of one,
# which BatchNorm cannot train on), unless dropping it would leave out more than this share of the
# samples: on small data sets (90 images in batches of 64) that would waste a large part of the data.
KEEP_LAST_BATCH_ABOVE = 0.2


def drop_last_batch(samples: int, batch_size: int) -> bool:
    """Whether a training loader over ``samples`` samples (per process) drops its incomplete last batch.

    See `KEEP_LAST_BATCH_ABOVE`: kept when it holds at least 2 samples and more than that share of them.
    """
    rest = samples % batch_size
    return not (rest >= 2 and rest > KEEP_LAST_BATCH_ABOVE * samples)


def train_batches(samples: int, batch_size: int) -> int:
    """Batches per epoch of a training loader over ``samples`` samples per process (see `drop_last_batch`)."""
    full, rest = divmod(samples, batch_size)
    return full + (rest > 0 and not drop_last_batch(samples, batch_size))


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    workers: int = 0,
    seed: int = 0,
    distributed: bool | None = None,
    pin_memory: bool | None = None,
    drop_last: bool | None = None,
    folds: torch.Tensor | None = None,
) -> DataLoader:
    """Build a DataLoader over ``dataset``.

    Training loaders shuffle and drop the last incomplete batch, except on small data sets where that
    would leave out a large share of the samples (see `drop_last_batch`); evaluation loaders keep the
    order and every sample. Under ``torchrun`` (an initialised ``torch.distributed`` process group) each process
    gets a `DistributedSampler` over its share of the data (shuffled for training, with ``seed``); the
    caller must then call ``loader.sampler.set_epoch(epoch)`` at the start of every epoch, or every
    epoch repeats the same order. A DistributedSampler pads the data with repeated samples so that all
    processes get the same count: gather evaluation results and drop the padding, or evaluate on one
    process.

    Args:
        dataset: a map-style data set yielding ``(image, target)``.
        batch_size: samples per batch (per process when distributed), >= 1.
        train: training mode (shuffle, drop_last) or evaluation mode (ordered, keep all).
        workers: loader worker processes (0 loads in the main process). Workers restart each epoch and
            take their seeds from ``generator``, so reseeding it per epoch makes every epoch reproducible
            on its own (what an exact ``--resume`` needs).
        seed: seeds the shuffling and the workers' generators; under distributed training the workers of
            rank ``r`` use ``seed + r`` so that ranks do not draw the same augmentations.
        distributed: use a DistributedSampler; ``None`` = when a process group is initialised.
        pin_memory: pin batches in page-locked memory; ``None`` = when CUDA is available.
        drop_last: drop the last incomplete batch; ``None`` = `drop_last_batch` when training, else False.
        folds: ``[N]`` the fold of each sample (`mlkd.data.folds.fold_assignment`): every batch then holds
            samples of one fold (`mlkd.data.folds.FoldBatchSampler`, training only; ``drop_last`` applies
            per fold). The caller must call ``loader.batch_sampler.set_epoch(epoch)`` every epoch.

    Returns:
        The DataLoader; its batches are ``(images [B, 3, H, W], targets [B, q])``.

    Raises:
        ValueError: ``batch_size`` < 1, ``workers`` < 0, an empty data set, ``distributed=True`` without
            an initialised process group, or ``drop_last`` with fewer samples than one batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    if len(dataset) == 0:
        raise ValueError(f"the data set {dataset!r} is empty; check the data root and split")
    initialised = dist.is_available() and dist.is_initialized()
    if distributed is None:
        distributed = initialised
    if distributed and not initialised:
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group; launch with torchrun "
            "and call torch.distributed.init_process_group first"
        )
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    rank = dist.get_rank() if distributed else 0
    generator = torch.Generator()
    generator.manual_seed(seed + rank)
    if folds is not None:
        if not train:
            raise ValueError("folds apply to training loaders (batches within one fold); evaluate without them")
        if len(folds) != len(dataset):
            raise ValueError(f"folds gives the fold of {len(folds)} samples, but the data set has {len(dataset)}")
        world = dist.get_world_size() if distributed else 1
        batches = FoldBatchSampler(
            folds, batch_size, seed,
            (lambda n: drop_last_batch(n, batch_size)) if drop_last is None else (lambda n: drop_last),
            rank=rank, world_size=world)
        if len(batches) == 0:
            raise ValueError(f"batches of {batch_size} within each of the {int(folds.max()) + 1} folds of "
                             f"{len(dataset)} samples leave no batch for each of {world} process(es); lower the "
                             "batch size")
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
                          worker_init_fn=seed_worker, generator=generator, persistent_workers=False)
    sampler = DistributedSampler(dataset, shuffle=train, seed=seed) if distributed else None
    per_process = len(sampler) if sampler is not None else len(dataset)
    if drop_last is None:
        drop_last = train and drop_last_batch(per_process, batch_size)
    if drop_last and per_process < batch_size:
        raise ValueError(
            f"drop_last=True with {per_process} samples per process and batch_size={batch_size} leaves no "
            "batch at all; lower the batch size or pass drop_last=False"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=False,
    )

"""Folds of a training set, for cross-fitted teachers, and batches that stay within one fold.

A teacher returns the images it was trained on nearly as their labels: the posters teacher scores 53.7 mAP
on its training posters and 21.9 on new ones (docs/results.md, "why the posters teacher does not pay").
Its students, trained on those very images, then learn little from it that their labels do not already
say. Cross-fitting removes the overlap without leaving images out: the training set is cut into K folds,
teacher k is trained without fold k (``mlkd train --hold-out-fold k/K``), and during distillation every
image of fold k is taught by teacher k, which never saw it (``mlkd distill --fold-teachers ...``).

The K teachers are K networks with K feature spaces. Relation terms compare images within a batch (PKT's
similarities, L2D's instance distances), so a batch must hold the outputs of one teacher only:
`FoldBatchSampler` draws every batch from one fold.

The fold of an image depends on the size of the training set alone (a permutation with a fixed seed,
like the validation carve's), so the teachers' runs and the student's run agree on it without a file.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from mlkd.data.views import mix_seed

# The seed of the fold permutation: a constant, independent of any run's seed, so that teacher and
# student runs agree on every image's fold.
FOLD_SEED = 0x0F01D5
# Salt of the per-epoch batch order.
_BATCH_SALT = 0xBA7C4


def fold_assignment(size: int, folds: int) -> torch.Tensor:
    """The fold of each image of a training set of ``size`` images.

    Args:
        size: images in the training set (its indices ``0 .. size - 1``).
        folds: number of folds K >= 2.

    Returns:
        ``[size]`` int64, values in ``0 .. K - 1``; the folds' sizes differ by at most one.

    Raises:
        ValueError: ``folds`` < 2, or fewer images than folds.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds!r}")
    if size < folds:
        raise ValueError(f"a training set of {size} image(s) cannot be cut into {folds} folds")
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(FOLD_SEED))
    fold = torch.empty(size, dtype=torch.long)
    fold[perm] = torch.arange(size) % folds
    return fold


def fold_indices(fold: torch.Tensor, k: int) -> list[int]:
    """The indices of the images in fold ``k``, ascending."""
    return (fold == k).nonzero().flatten().tolist()


class FoldBatchSampler(Sampler[list[int]]):
    """Training batches that each hold images of one fold only, in an order reproducible per epoch.

    Each epoch shuffles every fold, cuts it into batches of ``batch_size`` (a fold's last incomplete batch
    is dropped or kept by ``drop_last``, the rule of `mlkd.data.loaders.drop_last_batch` applied per fold)
    and shuffles the batches of all folds together, so that the folds are interleaved. The order depends on
    ``(seed, epoch)`` only: call `set_epoch` before every epoch (an exact ``--resume`` depends on it).

    Under torchrun every process draws the same batches and takes every ``world_size``-th one; the batches
    that do not divide evenly are left out, so that all processes take the same number of steps.

    Args:
        fold: ``[N]`` the fold of each image (`fold_assignment`).
        batch_size: images per batch (per process).
        seed: the run's seed.
        drop_last: ``fold size -> bool``, whether a fold drops its last incomplete batch.
        rank, world_size: this process and the number of processes (default: the process group's, else 0 and 1).
    """

    def __init__(self, fold: torch.Tensor, batch_size: int, seed: int, drop_last, rank: int | None = None,
                 world_size: int | None = None):
        initialised = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        self.folds = [fold_indices(fold, k) for k in range(int(fold.max()) + 1)]
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.drop = [drop_last(len(members)) for members in self.folds]
        per_fold = [len(m) // batch_size + (len(m) % batch_size > 0 and not d) for m, d in zip(self.folds, self.drop)]
        self.total = sum(per_fold)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, _BATCH_SALT))
        batches = []
        for members, drop in zip(self.folds, self.drop):
            order = [members[i] for i in torch.randperm(len(members), generator=gen).tolist()]
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                if len(batch) == self.batch_size or not drop:
                    batches.append(batch)
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        return batches[self.rank:len(self) * self.world_size:self.world_size]

    def indices(self) -> list[int]:
        """The images this process trains on this epoch, in batch order."""
        return [i for batch in self._batches() for i in batch]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return self.total // self.world_size

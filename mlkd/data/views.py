"""Augmented views of training images that can be regenerated exactly, and which one each epoch uses.

A *view* of training image ``index`` is the output of the data set's (random) transform with torch's
generator seeded from ``(base seed, index, view id)``: the same triple always gives the same tensor,
whatever the batch, the worker process, the number of workers or the order of the visits. That is
what lets a teacher-output cache hold the outputs of fixed augmented views ("fast knowledge
distillation" with stored soft labels), and what makes a resumed run draw the augmentations of an
uninterrupted one.

Two regimes (`AugmentedViews`):

- ``views=None``: a fresh view every epoch, view id = epoch, base seed = the run's seed (the paper's
  augmentation, each image's draws now independent of the batch it lands in).
- ``views=K``: K fixed views per image, base seed `VIEW_SEED` (shared by all runs, so students with
  different seeds read one teacher cache). Epoch ``e`` uses view ``order[e % K]`` for every image, where
  ``order`` is a permutation of ``range(K)`` drawn from ``(seed, e // K)``: each block of K epochs visits
  each view once, so a run of E <= K epochs never repeats a view. One view id for all images of an
  epoch is as random as a per-image choice (the views of different images are independent draws), and
  it lets the teacher fill its cache one whole view at a time, in fixed chunks.

Only torch's CPU generator is seeded: the transforms of mlkd (`mlkd.data.transforms`) draw from it alone.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from mlkd.data.transforms import seeded_rng

# The base seed of the K fixed views. A constant (like the validation split's seed) so that every
# student of a comparison, whatever its own seed, sees the same views and can share the teacher's outputs.
VIEW_SEED = 0
# Salt of the per-block view order, so that it does not coincide with a view's own seed stream.
_ORDER_SALT = 0x5EED_0F_0DE5

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """A 63-bit seed from a tuple of integers; neighbouring tuples give unrelated seeds."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


def view_order(seed: int, block: int, views: int) -> list[int]:
    """The order in which epochs ``block * views ... block * views + views - 1`` visit the ``views`` views."""
    gen = torch.Generator().manual_seed(mix_seed(seed, block, _ORDER_SALT))
    return torch.randperm(views, generator=gen).tolist()


def epoch_view(seed: int, epoch: int, views: int | None) -> int:
    """The view id every training image uses in ``epoch`` (0-based); the epoch itself when ``views`` is None."""
    if views is None:
        return epoch
    return view_order(seed, epoch // views, views)[epoch % views]


class AugmentedViews(Dataset):
    """A training set whose items are reproducible augmented views: ``(image, target, index, view)``.

    Call `set_epoch` before iterating each epoch (the trainer does); the DataLoader's worker processes,
    started afresh each epoch, receive the epoch with the data set.
    """

    def __init__(self, dataset: Dataset, views: int | None, seed: int):
        """
        Args:
            dataset: yields ``(image, target)``; its transform draws its randomness from torch's generator.
            views: K fixed views per image, or ``None`` for a fresh view each epoch.
            seed: the run's seed (the view order, or the fresh views' base seed).
        """
        if views is not None and (isinstance(views, bool) or not isinstance(views, int) or views < 1):
            raise ValueError(f"views must be a positive integer or None, got {views!r}")
        self.dataset = dataset
        self.views = views
        self.seed = seed
        self.epoch = 0
        self.base_seed = seed if views is None else VIEW_SEED

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def current_view(self) -> int:
        """The view id of the current epoch (see the module doc)."""
        return epoch_view(self.seed, self.epoch, self.views)

    def view(self, index: int, view: int) -> tuple:
        """``(image, target)`` of view ``view`` of image ``index``: the same tensors on every call."""
        with seeded_rng(mix_seed(self.base_seed, index, view)):
            return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        view = self.current_view
        image, target = self.view(index, view)
        return image, target, index, view


class FixedView(Dataset):
    """View ``view`` of the images ``indices`` of an `AugmentedViews`: ``(image, index)`` (fills a cache)."""

    def __init__(self, views: AugmentedViews, view: int, indices: list[int]):
        self.views = views
        self.view = view
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple:
        index = self.indices[i]
        return self.views.view(index, self.view)[0], index

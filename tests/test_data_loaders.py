"""build_loader: shuffling and drop_last by mode, seeded determinism (workers included), distributed, errors."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, RandomSampler, SequentialSampler

from mlkd.data import build_loader


class Numbered(Dataset):
    """Sample i is (i plus draws from torch, numpy and random: the "augmentation"), target i % 3 one-hot."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        noise = torch.tensor([torch.rand(()).item(), np.random.rand(), random.random()])
        return torch.cat([torch.tensor([float(i)]), noise]), torch.eye(3)[i % 3]


def ids(loader) -> list[list[int]]:
    return [x[:, 0].long().tolist() for x, _ in loader]


def test_eval_loader_keeps_order_and_every_sample():
    loader = build_loader(Numbered(10), 4, train=False)
    assert isinstance(loader.sampler, SequentialSampler)
    assert ids(loader) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert loader.pin_memory is torch.cuda.is_available()
    _, targets = next(iter(loader))
    assert targets.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]


def test_train_loader_shuffles_drops_last_and_follows_seed():
    loader = build_loader(Numbered(10), 4, train=True, seed=3)
    assert isinstance(loader.sampler, RandomSampler) and loader.drop_last
    first = ids(loader)
    assert len(first) == 2 and all(len(b) == 4 for b in first)
    assert len(set(sum(first, []))) == 8
    assert first == ids(build_loader(Numbered(10), 4, train=True, seed=3))
    assert first != ids(build_loader(Numbered(10), 4, train=True, seed=4))
    assert first != ids(loader)  # the next epoch is another permutation
    assert len(ids(build_loader(Numbered(10), 4, train=True, drop_last=False))[-1]) == 2
    assert build_loader(Numbered(10), 4, train=False, drop_last=True).drop_last


def test_workers_are_seeded_deterministically():
    def run(seed):
        loader = build_loader(Numbered(12), 3, train=True, workers=2, seed=seed)
        return torch.cat([x for x, _ in loader])

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.equal(a[:, 1:], c[:, 1:])
    # The two workers draw different numbers (Python and NumPy generators seeded per worker).
    assert len(set(a[:, 2].tolist())) == 12 and len(set(a[:, 3].tolist())) == 12


def test_pin_memory_override():
    assert build_loader(Numbered(4), 2, train=False, pin_memory=True).pin_memory


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": True}, "batch_size must be a positive integer, got True"),
        ({"workers": -1}, "workers must be an integer >= 0, got -1"),
        ({"dataset": Numbered(0)}, "is empty; check the data root and split"),
        ({"distributed": True}, "distributed=True needs an initialised torch.distributed process group; launch with torchrun"),
        ({"batch_size": 6, "train": True, "drop_last": True}, "drop_last=True with 5 samples per process and batch_size=6 leaves no batch at all"),
    ],
)
def test_errors(kwargs, message):
    kwargs = {"dataset": Numbered(5), "batch_size": 2, "train": False, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        build_loader(**kwargs)


def test_distributed_sampler_under_a_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loader = build_loader(Numbered(8), 4, train=True, seed=5)
        assert isinstance(loader.sampler, DistributedSampler)
        assert loader.sampler.shuffle and loader.sampler.seed == 5
        epoch0 = ids(loader)
        assert epoch0 == ids(loader)  # without set_epoch every epoch repeats the order
        loader.sampler.set_epoch(1)
        assert sorted(sum(ids(loader), [])) == list(range(8)) and ids(loader) != epoch0
        evaluation = build_loader(Numbered(8), 4, train=False)
        assert not evaluation.sampler.shuffle and ids(evaluation) == [[0, 1, 2, 3], [4, 5, 6, 7]]
        assert isinstance(build_loader(Numbered(8), 4, train=True, distributed=False).sampler, RandomSampler)
    finally:
        dist.destroy_process_group()

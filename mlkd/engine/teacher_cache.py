"""A store of the frozen teacher's outputs per training sample (``--cache-teacher``).

For small students the teacher's forward pass dominates a distillation epoch. When the student sees
exactly the same input for a sample every epoch (no random augmentation), the teacher's output for
that sample never changes either, so it is computed once and read back afterwards.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mlkd.outputs import ModelOutput


class TeacherCache:
    """Teacher outputs of ``size`` samples, filled lazily batch by batch, kept in host memory.

    Only the parts the distiller reads are kept (logits always; label-wise embeddings and the
    deepest ``feature_levels`` stage maps on request: 0 keeps none, None all), since embeddings and
    feature maps dominate the memory.
    """

    def __init__(self, size: int, keep_embeddings: bool, feature_levels: int | None = 0):
        self.size = size
        self.keep_embeddings = keep_embeddings
        self.feature_levels = feature_levels
        self.filled = torch.zeros(size, dtype=torch.bool)
        self.logits: Tensor | None = None
        self.embeddings: Tensor | None = None
        self.features: list[Tensor] | None = None

    def nbytes(self) -> int:
        parts = [self.logits, self.embeddings, *(self.features or [])]
        return sum(p.numel() * p.element_size() for p in parts if p is not None)

    def put(self, index: Tensor, out: ModelOutput) -> None:
        index = index.cpu()
        if self.logits is None:  # allocate on first use, once the shapes are known
            self.logits = torch.empty((self.size, *out.logits.shape[1:]), dtype=torch.float32)
            if self.keep_embeddings:
                self.embeddings = torch.empty((self.size, *out.label_embeddings.shape[1:]), dtype=torch.float32)
            if self.feature_levels != 0:
                self.features = [torch.empty((self.size, *f.shape[1:]), dtype=torch.float32)
                                 for f in self._levels(out.features)]
        self.logits[index] = out.logits.detach().float().cpu()
        if self.embeddings is not None:
            self.embeddings[index] = out.label_embeddings.detach().float().cpu()
        if self.features is not None:
            for store, f in zip(self.features, self._levels(out.features)):
                store[index] = f.detach().float().cpu()
        self.filled[index] = True

    def _levels(self, features: list[Tensor]) -> list[Tensor]:
        return features if self.feature_levels is None else features[len(features) - self.feature_levels:]

    def covers(self, keep_embeddings: bool, feature_levels: int | None) -> bool:
        """Whether this cache holds at least the parts asked for."""
        if keep_embeddings and not self.keep_embeddings:
            return False
        if self.feature_levels is None:
            return True
        return feature_levels is not None and feature_levels <= self.feature_levels

    def get(self, index: Tensor, device: torch.device) -> ModelOutput:
        index = index.cpu()
        fetch = lambda t: t[index].to(device, non_blocking=True)  # noqa: E731
        return ModelOutput(
            logits=fetch(self.logits),
            label_embeddings=None if self.embeddings is None else fetch(self.embeddings),
            features=[] if self.features is None else [fetch(f) for f in self.features],
        )


# One process's caches by what determines their content (teacher file, images, resolution): the runs
# of `mlkd bench` and `mlkd demo` distil many students from one teacher on the same images and share
# its outputs. Only the latest key is kept, to bound memory.
_POOL: dict[tuple, TeacherCache] = {}


def shared_cache(key: tuple, size: int, keep_embeddings: bool, feature_levels: int | None) -> TeacherCache:
    """The cache of ``key``, created (or widened to the parts asked for, refilled) when needed."""
    cache = _POOL.get(key)
    if cache is not None and cache.size == size and cache.covers(keep_embeddings, feature_levels):
        return cache
    if cache is not None:
        keep_embeddings |= cache.keep_embeddings
        if cache.feature_levels is None or feature_levels is None:
            feature_levels = None
        else:
            feature_levels = max(feature_levels, cache.feature_levels)
    _POOL.clear()
    _POOL[key] = TeacherCache(size, keep_embeddings, feature_levels)
    return _POOL[key]

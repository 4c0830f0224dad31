"""A store of the frozen teacher's outputs per training image and augmented view (``--cache-teacher``).

For small students the teacher's forward pass dominates a distillation epoch. The teacher is frozen,
so its output on a given input never changes: the cache computes it once and reads it back afterwards.
With random augmentation the input is one of K fixed augmented views per image
(`mlkd.data.views.AugmentedViews`, "fast knowledge distillation" with stored soft labels); without it
there is one view. Memory: ``K x N x (q + q*d + feature values) x 4`` bytes for N images, q labels,
embedding width d (embeddings only for the methods that read them); a cache over ``cache_limit_gib`` is
refused before anything is allocated.

Filling is deterministic: before an epoch, every chunk of `FILL_CHUNK` consecutive images whose view
of that epoch is not cached yet goes through the teacher as one batch, in index order. So an image's
cached output never depends on which images shared the student's batch or on the order in which
students visited it (a model's output for one image can differ in the last bits with its batch).
Under torchrun the chunks are the unit of work too: each process runs the teacher on whole chunks, a
share of those missing, and the processes exchange their outputs, so every process holds the cache
that one process would have filled, bit for bit, for a share of the teacher's work.
"""
from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mlkd.data.views import AugmentedViews, FixedView
from mlkd.engine.distributed import any_rank, current_info, exchange
from mlkd.engine.logging import progress
from mlkd.engine.teacher import run_teacher
from mlkd.outputs import ModelOutput

log = logging.getLogger("mlkd")

# Images per teacher forward pass when filling: a constant, so that the cached outputs depend on
# neither the run's batch size nor its shuffling.
FILL_CHUNK = 64
# Fixed augmented views per image when caching with augmentation and no `teacher_views` is given:
# enough that a run of up to 8 epochs never repeats a view, at 8x the memory of one view.
DEFAULT_VIEWS = 8
GIB = 1024**3


class TeacherCache:
    """Teacher outputs of ``views`` views of ``size`` images, kept in host memory as float32.

    Only the parts the distiller reads are kept (logits always; label-wise embeddings and the
    deepest ``feature_levels`` stage maps on request: 0 keeps none, None all), since embeddings and
    feature maps dominate the memory. Storage is ``[views, size, ...]`` per part.
    """

    def __init__(self, size: int, views: int, keep_embeddings: bool, feature_levels: int | None = 0):
        self.size = size
        self.views = views
        self.keep_embeddings = keep_embeddings
        self.feature_levels = feature_levels
        self.filled = torch.zeros(views, size, dtype=torch.bool)
        self.logits: Tensor | None = None
        self.embeddings: Tensor | None = None
        self.features: list[Tensor] | None = None

    def nbytes(self) -> int:
        parts = [self.logits, self.embeddings, *(self.features or [])]
        return sum(p.numel() * p.element_size() for p in parts if p is not None)

    def _levels(self, features: list[Tensor]) -> list[Tensor]:
        return features if self.feature_levels is None else features[len(features) - self.feature_levels:]

    def parts(self, out: ModelOutput) -> list[Tensor]:
        """The outputs of ``out`` (batch ``[B, ...]``) that this cache keeps, as stored: float32, in the
        order logits, label-wise embeddings (when kept), kept feature maps (deepest last)."""
        kept = [out.logits]
        if self.keep_embeddings:
            kept.append(out.label_embeddings)
        if self.feature_levels != 0:
            kept += self._levels(out.features)
        return [t.detach().float() for t in kept]

    def put(self, view: int, index: Tensor, out: ModelOutput) -> None:
        """Store the teacher's outputs ``out`` (batch ``[B, ...]``) of view ``view`` of images ``index [B]``."""
        self.put_parts(view, index, self.parts(out))

    def put_parts(self, view: int, index: Tensor, parts: list[Tensor]) -> None:
        """Store ``parts`` (as `parts` returns them, each ``[B, ...]``) of view ``view`` of images ``index [B]``."""
        index = index.cpu()
        if self.logits is None:  # allocate on first use, once the shapes are known
            stores = [torch.empty((self.views, self.size, *p.shape[1:]), dtype=torch.float32) for p in parts]
            self.logits = stores.pop(0)
            self.embeddings = stores.pop(0) if self.keep_embeddings else None
            self.features = stores if self.feature_levels != 0 else None
        for store, part in zip(self._stores(), parts, strict=True):
            store[view, index] = part.cpu()
        self.filled[view, index] = True

    def _stores(self) -> list[Tensor]:
        """The storage tensors ``[views, size, ...]``, in the order of `parts`."""
        return [self.logits, *([] if self.embeddings is None else [self.embeddings]), *(self.features or [])]

    def covers(self, keep_embeddings: bool, feature_levels: int | None) -> bool:
        """Whether this cache holds at least the parts asked for."""
        if keep_embeddings and not self.keep_embeddings:
            return False
        if self.feature_levels is None:
            return True
        return feature_levels is not None and feature_levels <= self.feature_levels

    def get(self, index: Tensor, view: Tensor, device: torch.device) -> ModelOutput:
        """The cached outputs of view ``view[b]`` of image ``index[b]`` for each b, on ``device``."""
        index, view = index.cpu(), view.cpu()
        if not bool(self.filled[view, index].all()):
            raise RuntimeError("the teacher cache was read before being filled for this batch's views "
                               "(fill_view must run for the epoch's view first)")
        fetch = lambda t: t[view, index].to(device, non_blocking=True)  # noqa: E731
        return ModelOutput(
            logits=fetch(self.logits),
            label_embeddings=None if self.embeddings is None else fetch(self.embeddings),
            features=[] if self.features is None else [fetch(f) for f in self.features],
        )

    def chunk(self, c: int) -> range:
        """The images of fill chunk ``c``."""
        return range(c * FILL_CHUNK, min((c + 1) * FILL_CHUNK, self.size))

    def missing_chunks(self, view: int, indices: list[int] | None = None) -> list[int]:
        """The fill chunks of ``view`` not cached yet that hold one of ``indices`` (None: any image)."""
        wanted = range(math.ceil(self.size / FILL_CHUNK)) if indices is None else sorted({i // FILL_CHUNK for i in indices})
        return [c for c in wanted if not bool(self.filled[view, c * FILL_CHUNK:(c + 1) * FILL_CHUNK].all())]


def value_counts(sample: ModelOutput, keep_embeddings: bool, feature_levels: int | None) -> dict[str, int]:
    """Values the cache keeps per image and view, by part, from a sample teacher output ``[B, ...]``."""
    counts = {"logits": sample.logits[0].numel()}
    if keep_embeddings:
        counts["embeddings"] = sample.label_embeddings[0].numel()
    if feature_levels != 0:
        kept = sample.features if feature_levels is None else sample.features[len(sample.features) - feature_levels:]
        counts["feature maps"] = sum(f[0].numel() for f in kept)
    return counts


def check_cache_memory(size: int, views: int, counts: dict[str, int], limit_gib: float) -> int:
    """The cache's bytes (float32); raise a `ValueError` with the ways out when over ``limit_gib``."""
    per_view = size * sum(counts.values()) * 4
    total = views * per_view
    if total <= limit_gib * GIB:
        return total
    parts = " + ".join(f"{n} {name}" for name, n in counts.items())
    fits = int(limit_gib * GIB // per_view)
    fewer = (f"use fewer views (--teacher-views {fits} fits)" if fits >= 1 else
             "fewer views will not help (one view alone is over the limit)")
    ways = [fewer]
    if "embeddings" in counts:
        ways.append("use a method that does not read label-wise embeddings (they are "
                    f"{100 * counts['embeddings'] / sum(counts.values()):.0f} % of it) or a narrower head")
    ways += ["raise --cache-limit-gib (cache_limit_gib) if the machine has the memory", "or drop --cache-teacher"]
    raise ValueError(f"the teacher cache would need {views} views x {size} images x ({parts}) values x 4 bytes = "
                     f"{total / GIB:.2f} GiB, over the limit of {limit_gib:g} GiB; " + ", ".join(ways))


# One process's caches by what determines their content (teacher file, images, views, resolution): the
# runs of `mlkd bench` and `mlkd demo` distil many students from one teacher on the same images and
# share its outputs. Only the latest key is kept, to bound memory.
_POOL: dict[tuple, TeacherCache] = {}


def shared_cache(key: tuple, size: int, views: int, keep_embeddings: bool, feature_levels: int | None,
                 sample: ModelOutput, limit_gib: float) -> TeacherCache:
    """The cache of ``key``, created (or widened to the parts asked for, refilled) when needed.

    Args:
        key: everything that determines the teacher's output for an (image, view).
        size: images N; views: views K per image.
        keep_embeddings, feature_levels: the parts to keep (see `TeacherCache`).
        sample: a teacher output on a sample batch, for the per-image sizes.
        limit_gib: refuse (`ValueError`) a cache larger than this.
    """
    cache = _POOL.get(key)
    if cache is not None and cache.size == size and cache.views == views and cache.covers(keep_embeddings, feature_levels):
        return cache
    if cache is not None:
        keep_embeddings |= cache.keep_embeddings
        if cache.feature_levels is None or feature_levels is None:
            feature_levels = None
        else:
            feature_levels = max(feature_levels, cache.feature_levels)
    total = check_cache_memory(size, views, value_counts(sample, keep_embeddings, feature_levels), limit_gib)
    log.info("teacher cache: %d view%s x %d images, %.1f MiB", views, "" if views == 1 else "s", size, total / 2**20)
    _POOL.clear()
    _POOL[key] = TeacherCache(size, views, keep_embeddings, feature_levels)
    return _POOL[key]


@torch.no_grad()
def fill_view(cache: TeacherCache, teacher: nn.Module, norm: nn.Module, data: AugmentedViews, view: int,
              device: torch.device, amp_dtype: torch.dtype | None = None, workers: int = 0,
              indices: list[int] | None = None, show: bool = False) -> int:
    """Run the teacher on every uncached chunk of view ``view`` that holds one of ``indices`` (None: all).

    Chunks go through the teacher whole and in index order (see the module doc); the images come from
    ``data`` exactly as the student gets them. Under torchrun (every rank calls this with its own
    ``indices``) the chunks that any rank needs are dealt out whole, in turn, to the ranks: each runs
    the teacher on its share, and the outputs are exchanged, so that every rank ends with the same
    cache as one process that filled them all. Returns the number of images the teacher saw here.
    """
    info = current_info()
    wanted = torch.zeros(math.ceil(cache.size / FILL_CHUNK), dtype=torch.bool, device=device)
    wanted[cache.missing_chunks(view, indices)] = True
    chunks = any_rank(wanted).nonzero().flatten().tolist()
    if not chunks:
        return 0
    mine = chunks[info.rank::info.world_size]
    # Only the last chunk of the data set can be short, and it comes last: batches of FILL_CHUNK over
    # this order are exactly the chunks.
    order = [i for c in mine for i in cache.chunk(c)]
    batches = iter(())
    if order:
        # An own generator: a DataLoader without one draws its workers' base seed from the global
        # generator, which would shift the student's random stream (dropout) between cached and uncached runs.
        batches = iter(DataLoader(FixedView(data, view, order), batch_size=FILL_CHUNK, num_workers=workers,
                                  pin_memory=device.type == "cuda", generator=torch.Generator()))
    # Round r: rank k computes chunk chunks[r * world_size + k], then every rank stores every rank's result.
    rounds = math.ceil(len(chunks) / info.world_size)
    for _ in progress(range(rounds), rounds, f"teacher, view {view}", show):
        computed = None
        batch = next(batches, None)
        if batch is not None:
            images, index = batch
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = run_teacher(teacher, norm(images.to(device, non_blocking=True)), index)
            computed = [index.to(device), *cache.parts(out)]
        for index, *parts in exchange(computed, device):
            cache.put_parts(view, index, parts)
    return len(order)

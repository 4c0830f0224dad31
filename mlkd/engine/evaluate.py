"""Scoring a model on a data set, exactly, on one process or many."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from mlkd.engine.distributed import all_gather_varlen, current_info
from mlkd.engine.logging import progress
from mlkd.memory import OutOfMemoryError, is_out_of_memory, out_of_memory
from mlkd.files import atomic_write
from mlkd.metrics import average_precision_per_label, multilabel_metrics


class IndexedDataset(Dataset):
    """Wraps a data set so that each item also carries its index: ``(image, target, index)``.

    The index lets the engine re-order predictions gathered from several processes and look up
    cached teacher outputs.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, target = self.dataset[i]
        return image, target, i


class ShardSampler(Sampler[int]):
    """Every ``world``-th index from ``rank``: each sample exactly once over all ranks, no padding.

    (`DistributedSampler` pads with duplicates to equal lengths, which would bias metrics.)
    """

    def __init__(self, length: int, rank: int, world: int):
        self.indices = range(rank, length, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ModelInput(nn.Module):
    """What one model expects of the shared batch: its input resolution and normalisation.

    Data sets yield images in [0, 1] (training images at the run's ``read_size``, by default the larger of
    the student's and the teacher's side; the others at ``img_size``); each model adapts them on the
    device: resized (bilinear, antialiased) to ``size`` when that differs, then ``(x - mean) / std`` when
    ``mean`` is given. So a teacher fine-tuned at 112 px with ImageNet statistics and a student trained
    from scratch at 56 px share one batch read at 112 px.
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 size: int | None = None):
        super().__init__()
        self.stats = None if mean is None else {"mean": list(map(float, mean)), "std": list(map(float, std))}
        self.size = size
        if mean is not None:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x if self.stats is None else (x - self.mean) / self.std

    @classmethod
    def from_stats(cls, stats: dict[str, Any] | None, size: int | None = None) -> "ModelInput":
        return cls(size=size) if stats is None else cls(stats["mean"], stats["std"], size)


def eval_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """A loader that gives every sample once, sharded over the ranks of a process group."""
    info = current_info()
    return DataLoader(IndexedDataset(dataset), batch_size=batch_size, num_workers=workers,
                      sampler=ShardSampler(len(dataset), info.rank, info.world_size),
                      pin_memory=device.type == "cuda", persistent_workers=False)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, norm: ModelInput,
            amp_dtype: torch.dtype | None = None, show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and targets of every sample of ``loader``'s data set, in data-set order.

    Under a process group each rank scores its shard, then the shards are gathered and re-ordered
    by sample index, so the result equals a single-process run.

    Returns:
        ``scores [n, q]`` and ``targets [n, q]`` as float64 numpy arrays.

    Raises:
        OutOfMemoryError: a batch did not fit in memory; the message names the batch and image sizes.
    """
    was_training = model.training
    model.eval()
    norm = norm.to(device)
    scores, targets, indices = [], [], []
    shape = None  # of the last batch the loader delivered, for an out-of-memory report
    try:
        for images, target, index in progress(loader, len(loader), "eval", show_progress):
            shape = tuple(images.shape)
            images = norm(images.to(device, non_blocking=True))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = _logits(model, images)
            scores.append(torch.sigmoid(logits.float()))
            targets.append(target.to(device, torch.float32))
            indices.append(index.to(device))
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        raise _scoring_out_of_memory(err, loader, device, shape) from err
    finally:
        model.train(was_training)
    q = len(getattr(loader.dataset.dataset, "classes", [])) or 0
    cat = lambda xs, shape: torch.cat(xs) if xs else torch.zeros(shape, device=device)  # noqa: E731
    scores_t = all_gather_varlen(cat(scores, (0, q)))
    targets_t = all_gather_varlen(cat(targets, (0, q)))
    order = torch.argsort(all_gather_varlen(cat(indices, (0,)).long()))
    return scores_t[order].double().cpu().numpy(), targets_t[order].double().cpu().numpy()


def _scoring_out_of_memory(err: BaseException, loader: DataLoader, device: torch.device,
                           shape: tuple[int, ...] | None) -> OutOfMemoryError:
    """The report of a batch that did not fit: its size, its images' size, and what to lower."""
    batch = loader.batch_size
    if shape is not None:  # a batch was delivered: its sizes are known
        sizes = f"batches of {batch} images of {shape[-2]}x{shape[-1]} px"
        img_size = f" (now {shape[-1]})"
    else:  # the loader failed while reading or stacking the first batch
        sizes = f"batches of {batch} images"
        img_size = ""
    return out_of_memory(err, f"scoring on {device}", sizes,
                         f"pass a smaller --batch-size (now {batch}), or a smaller --img-size{img_size} "
                         "if the model allows it")


def _logits(model: nn.Module, images: Tensor) -> Tensor:
    inner = getattr(model, "module", model)  # unwrap DDP: evaluation needs no gradient sync
    if hasattr(inner, "forward_logits"):
        return inner.forward_logits(images)
    return inner(images).logits


def compute_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float,
                    classes: Sequence[str]) -> dict[str, Any]:
    """The metrics written to ``metrics.json``: both protocols plus per-label AP by class name."""
    metrics = multilabel_metrics(scores, targets, threshold=threshold)
    ap = average_precision_per_label(scores, targets)
    metrics["AP_per_label"] = {c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, ap)}
    metrics["num_images"] = int(scores.shape[0])
    return metrics


def save_scores(path: str | Path, scores: np.ndarray, targets: np.ndarray) -> Path:
    """Write per-image ``scores [n, q]`` (float64) and binary ``targets [n, q]`` to an ``.npz`` file, atomically."""
    def write(f) -> None:
        np.savez(f, scores=np.asarray(scores, dtype=np.float64), targets=np.asarray(targets, dtype=np.uint8))

    return atomic_write(path, write)


def load_scores(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``scores [n, q]`` and ``targets [n, q]`` that `save_scores` wrote (float64 both)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist: runs of older mlkd versions lack the per-image test scores; "
                                "resume the run with --resume (a finished run then only rewrites its final report)")
    with np.load(path) as data:
        return data["scores"].astype(np.float64), data["targets"].astype(np.float64)

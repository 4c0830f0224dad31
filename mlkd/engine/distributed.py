"""Process-group set-up under torchrun and the collectives the engine needs.

Without torchrun (no ``WORLD_SIZE`` in the environment) everything here is a no-op for one process.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``; ``is_main`` writes files and logs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available; under torchrun each process takes GPU ``LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was requested but CUDA is not available; use --device cpu")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    elif name != "cpu":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return torch.device(name)


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when launched by torchrun (``nccl`` on CUDA, ``gloo`` on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current_info() -> DistInfo:
    """The running process group, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def all_gather_varlen(x: Tensor) -> Tensor:
    """Concatenate along dim 0 the tensors of every rank, whose first dimensions may differ.

    Rank order is kept: rank 0's rows first. Without a process group, ``x`` itself.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every rank (identity for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate along dim 0 every rank's ``x`` (same shape on all ranks), rank 0 first.

    The result carries gradient to this rank's own rows only; the other ranks' rows are constants
    here, and their gradients are produced on their own ranks. With every rank computing the same
    global loss, DDP's gradient averaging then recovers the gradient of the global loss
    (`TrainStep` scales summed terms by the world size for this).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def gather_structure_inputs(student_emb: Tensor, teacher_emb: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Label-wise embeddings and targets of the global batch, for CD/ID over all ranks' images.

    Cost: one all-gather of ``[N, q, d_s + d_t]`` floats per step and per rank, and CD/ID computed
    on ``world_size`` times more images (each rank computes the same global value).
    """
    # gloo cannot all-gather bool tensors: move label masks as bytes.
    labels = all_gather_with_grad(targets.to(torch.uint8)).to(targets.dtype)
    return all_gather_with_grad(student_emb), all_gather_with_grad(teacher_emb.detach()), labels


def any_rank(mask: Tensor) -> Tensor:
    """Element-wise OR over the ranks of a bool ``mask`` (on this rank's device); ``mask`` alone without a group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return mask
    counts = mask.to(torch.int32)  # gloo reduces no bool tensors
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    return counts.bool()


def exchange(parts: list[Tensor] | None, device: torch.device) -> Iterator[list[Tensor]]:
    """Every rank's ``parts``, in rank order, on every rank; a rank with None contributes nothing.

    A generator: every rank must consume it whole (each step is a collective). Contributions may differ
    in their first dimension; their count of tensors, dtypes and other dimensions must agree. One rank's
    contribution is sent at a time (a broadcast from it), so the memory it takes is one contribution,
    whatever the number of ranks. Without a process group: ``parts`` itself, if any.

    Args:
        parts: this rank's tensors, on ``device``, or None.
        device: where tensors are received (this rank's GPU under NCCL).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        if parts is not None:
            yield parts
        return
    layout = None if parts is None else [(tuple(p.shape), p.dtype) for p in parts]
    layouts: list = [None] * dist.get_world_size()
    dist.all_gather_object(layouts, layout)
    for src, shapes in enumerate(layouts):
        if shapes is None:
            continue
        if src == dist.get_rank():
            received = [p.contiguous() for p in parts]
        else:
            received = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in shapes]
        for t in received:
            dist.broadcast(t, src=src)
        yield received

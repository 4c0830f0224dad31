"""Out-of-memory failures: told apart from other errors and reported with the sizes that caused them.

torch reports a failed allocation in several forms: ``torch.OutOfMemoryError`` on CUDA ("CUDA out of
memory"), a plain ``RuntimeError`` from the CPU allocator ("DefaultCPUAllocator: can't allocate
memory"), the same text wrapped by a data loader worker, or Python's and numpy's ``MemoryError``. The
engine turns them into an `OutOfMemoryError` that says what ran out of memory at which image and batch
size, and which setting to lower; the command line prints that message instead of a traceback.
"""
from __future__ import annotations

import torch

# Texts of torch's allocation failures (CUDA, the CPU allocator, a wrapped data loader worker error).
_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory", "DefaultCPUAllocator")


class OutOfMemoryError(MemoryError):
    """mlkd's report of a failed allocation; the message names the sizes in use and what to lower."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a failed memory allocation, in any of torch's and Python's forms."""
    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in _OOM_TEXTS)


def out_of_memory(err: BaseException, doing: str, sizes: str, advice: str) -> OutOfMemoryError:
    """The `OutOfMemoryError` for ``err``.

    Args:
        err: the allocation failure (`is_out_of_memory`).
        doing: what ran out of memory, e.g. ``"scoring on cpu"``.
        sizes: the sizes in use, e.g. ``"batches of 64 images of 4096x4096 px"``.
        advice: what to change, e.g. ``"pass a smaller --batch-size (now 64) or --img-size (now 4096)"``.
    """
    if isinstance(err, OutOfMemoryError):
        return err
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # A wrapped worker error ends with the original error's line; torch's own first lines are the cause.
    cause = next((line for line in lines if any(text in line for text in _OOM_TEXTS)), lines[0] if lines else "")
    cause = f"{type(err).__name__}: {cause[:200]}" if cause else type(err).__name__
    return OutOfMemoryError(f"{doing} ran out of memory ({cause}) with {sizes}; {advice}")

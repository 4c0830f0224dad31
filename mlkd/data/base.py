"""What every mlkd data set shares: the sample contract, image decoding and input checks.

A data set yields ``(image, target)`` pairs: ``image`` is whatever its ``transform`` returns for a PIL RGB
image (by default a ``[3, H, W]`` float32 tensor in ``[0, 1]``) and ``target`` is a ``[q]`` float32
tensor of 0s and 1s whose positions follow ``classes``. ``targets`` gives all targets at once without
decoding any image.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mlkd.data.transforms import to_tensor

logger = logging.getLogger(__name__)

Transform = Callable[[Image.Image], Tensor]

# How many unreadable files an error or warning names before summarising the rest as a count.
_NAMED_MAX = 10


class DataFormatError(ValueError):
    """A data set file exists but its content is wrong (malformed line, unknown label, broken image)."""


def require_dir(path: Path, what: str, fix: str) -> Path:
    """Return ``path`` if it is a folder, else raise `FileNotFoundError` saying what it is and the fix."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} folder not found. {fix}")
    return path


def require_file(path: Path, what: str, fix: str) -> Path:
    """Return ``path`` if it is a file, else raise `FileNotFoundError` saying what it is and the fix."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found. {fix}")
    return path


def require_root(root: str | os.PathLike | None, dataset: str, layout: str) -> Path:
    """Check the data set folder given by the user.

    Args:
        root: the folder passed as ``root`` (``--data-root`` on the command line).
        dataset: the registry name, for the message.
        layout: a short description of what the folder must hold, for the message.
    """
    if root is None:
        raise ValueError(f"data set {dataset!r} needs root (--data-root): the folder that holds {layout}")
    return require_dir(Path(root), f"{dataset} root", f"Pass as root (--data-root) the folder that holds {layout}.")


def _named(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_NAMED_MAX])
    rest = len(items) - _NAMED_MAX
    return shown + (f" and {rest} more" if rest > 0 else "")


def _decode_problem(path: Path) -> str | None:
    """Fully decode the image at ``path``; return why it failed, or ``None`` when it decodes."""
    try:
        with Image.open(path) as img:
            # JPEG draft mode decodes at a reduced scale: every byte is still entropy-decoded, so truncated
            # or corrupt files still fail, at a fraction of the cost of a full-size decode.
            img.draft("RGB", (64, 64))
            img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class ImageListDataset(Dataset):
    """A multi-label data set given by a list of image files and a target matrix.

    Readers parse their annotation format into ``images`` and ``targets`` and hand them to this class,
    which checks the image files and decodes them on access.

    Unreadable images: at construction every listed file must exist, otherwise a `FileNotFoundError`
    names the missing files. Decoding happens in ``__getitem__``, where a broken file raises
    `DataFormatError` naming it. With ``skip_unreadable=True`` every image is instead fully decoded once
    at construction (a one-off pass over the data set, on several threads); missing and undecodable
    files are dropped, logged as a warning with their count and names, and listed in ``skipped``.

    Attributes:
        classes: label names; position ``k`` of a target is label ``classes[k]``.
        images: the image files, in sample order.
        skipped: ``(path, reason)`` for every image dropped by ``skip_unreadable``.
    """

    def __init__(
        self,
        images: Sequence[Path],
        targets: np.ndarray,
        classes: Sequence[str],
        transform: Transform | None = None,
        skip_unreadable: bool = False,
        origins: Sequence[str] | None = None,
    ) -> None:
        """
        Args:
            images: ``n`` image paths.
            targets: ``[n, q]`` array of 0/1 (any integer or bool dtype).
            classes: ``q`` label names.
            transform: applied to each PIL RGB image; ``None`` converts it to a float tensor in [0, 1].
            skip_unreadable: drop missing or undecodable images instead of raising (see class doc).
            origins: for error messages, where each image is listed (e.g. ``"train.csv:12"``).
        """
        targets = np.asarray(targets)
        if targets.shape != (len(images), len(classes)):
            raise ValueError(
                f"targets must have shape [len(images), len(classes)] = [{len(images)}, {len(classes)}], "
                f"got {list(targets.shape)}"
            )
        self.classes = list(classes)
        self.transform = transform
        self.skipped: list[tuple[Path, str]] = []
        self._origins = list(origins) if origins is not None else None
        keep = self._check_images([Path(p) for p in images], skip_unreadable)
        self.images = [Path(images[i]) for i in keep]
        if self._origins is not None:
            self._origins = [self._origins[i] for i in keep]
        self._targets = targets[keep].astype(np.uint8)

    def _describe(self, path: Path, index: int) -> str:
        return f"{path} (listed at {self._origins[index]})" if self._origins is not None else str(path)

    def _check_images(self, images: list[Path], skip_unreadable: bool) -> list[int]:
        """Return the indices of the images to keep; raise or record the others (see class doc)."""
        missing = [i for i, p in enumerate(images) if not p.is_file()]
        if missing and not skip_unreadable:
            named = _named([self._describe(images[i], i) for i in missing])
            raise FileNotFoundError(
                f"{len(missing)} of {len(images)} images are missing: {named}. "
                "Fix the paths or the data set folder, or pass skip_unreadable=True to leave them out."
            )
        if not skip_unreadable:
            return list(range(len(images)))
        problems: dict[int, str] = {i: "file not found" for i in missing}
        present = [i for i in range(len(images)) if i not in problems]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for i, problem in zip(present, pool.map(_decode_problem, [images[i] for i in present])):
                if problem is not None:
                    problems[i] = problem
        self.skipped = [(images[i], problems[i]) for i in sorted(problems)]
        if self.skipped:
            logger.warning(
                "skipped %d of %d unreadable images: %s",
                len(self.skipped), len(images), _named([f"{p} ({why})" for p, why in self.skipped]),
            )
            for path, why in self.skipped:
                logger.debug("skipped unreadable image %s: %s", path, why)
        return [i for i in range(len(images)) if i not in problems]

    @property
    def targets(self) -> Tensor:
        """All targets, ``[len(self), q]`` float32 in {0, 1}; no image is decoded."""
        return torch.from_numpy(self._targets.astype(np.float32))

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> Image.Image:
        """Decode image ``index`` as PIL RGB (grayscale, palette and CMYK images are converted)."""
        path = self.images[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataFormatError(
                f"{self._describe(path, index)}: cannot decode image ({type(exc).__name__}: {exc}). Replace the "
                "file, or pass skip_unreadable=True to check every image once at construction and leave broken "
                "ones out."
            ) from exc

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Return ``(image, target)``: ``transform(PIL RGB image)`` and a ``[q]`` float32 target."""
        img = self.load_image(index)
        image = (self.transform or to_tensor)(img)
        return image, torch.from_numpy(self._targets[index].astype(np.float32))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes)"

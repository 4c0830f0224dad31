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
# The fix for unreadable images, in the command line's form first (most users meet it there).
SKIP_HINT = "pass --dataset-option skip_unreadable=true (skip_unreadable=True in Python)"


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


# Formats whose 16-bit grey images PIL opens in its 32-bit mode ``I``, with values in [0, 65535].
_SIXTEEN_BIT_AS_I = ("PNG", "PPM")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to 8-bit RGB, keeping the real range of deep images.

    PIL's own ``convert("RGB")`` clips 16-bit and float pixels to [0, 255], which turns a 16-bit PNG
    nearly white and a float TIFF in [0, 1] black. Here 16-bit images are scaled by 255/65535 and float
    images in [0, 1] by 255 (so that after `to_tensor` they lie in [0, 1] as in the file, at 8-bit
    precision, the precision of the rest of the pipeline).

    A grey PGM whose header's maxval is above 255 opens in mode ``I`` with its pixels already scaled
    by PIL from [0, maxval] to [0, 65535], so it is read as a 16-bit image: the value ``v`` of a file
    with maxval ``m`` becomes ``v / m``. (PIL scales colour PPMs to 8 bits itself.)

    Raises:
        DataFormatError: a float image with values outside [0, 1] or non-finite values, or a 32-bit
            integer image: their range has no standard meaning, so guessing would silently distort them.
    """
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format in _SIXTEEN_BIT_AS_I):
        pixels = np.asarray(img, dtype=np.int64)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise DataFormatError(f"16-bit image with values in [{pixels.min()}, {pixels.max()}], outside [0, 65535]")
        return Image.fromarray(np.round(pixels * (255 / 65535)).astype(np.uint8), "L").convert("RGB")
    if img.mode == "I":
        raise DataFormatError(
            "32-bit integer image: its value range is ambiguous. Save it as an 8- or 16-bit image (PNG, JPEG)"
        )
    if img.mode == "F":
        pixels = np.asarray(img, dtype=np.float64)
        if not np.isfinite(pixels).all():
            raise DataFormatError("float image with NaN or infinite pixels")
        if pixels.size and (pixels.min() < 0 or pixels.max() > 1):
            raise DataFormatError(
                f"float image with values in [{pixels.min():.4g}, {pixels.max():.4g}]; mlkd reads float images "
                "as intensities in [0, 1]. Rescale it to [0, 1], or save it as an 8- or 16-bit image"
            )
        return Image.fromarray(np.round(pixels * 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")  # a copy even for RGB: the file may be closed once this returns


# Results of `_decode_problem` by (path, modification time, size): a run builds the same split more than
# once (training and validation views, the pre-flight check), and a full decode pass is the costly part.
_DECODED: dict[tuple[str, int, int], str | None] = {}


def _decode_problem(path: Path) -> str | None:
    """Fully decode the image at ``path``; return why it failed, or ``None`` when it decodes."""
    try:
        stat = path.stat()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _DECODED:
        _DECODED[key] = _decode(path)
    return _DECODED[key]


def _header_problem(path: Path) -> str | None:
    """Open the image at ``path`` reading its header only; return why it failed, or ``None``."""
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018  (the header gives the size; no pixel is decoded)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _decode(path: Path) -> str | None:
    try:
        with Image.open(path) as img:
            # JPEG draft mode decodes at a reduced scale: every byte is still entropy-decoded, so truncated
            # or corrupt files still fail, at a fraction of the cost of a full-size decode.
            img.draft("RGB", (64, 64))
            img.load()
            to_rgb(img)
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
        decode_checked: True when every image was decoded at construction (``skip_unreadable``).
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
        # With skip_unreadable every kept image has been decoded once: no need to check them again.
        self.decode_checked = bool(skip_unreadable)
        self._origins = list(origins) if origins is not None else None
        keep = self._check_images([Path(p) for p in images], skip_unreadable)
        self.images = [Path(images[i]) for i in keep]
        if self._origins is not None:
            self._origins = [self._origins[i] for i in keep]
        self._targets = targets[keep].astype(np.uint8)

    def unreadable(self, decode: Sequence[int], open_only: Sequence[int] = ()) -> list[str]:
        """Find images that cannot be read, on several threads.

        Args:
            decode: indices of images to decode fully (at reduced scale for JPEG, as ``skip_unreadable``).
            open_only: indices of images whose header only is read (format and size; catches files that
                are not images, empty or cut off before the pixel data, at a fraction of a decode's cost).

        Returns:
            ``"path (listed at ...) (reason)"`` for each failing image, in index order.
        """
        jobs = [(i, _decode_problem) for i in decode] + [(i, _header_problem) for i in open_only]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            found = list(pool.map(lambda job: (job[0], job[1](self.images[job[0]])), jobs))
        return [f"{self._describe(self.images[i], i)} ({why})" for i, why in sorted(found, key=lambda f: f[0])
                if why is not None]

    def _describe(self, path: Path, index: int) -> str:
        return f"{path} (listed at {self._origins[index]})" if self._origins is not None else str(path)

    def _check_images(self, images: list[Path], skip_unreadable: bool) -> list[int]:
        """Return the indices of the images to keep; raise or record the others (see class doc)."""
        missing = [i for i, p in enumerate(images) if not p.is_file()]
        if missing and not skip_unreadable:
            named = _named([self._describe(images[i], i) for i in missing])
            raise FileNotFoundError(
                f"{len(missing)} of {len(images)} images are missing: {named}. "
                f"Fix the paths or the data set folder, or {SKIP_HINT} to leave them out."
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
        if images and len(problems) == len(images):
            raise ValueError(
                f"none of the {len(images)} images could be read, so skip_unreadable would leave an empty data "
                f"set: {_named([f'{p} ({why})' for p, why in self.skipped])}. Check the data set folder and its files."
            )
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
                return to_rgb(img)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataFormatError(
                f"{self._describe(path, index)}: cannot decode image ({type(exc).__name__}: {exc}). Replace the "
                f"file, or {SKIP_HINT} to check every image once at construction and leave broken ones out."
            ) from exc

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Return ``(image, target)``: ``transform(PIL RGB image)`` and a ``[q]`` float32 target."""
        img = self.load_image(index)
        image = (self.transform or to_tensor)(img)
        return image, torch.from_numpy(self._targets[index].astype(np.float32))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes)"

"""NUS-WIDE in its official layout, as a multi-label data set (81 concepts, official train/test split).

Layout under ``root``::

    Flickr/<folder>/<image>.jpg
    ImageList/TrainImagelist.txt, ImageList/TestImagelist.txt    one path per line, e.g. actor\\0001_2124494179.jpg
    TrainTestLabels/Labels_<concept>_Train.txt, ..._Test.txt     one 0/1 per line, aligned with the image list
    Concepts81.txt                                               one concept per line (also found in ConceptsList/)

Label ``k`` is the k-th concept of ``Concepts81.txt``; images follow the order of the image list. The image
lists use Windows separators; they are read as relative paths under ``Flickr/``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mlkd.data.base import (
    DataFormatError,
    ImageListDataset,
    Transform,
    require_dir,
    require_file,
    require_root,
)
from mlkd.data.registry import register_dataset

_LAYOUT = "Flickr/, ImageList/, TrainTestLabels/ and Concepts81.txt (the official NUS-WIDE layout)"
_FIX = "Unpack the official NUS-WIDE image, image-list, ground-truth and concept-list archives into the data root."


def _read_concepts(root: Path) -> list[str]:
    candidates = [root / "Concepts81.txt", root / "ConceptsList" / "Concepts81.txt"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{candidates[0]}: NUS-WIDE concept list not found (nor in ConceptsList/). {_FIX}")
    concepts: list[str] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in concepts:
            raise DataFormatError(f"{path}:{line_no}: the concept {name!r} is listed twice.")
        concepts.append(name)
    if not concepts:
        raise DataFormatError(f"{path}: the concept list is empty. {_FIX}")
    return concepts


def _read_label_column(path: Path, n_images: int, image_list: Path) -> np.ndarray:
    """One concept's ``[n_images]`` uint8 labels from ``Labels_<concept>_<Split>.txt``."""
    data = path.read_bytes()
    tokens = data.split()
    # Fast path for well-formed files (one 0/1 per line); the slow scan below only runs to find the error.
    if len(tokens) == n_images and set(tokens) <= {b"0", b"1"}:
        return np.frombuffer(b"".join(tokens), dtype=np.uint8) - ord("0")
    lines = data.decode("utf-8", errors="replace").splitlines()
    for line_no, line in enumerate(lines, start=1):
        if line.strip() not in ("0", "1"):
            raise DataFormatError(f"{path}:{line_no}: expected 0 or 1, got {line.strip()!r}. Restore the file.")
    raise DataFormatError(
        f"{path}: has {len(lines)} labels but {image_list} lists {n_images} images; the two must align line "
        "by line. Use matching files from the same NUS-WIDE release."
    )


@register_dataset("nuswide", splits=("train", "test"))
class NusWide(ImageListDataset):
    """NUS-WIDE, official split ``train`` or ``test``; see the module doc for the layout.

    Options:
        drop_unlabeled: leave out images with none of the 81 concepts (default ``False``: keep them, as
            the paper's code does).
        skip_unreadable: leave out missing or undecodable images instead of raising (see
            `ImageListDataset`). Many NUS-WIDE copies lack some Flickr images; this option is the way
            to use such a copy.
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str,
        transform: Transform | None = None,
        *,
        drop_unlabeled: bool = False,
        skip_unreadable: bool = False,
    ) -> None:
        root_dir = require_root(root, "nuswide", _LAYOUT)
        image_dir = require_dir(root_dir / "Flickr", "NUS-WIDE image", _FIX)
        label_dir = require_dir(root_dir / "TrainTestLabels", "NUS-WIDE label", _FIX)
        tag = split.capitalize()
        list_file = require_file(root_dir / "ImageList" / f"{tag}Imagelist.txt", "NUS-WIDE image list", _FIX)
        names = [
            line.strip().replace("\\", "/")
            for line in list_file.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        classes = _read_concepts(root_dir)
        columns = []
        for concept in classes:
            label_file = require_file(
                label_dir / f"Labels_{concept}_{tag}.txt", f"NUS-WIDE label for concept {concept!r}", _FIX
            )
            columns.append(_read_label_column(label_file, len(names), list_file))
        targets = np.stack(columns, axis=1)
        if drop_unlabeled:
            keep = targets.any(axis=1)
            names = [n for n, k in zip(names, keep) if k]
            targets = targets[keep]
        super().__init__([image_dir / n for n in names], targets, classes, transform, skip_unreadable)

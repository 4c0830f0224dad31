"""The ``csv`` data set: users' own multi-label data in a small CSV format.

Layout under ``root``::

    train.csv, test.csv, val.csv (optional)    header ``image,labels``; one image per line
    classes.txt (optional)                     one label name per line; fixes the classes and their order
    <images, anywhere under root>

``image`` is a path relative to ``root``; ``labels`` is a ``|``-separated list of label names (spaces
around names are ignored), empty for an image with no label. Example::

    image,labels
    photos/001.jpg,cat|dog
    photos/002.png,
    "photos/with,comma.jpg",dog

Without ``classes.txt`` the classes are the sorted union of the names used in every split file present,
so all splits share one class order.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from mlkd.data.base import DataFormatError, ImageListDataset, Transform, require_file, require_root
from mlkd.data.registry import register_dataset

SPLITS = ("train", "val", "test")
HEADER = ["image", "labels"]
_LAYOUT = "train.csv and test.csv (optionally val.csv and classes.txt) with the header 'image,labels'"


def read_split_csv(path: Path) -> list[tuple[int, str, list[str]]]:
    """Parse one split file.

    Args:
        path: ``<split>.csv``.

    Returns:
        ``(line number, image path, label names)`` for every non-blank line after the header.

    Raises:
        DataFormatError: wrong header, a line without exactly two fields, an empty image path, or an
            empty name inside a label list (e.g. ``cat||dog``); each message names the file and line.
    """
    rows = []
    # utf-8-sig: spreadsheet programs often write a byte-order mark that would corrupt the header.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != HEADER:
                raise DataFormatError(
                    f"{path}:1: the header must be 'image,labels', got {','.join(header or [])!r}."
                )
            for fields in reader:
                line = reader.line_num
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                if len(fields) != 2:
                    raise DataFormatError(
                        f"{path}:{line}: expected 2 fields (image,labels), got {len(fields)}. Quote image "
                        "paths that contain commas and separate labels with '|'."
                    )
                image, labels = fields[0].strip(), fields[1].strip()
                if not image:
                    raise DataFormatError(f"{path}:{line}: the image path is empty.")
                names = [n.strip() for n in labels.split("|")] if labels else []
                if "" in names:
                    raise DataFormatError(
                        f"{path}:{line}: empty label name in {labels!r}. Separate names with a single '|' "
                        "and leave the field empty for an image without labels."
                    )
                rows.append((line, image, names))
        except csv.Error as exc:
            raise DataFormatError(f"{path}:{reader.line_num}: malformed CSV ({exc}).") from exc
    return rows


def read_classes_txt(path: Path) -> list[str]:
    """Label names from ``classes.txt``, one per line (blank lines ignored), in file order.

    Raises:
        DataFormatError: a name listed twice, a name containing ``|``, or no name at all.
    """
    classes: list[str] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if "|" in name:
            raise DataFormatError(f"{path}:{line_no}: the name {name!r} contains '|', the label separator.")
        if name in classes:
            raise DataFormatError(f"{path}:{line_no}: the name {name!r} is listed twice.")
        classes.append(name)
    if not classes:
        raise DataFormatError(f"{path}: no class names. Write one name per line, or delete the file.")
    return classes


@register_dataset("csv", splits=SPLITS)
class CsvDataset(ImageListDataset):
    """Users' own data in the ``csv`` format (see the module doc); splits ``train``, ``val``, ``test``.

    Options:
        skip_unreadable: leave out missing or undecodable images instead of raising (see
            `ImageListDataset`).
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str,
        transform: Transform | None = None,
        *,
        skip_unreadable: bool = False,
    ) -> None:
        root_dir = require_root(root, "csv", _LAYOUT)
        require_file(root_dir / f"{split}.csv", f"{split} split", f"Write {split}.csv with the header 'image,labels'.")
        # Every split file is read, so that the class list (and order) is the same whichever split is built.
        parsed = {s: read_split_csv(root_dir / f"{s}.csv") for s in SPLITS if (root_dir / f"{s}.csv").is_file()}
        classes_file = root_dir / "classes.txt"
        if classes_file.is_file():
            classes = read_classes_txt(classes_file)
            known = set(classes)
            for s, rows in parsed.items():
                for line, _, names in rows:
                    unknown = [n for n in names if n not in known]
                    if unknown:
                        raise DataFormatError(
                            f"{root_dir / f'{s}.csv'}:{line}: label {unknown[0]!r} is not in {classes_file}. "
                            "Add it there, or fix the label."
                        )
        else:
            classes = sorted({n for rows in parsed.values() for _, _, names in rows for n in names})
            if not classes:
                files = ", ".join(str(root_dir / f"{s}.csv") for s in parsed)
                raise DataFormatError(
                    f"{files}: no label is used anywhere. Label the images, or list the classes in classes.txt."
                )
        column = {name: k for k, name in enumerate(classes)}
        rows = parsed[split]
        targets = np.zeros((len(rows), len(classes)), dtype=np.uint8)
        for r, (_, _, names) in enumerate(rows):
            targets[r, [column[n] for n in names]] = 1
        super().__init__(
            [root_dir / image for _, image, _ in rows],
            targets,
            classes,
            transform,
            skip_unreadable,
            origins=[f"{split}.csv:{line}" for line, _, _ in rows],
        )

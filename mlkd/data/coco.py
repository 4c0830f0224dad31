"""MS-COCO 2014 in its official layout, as a multi-label data set (80 labels).

Layout under ``root``::

    train2014/COCO_train2014_*.jpg
    val2014/COCO_val2014_*.jpg
    annotations/instances_train2014.json
    annotations/instances_val2014.json

Label ``k`` is the category whose id is the k-th smallest (the usual 80-label order); an image is
positive for every category that has at least one instance annotation on it (crowd annotations
included). Images are ordered by image id.
"""
from __future__ import annotations

import json
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

_LAYOUT = "train2014/, val2014/ and annotations/instances_{train,val}2014.json (official MS-COCO 2014 layout)"


def _field(entry: object, key: str, kind: type, file: Path, where: str | None):
    """``entry[key]`` checked to be of type ``kind``; ``where`` locates ``entry`` (``None``: top level)."""
    if not isinstance(entry, dict) or key not in entry:
        raise DataFormatError(
            f"{file}: {where or 'the top level'} has no {key!r} key. Use the official COCO instances file."
        )
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        location = f"{where}[{key!r}]" if where else repr(key)
        raise DataFormatError(f"{file}: {location} must be {kind.__name__}, got {value!r}.")
    return value


def read_coco_instances(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse a COCO instances JSON file into labels.

    Args:
        path: ``instances_<split>2014.json``.

    Returns:
        ``(classes, file_names, targets)``: category names ordered by id, the image file names ordered
        by image id, and their ``[n_images, n_categories]`` uint8 targets.

    Raises:
        DataFormatError: invalid JSON (with line and column), a missing key, a duplicate id, or an
            annotation pointing to an unknown image or category.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            f"{path}:{exc.lineno}: invalid JSON at column {exc.colno} ({exc.msg}). "
            "The file is damaged or truncated; download the official annotations again."
        ) from exc
    sections = {k: _field(data, k, list, path, None) for k in ("categories", "images", "annotations")}

    cat_ids = {}
    for n, cat in enumerate(sections["categories"]):
        cid = _field(cat, "id", int, path, f"categories[{n}]")
        if cid in cat_ids:
            raise DataFormatError(f"{path}: categories[{n}] repeats the category id {cid}.")
        cat_ids[cid] = _field(cat, "name", str, path, f"categories[{n}]")
    sorted_ids = sorted(cat_ids)
    column = {cid: k for k, cid in enumerate(sorted_ids)}

    images = {}
    for n, img in enumerate(sections["images"]):
        iid = _field(img, "id", int, path, f"images[{n}]")
        if iid in images:
            raise DataFormatError(f"{path}: images[{n}] repeats the image id {iid}.")
        images[iid] = _field(img, "file_name", str, path, f"images[{n}]")
    image_ids = sorted(images)
    row = {iid: r for r, iid in enumerate(image_ids)}

    rows, cols = [], []
    for n, ann in enumerate(sections["annotations"]):
        iid = _field(ann, "image_id", int, path, f"annotations[{n}]")
        cid = _field(ann, "category_id", int, path, f"annotations[{n}]")
        if iid not in row:
            raise DataFormatError(f"{path}: annotations[{n}] refers to image id {iid}, which is not in 'images'.")
        if cid not in column:
            raise DataFormatError(
                f"{path}: annotations[{n}] refers to category id {cid}, which is not in 'categories'."
            )
        rows.append(row[iid])
        cols.append(column[cid])
    targets = np.zeros((len(image_ids), len(sorted_ids)), dtype=np.uint8)
    targets[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = 1
    return [cat_ids[c] for c in sorted_ids], [images[i] for i in image_ids], targets


@register_dataset("coco2014", splits=("train", "val"))
class Coco2014(ImageListDataset):
    """MS-COCO 2014, split ``train`` (train2014) or ``val`` (val2014); see the module doc for the layout.

    Options:
        drop_unlabeled: leave out images without any instance annotation (default ``True``, as in the
            paper; about 1 % of the images).
        skip_unreadable: leave out missing or undecodable images instead of raising (see
            `ImageListDataset`).
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str,
        transform: Transform | None = None,
        *,
        drop_unlabeled: bool = True,
        skip_unreadable: bool = False,
    ) -> None:
        root_dir = require_root(root, "coco2014", _LAYOUT)
        ann = require_file(
            root_dir / "annotations" / f"instances_{split}2014.json",
            "COCO annotation",
            "Unpack annotations_trainval2014.zip into the data root.",
        )
        image_dir = require_dir(
            root_dir / f"{split}2014", "COCO image", f"Unpack {split}2014.zip into the data root."
        )
        classes, names, targets = read_coco_instances(ann)
        if drop_unlabeled:
            keep = targets.any(axis=1)
            names = [n for n, k in zip(names, keep) if k]
            targets = targets[keep]
        super().__init__([image_dir / n for n in names], targets, classes, transform, skip_unreadable)

"""Pascal VOC 2007 in its official VOCdevkit layout, as a multi-label data set (20 labels).

Layout under ``root`` (the ``VOCdevkit`` folder; the ``VOC2007`` folder itself is accepted too)::

    VOC2007/JPEGImages/<id>.jpg
    VOC2007/Annotations/<id>.xml
    VOC2007/ImageSets/Main/{train,val,trainval,test}.txt

An image is positive for every class that has an ``<object>`` in its XML file. Classes are the 20 VOC
classes in their usual alphabetical order; images follow the order of the split's id list.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
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

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_LAYOUT = "VOC2007/ with JPEGImages/, Annotations/ and ImageSets/Main/ (the official VOCdevkit layout)"
_DIFFICULT = ("positive", "ignore")


def read_voc_labels(xml_path: Path, difficult: str = "positive") -> set[str]:
    """The class names present in one VOC annotation file.

    Args:
        xml_path: ``Annotations/<id>.xml``.
        difficult: ``"positive"`` counts objects marked ``<difficult>1</difficult>``; ``"ignore"``
            disregards them (a class seen only on difficult objects is then absent).

    Raises:
        DataFormatError: malformed XML (with line), an object without a name, or an unknown class.
    """
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as exc:
        line, col = exc.position
        raise DataFormatError(f"{xml_path}:{line}: malformed XML at column {col} ({exc}). Restore the file.") from exc
    labels = set()
    for n, obj in enumerate(tree.getroot().iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataFormatError(f"{xml_path}: <object> number {n} has no <name>. Restore the file.")
        if name not in VOC_CLASSES:
            raise DataFormatError(
                f"{xml_path}: <object> number {n} has the name {name!r}, not one of the 20 VOC classes "
                f"({', '.join(VOC_CLASSES)})."
            )
        if difficult == "ignore" and (obj.findtext("difficult") or "0").strip() == "1":
            continue
        labels.add(name)
    return labels


@register_dataset("voc2007", splits=("trainval", "test", "train", "val"))
class Voc2007(ImageListDataset):
    """Pascal VOC 2007; the paper trains on ``trainval`` and evaluates on ``test``.

    Options:
        difficult: ``"positive"`` (default, as the paper's code does) counts objects marked difficult
            as positives; ``"ignore"`` disregards them.
        skip_unreadable: leave out missing or undecodable images instead of raising (see
            `ImageListDataset`).
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str,
        transform: Transform | None = None,
        *,
        difficult: str = "positive",
        skip_unreadable: bool = False,
    ) -> None:
        if difficult not in _DIFFICULT:
            raise ValueError(f"voc2007 option difficult must be one of {', '.join(_DIFFICULT)}, got {difficult!r}")
        root_dir = require_root(root, "voc2007", _LAYOUT)
        # Users point at either VOCdevkit or VOCdevkit/VOC2007; both are unambiguous.
        base = root_dir if (root_dir / "Annotations").is_dir() else root_dir / "VOC2007"
        fix = "Pass as root the VOCdevkit folder of the official VOC2007 trainval and test archives."
        require_dir(base, "VOC2007", fix)
        ann_dir = require_dir(base / "Annotations", "VOC annotation", fix)
        img_dir = require_dir(base / "JPEGImages", "VOC image", fix)
        id_file = require_file(base / "ImageSets" / "Main" / f"{split}.txt", "VOC image list", fix)
        ids = []
        for line_no, line in enumerate(id_file.read_text(encoding="utf-8").splitlines(), start=1):
            if len(line.split()) > 1:
                raise DataFormatError(
                    f"{id_file}:{line_no}: expected one image id per line, got {line.strip()!r}. "
                    "Use the plain split list (e.g. trainval.txt), not a per-class list."
                )
            if line.strip():
                ids.append(line.strip())
        targets = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.uint8)
        column = {name: k for k, name in enumerate(VOC_CLASSES)}
        for r, image_id in enumerate(ids):
            xml_path = require_file(ann_dir / f"{image_id}.xml", f"VOC annotation (listed in {id_file})", fix)
            for name in read_voc_labels(xml_path, difficult):
                targets[r, column[name]] = 1
        super().__init__([img_dir / f"{i}.jpg" for i in ids], targets, VOC_CLASSES, transform, skip_unreadable)

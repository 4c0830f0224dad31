"""voc2007 reader on a small fixture in the official VOCdevkit layout (JPEG files, XML annotations)."""
from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from mlkd.data import DataFormatError, create_dataset

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]


def xml(*objects):
    """A VOC annotation with objects given as (name, difficult)."""
    body = "".join(
        f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        for name, d in objects
    )
    return f"<annotation>\n<folder>VOC2007</folder>\n<size><width>12</width><height>10</height></size>\n{body}\n</annotation>\n"


ANNOTATIONS = {
    "000001": xml(("dog", 0), ("person", 1), ("dog", 0)),
    "000002": xml(("car", 1)),
    "000003": xml(("cat", 0), ("tvmonitor", 0)),
}
SPLITS = {"trainval": ["000003", "000001"], "test": ["000002"]}


def write_voc(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    for image_id, text in ANNOTATIONS.items():
        (base / "Annotations" / f"{image_id}.xml").write_text(text)
        Image.new("RGB", (12, 10), (0, 90, 180)).save(base / "JPEGImages" / f"{image_id}.jpg")
    for split, ids in SPLITS.items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return tmp_path / "VOCdevkit"


def onehot(*names):
    return [float(c in names) for c in VOC_CLASSES]


def test_classes_targets_order_difficult_positive(tmp_path):
    root = write_voc(tmp_path)
    ds = create_dataset("voc2007", root, "trainval")
    assert ds.classes == VOC_CLASSES
    assert [p.name for p in ds.images] == ["000003.jpg", "000001.jpg"]
    assert ds.targets.tolist() == [onehot("cat", "tvmonitor"), onehot("dog", "person")]
    image, target = ds[1]
    assert image.shape == (3, 10, 12)
    assert target.tolist() == onehot("dog", "person")
    assert create_dataset("voc2007", root, "test").targets.tolist() == [onehot("car")]


def test_difficult_ignore(tmp_path):
    root = write_voc(tmp_path)
    ds = create_dataset("voc2007", root, "trainval", difficult="ignore")
    assert ds.targets.tolist() == [onehot("cat", "tvmonitor"), onehot("dog")]
    # An image whose only object is difficult has no label at all.
    assert create_dataset("voc2007", root, "test", difficult="ignore").targets.tolist() == [onehot()]


def test_root_may_be_the_voc2007_folder(tmp_path):
    root = write_voc(tmp_path)
    ds = create_dataset("voc2007", root / "VOC2007", "test")
    assert ds.targets.tolist() == [onehot("car")]


def test_bad_difficult_option(tmp_path):
    with pytest.raises(ValueError, match=re.escape("voc2007 option difficult must be one of positive, ignore, got 'drop'")):
        create_dataset("voc2007", write_voc(tmp_path), "test", difficult="drop")


def test_missing_folders_and_lists(tmp_path):
    root = write_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"Main[/\\]val\.txt: VOC image list file not found\. Pass as root the VOCdevkit"):
        create_dataset("voc2007", root, "val")
    (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("000002\n000009\n")
    with pytest.raises(FileNotFoundError, match=r"000009\.xml: VOC annotation \(listed in .*test\.txt\) file not found"):
        create_dataset("voc2007", root, "test")
    (root / "VOC2007" / "JPEGImages").rename(root / "VOC2007" / "images")
    with pytest.raises(FileNotFoundError, match=r"JPEGImages: VOC image folder not found"):
        create_dataset("voc2007", root, "test")
    with pytest.raises(FileNotFoundError, match=r"VOC2007: VOC2007 folder not found"):
        create_dataset("voc2007", tmp_path, "test")


def test_per_class_list_is_rejected_with_line(tmp_path):
    root = write_voc(tmp_path)
    path = root / "VOC2007" / "ImageSets" / "Main" / "test.txt"
    path.write_text("000002\n000003  1\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: expected one image id per line, got '000003  1'")):
        create_dataset("voc2007", root, "test")


@pytest.mark.parametrize(
    "text, message",
    [
        ("<annotation>\n<object><name>dog</name>\n</annotation>", ":3: malformed XML at column"),
        (xml(("dog", 0), ("zebra", 0)), ": <object> number 2 has the name 'zebra', not one of the 20 VOC classes"),
        ("<annotation><object><difficult>0</difficult></object></annotation>", ": <object> number 1 has no <name>"),
    ],
)
def test_malformed_xml(tmp_path, text, message):
    root = write_voc(tmp_path)
    path = root / "VOC2007" / "Annotations" / "000002.xml"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=re.escape(f"{path}{message}")):
        create_dataset("voc2007", root, "test")


def test_missing_image(tmp_path):
    root = write_voc(tmp_path)
    (root / "VOC2007" / "JPEGImages" / "000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 images are missing: .*000001\.jpg"):
        create_dataset("voc2007", root, "trainval")
    ds = create_dataset("voc2007", root, "trainval", skip_unreadable=True)
    assert ds.targets.tolist() == [onehot("cat", "tvmonitor")]
    assert ds.skipped[0][0].name == "000001.jpg" and ds.skipped[0][1] == "file not found"
    assert torch.equal(ds[0][1], ds.targets[0])

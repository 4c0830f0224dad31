"""coco2014 reader on a small fixture in the official layout (JPEG files, instances JSON)."""
from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from PIL import Image

from mlkd.data import DataFormatError, create_dataset

CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
IMAGES = [
    {"id": 42, "file_name": "COCO_train2014_000000000042.jpg"},
    {"id": 7, "file_name": "COCO_train2014_000000000007.jpg"},
    {"id": 9, "file_name": "COCO_train2014_000000000009.jpg"},  # no annotation
]
ANNOTATIONS = [
    {"image_id": 42, "category_id": 18, "iscrowd": 0},
    {"image_id": 42, "category_id": 1, "iscrowd": 1},
    {"image_id": 42, "category_id": 1, "iscrowd": 0},
    {"image_id": 7, "category_id": 3, "iscrowd": 0},
]


def write_coco(root, split="train", images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES, colour=(200, 40, 10)):
    (root / f"{split}2014").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for img in images:
        Image.new("RGB", (20, 16), colour).save(root / f"{split}2014" / img["file_name"], quality=95)
    ann = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(ann, indent=1))
    return root / "annotations" / f"instances_{split}2014.json"


def test_classes_targets_and_order(tmp_path):
    write_coco(tmp_path)
    ds = create_dataset("coco2014", tmp_path, "train")
    # Classes ordered by category id (1, 3, 18); images by image id; image 9 has no label and is dropped.
    assert ds.classes == ["person", "car", "dog"]
    assert [p.name for p in ds.images] == ["COCO_train2014_000000000007.jpg", "COCO_train2014_000000000042.jpg"]
    assert torch.equal(ds.targets, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))
    assert ds.targets.dtype == torch.float32
    image, target = ds[1]
    assert image.shape == (3, 16, 20) and image.dtype == torch.float32
    # A solid-colour JPEG decodes to (nearly) its colour.
    assert torch.allclose(image[:, 5, 5], torch.tensor([200, 40, 10]) / 255, atol=3 / 255)
    assert torch.equal(target, torch.tensor([1.0, 0.0, 1.0]))


def test_keep_unlabeled(tmp_path):
    write_coco(tmp_path)
    ds = create_dataset("coco2014", tmp_path, "train", drop_unlabeled=False)
    assert len(ds) == 3
    assert torch.equal(ds.targets, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]))


def test_val_split_and_transform(tmp_path):
    images = [{"id": 5, "file_name": "COCO_val2014_000000000005.jpg"}]
    write_coco(tmp_path, "val", images, [{"image_id": 5, "category_id": 18}])
    ds = create_dataset("coco2014", tmp_path, "val", transform=lambda img: torch.tensor(img.size))
    assert ds.images[0].parent.name == "val2014"
    image, target = ds[0]
    assert image.tolist() == [20, 16]
    assert target.tolist() == [0.0, 0.0, 1.0]


def test_grayscale_jpeg_becomes_three_channels(tmp_path):
    write_coco(tmp_path)
    Image.new("L", (20, 16), 77).save(tmp_path / "train2014" / IMAGES[1]["file_name"])
    image, _ = create_dataset("coco2014", tmp_path, "train")[0]
    assert image.shape == (3, 16, 20)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


@pytest.mark.parametrize(
    "root, error, message",
    [
        (None, ValueError, "data set 'coco2014' needs root (--data-root)"),
        ("missing", FileNotFoundError, "coco2014 root folder not found"),
    ],
)
def test_root_errors(tmp_path, root, error, message):
    with pytest.raises(error, match=re.escape(message)):
        create_dataset("coco2014", None if root is None else tmp_path / root, "train")


def test_missing_annotation_and_image_folder(tmp_path):
    write_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"instances_val2014\.json: COCO annotation file not found"):
        create_dataset("coco2014", tmp_path, "val")
    (tmp_path / "annotations" / "instances_val2014.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"val2014: COCO image folder not found\. Unpack val2014\.zip"):
        create_dataset("coco2014", tmp_path, "val")


def test_invalid_json_names_file_and_line(tmp_path):
    path = write_coco(tmp_path)
    path.write_text('{"images": [\n  {"id": 1,\n  "file_name": }\n]}')
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:3: invalid JSON at column")):
        create_dataset("coco2014", tmp_path, "train")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("images"), "the top level has no 'images' key"),
        (lambda d: d.update(categories={"id": 1}), "'categories' must be list, got {'id': 1}"),
        (lambda d: d["images"][1].pop("file_name"), "images[1] has no 'file_name' key"),
        (lambda d: d["images"][0].update(id="42"), "images[0]['id'] must be int, got '42'"),
        (lambda d: d["categories"].append({"id": 1, "name": "x"}), "categories[3] repeats the category id 1"),
        (lambda d: d["images"].append({"id": 7, "file_name": "x.jpg"}), "images[3] repeats the image id 7"),
        (lambda d: d["annotations"][2].update(image_id=1000), "annotations[2] refers to image id 1000, which is not in 'images'"),
        (lambda d: d["annotations"][3].update(category_id=2), "annotations[3] refers to category id 2, which is not in 'categories'"),
        (lambda d: d["annotations"][0].pop("category_id"), "annotations[0] has no 'category_id' key"),
    ],
)
def test_malformed_annotations(tmp_path, edit, message):
    path = write_coco(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: {message}")):
        create_dataset("coco2014", tmp_path, "train")


def test_missing_image_raises_naming_it(tmp_path):
    write_coco(tmp_path)
    missing = tmp_path / "train2014" / IMAGES[0]["file_name"]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"1 of 2 images are missing: {missing}.")) as info:
        create_dataset("coco2014", tmp_path, "train")
    assert "skip_unreadable=True" in str(info.value)


def test_broken_image_raises_on_access_or_is_skipped(tmp_path, caplog):
    write_coco(tmp_path)
    broken = tmp_path / "train2014" / IMAGES[1]["file_name"]
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = create_dataset("coco2014", tmp_path, "train")  # existence only is checked up front
    with pytest.raises(DataFormatError, match=re.escape(f"{broken}: cannot decode image")):
        ds[0]
    with caplog.at_level(logging.WARNING, logger="mlkd.data.base"):
        ds = create_dataset("coco2014", tmp_path, "train", skip_unreadable=True)
    assert [p.name for p in ds.images] == [IMAGES[0]["file_name"]]
    assert torch.equal(ds.targets, torch.tensor([[1.0, 0.0, 1.0]]))
    assert [p for p, _ in ds.skipped] == [broken]
    assert f"skipped 1 of 2 unreadable images: {broken} (" in caplog.text

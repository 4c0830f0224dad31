"""The data set registry: names, splits and options, and their errors."""
from __future__ import annotations

import re

import pytest

from mlkd.data import create_dataset, dataset_options, dataset_splits, list_datasets, register_dataset


def test_names_splits_and_options():
    assert list_datasets() == ["coco2014", "csv", "fashion_mosaic", "fashion_scenes", "nuswide", "voc2007"]
    assert dataset_splits("coco2014") == ("train", "val")
    assert dataset_splits("voc2007") == ("trainval", "test", "train", "val")
    assert dataset_splits("nuswide") == ("train", "test")
    assert dataset_splits("csv") == ("train", "val", "test")
    assert dataset_splits("fashion_mosaic") == ("train", "test")
    assert dataset_options("coco2014") == {"drop_unlabeled": True, "skip_unreadable": False}
    assert dataset_options("voc2007") == {"difficult": "positive", "skip_unreadable": False}
    assert dataset_options("nuswide") == {"drop_unlabeled": False, "skip_unreadable": False}
    assert dataset_options("csv") == {"skip_unreadable": False, "encoding": "utf-8", "allow_outside_root": False}
    assert dataset_options("fashion_mosaic") == {"num_mosaics": None, "seed": 0, "min_items": 4, "colors": 0,
                                                 "download": True}


def test_unknown_name():
    with pytest.raises(ValueError, match=re.escape(
        "unknown data set 'coco'. Did you mean coco2014? Valid names: coco2014, csv, fashion_mosaic, fashion_scenes, nuswide, voc2007"
    )):
        create_dataset("coco", "/nowhere", "train")
    with pytest.raises(ValueError, match=re.escape("unknown data set 'imagenet'. Valid names: coco2014")):
        dataset_splits("imagenet")


def test_unknown_split_is_rejected_before_reading(tmp_path):
    with pytest.raises(ValueError, match=re.escape("data set 'voc2007' has no split 'val2007'. Valid splits: trainval, test, train, val")):
        create_dataset("voc2007", tmp_path / "absent", "val2007")


def test_unknown_option_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=re.escape(
        "data set 'nuswide' has no option 'drop_empty', 'x'. Valid options: drop_unlabeled=False, skip_unreadable=False"
    )):
        create_dataset("nuswide", tmp_path, "train", x=1, drop_empty=True)


def test_register_twice():
    with pytest.raises(ValueError, match="data set 'csv' is registered twice"):
        register_dataset("csv", splits=("train",))(object)

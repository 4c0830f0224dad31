"""Which images a csv run validates on (issue 21, H4), and warnings about repeated images and look-alike
class names (issue 21, L8).

A csv data root's ``val.csv`` is the validation split when it exists; without it validation is carved
from ``train.csv`` as before; ``--val-split NAME`` chooses another split. The runs are tiny: 16 px
images, tiny_cnn, one epoch.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml
from PIL import Image

import mlkd
from mlkd.cli import main
from mlkd.config import RunConfig
from mlkd.data import create_dataset
from mlkd.data.registry import own_val_split
from mlkd.engine.preflight import resolve_val_split

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def csv_lines(root, indices, seed=0):
    """16x16 PNGs ``img/<i>.png`` showing their labels' colours as stripes; returns their CSV lines."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in indices:
        labels = [c for c in COLOURS if rng.random() < 0.5] or [list(COLOURS)[i % 3]]
        pixels = np.zeros((16, 16, 3), dtype=np.uint8)
        for k, c in enumerate(labels):
            pixels[5 * k:5 * k + 5] = COLOURS[c]
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{'|'.join(labels)}")
    return lines


def write_split(root, split, lines):
    (root / f"{split}.csv").write_text("image,labels\n" + "".join(line + "\n" for line in lines))


def csv_root(root, n_train=30, n_test=10, n_val=None):
    """A csv root with ``train.csv`` and ``test.csv`` (and ``val.csv`` when ``n_val`` is given)."""
    root.mkdir(parents=True, exist_ok=True)
    write_split(root, "train", csv_lines(root, range(n_train)))
    write_split(root, "test", csv_lines(root, range(100, 100 + n_test), seed=1))
    if n_val is not None:
        write_split(root, "val", csv_lines(root, range(200, 200 + n_val), seed=2))
    return root


def run_args(root, output, *extra):
    # Not --quiet: the run summary says which images validate the run.
    return ["--dataset", "csv", "--data-root", str(root), "--img-size", "16", "--batch-size", "8", "--epochs", "1",
            "--lr", "1e-2", "--model", "tiny_cnn", "--model-option", "embed_dim=8", "--model-option", "num_heads=2",
            "--model-option", "ffn_dim=8", "--no-augment", "--device", "cpu", "--threads", "1",
            "--output", str(output), *extra]


def saved_val_split(output):
    return yaml.safe_load((output / "config.yaml").read_text())["val_split"]


# ---- H4: val.csv is the validation split -------------------------------------------------------------

def test_a_run_validates_on_val_csv_and_resumes_with_it(tmp_path, caplog):
    root = csv_root(tmp_path / "data", n_val=7)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="mlkd"):
        assert main(["train", *run_args(root, out)]) == 0
    # All 30 training images train; the 7 of val.csv validate.
    assert "30 train / 7 val ('val' split)" in caplog.text
    assert saved_val_split(out) == "val"
    best = json.loads((out / "metrics.json").read_text())["best_val_mAP"]
    again = mlkd.evaluate(out / "best.pt", split="val", device="cpu")
    assert again["num_samples"] == 7 and again["mAP"] == pytest.approx(best, abs=1e-6)
    # The same flags (no val_split among them) resume the run: the recorded split compares equal.
    assert main(["train", *run_args(root, out), "--resume"]) == 0
    assert main(["train", "--output", str(out), "--resume"]) == 0


def test_without_val_csv_validation_is_carved_as_before(tmp_path, caplog):
    root = csv_root(tmp_path / "data")
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="mlkd"):
        assert main(["train", *run_args(root, out)]) == 0
    assert "27 train / 3 val (10% carved from 'train')" in caplog.text
    assert saved_val_split(out) is None


def test_header_only_val_csv_is_refused_before_training(tmp_path, capsys):
    root = csv_root(tmp_path / "data")
    (root / "val.csv").write_text("image,labels\n")
    out = tmp_path / "run"
    assert main(["train", *run_args(root, out)]) == 2
    err = capsys.readouterr().err
    assert str(root / "val.csv") in err and "the val split lists no image" in err and "delete the file" in err
    assert not out.exists()


def test_val_split_flag_chooses_the_split(tmp_path, caplog, capsys):
    root = csv_root(tmp_path / "data", n_val=7)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="mlkd"):
        assert main(["train", *run_args(root, out), "--val-split", "test"]) == 0
    assert "30 train / 10 val ('test' split)" in caplog.text
    assert saved_val_split(out) == "test"
    assert main(["train", *run_args(root, tmp_path / "bad"), "--val-split", "valid"]) == 2
    assert "data set 'csv' has no split 'valid'. Valid splits: train, val, test" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_only_csv_offers_its_own_validation_split(tmp_path):
    root = csv_root(tmp_path / "data", n_train=4, n_test=2)
    assert own_val_split("csv", root) is None
    write_split(root, "val", csv_lines(root, [300]))
    assert own_val_split("csv", root) == "val"
    cfg = RunConfig(dataset="csv", data_root=str(root))
    assert resolve_val_split(cfg).val_split == "val"
    assert resolve_val_split(RunConfig(dataset="csv", data_root=str(root), val_split="test")).val_split == "test"
    # The embedded default (the demo's data) keeps carving: its runs and numbers are unchanged.
    demo = RunConfig()
    assert resolve_val_split(demo) is demo and demo.val_split is None


# ---- L8: repeated images and class names equal up to case ------------------------------------------

def test_repeated_images_in_a_split_file_warn_once(tmp_path, caplog):
    root = csv_root(tmp_path / "data", n_train=6, n_test=2)
    lines = (root / "train.csv").read_text().splitlines()
    (root / "train.csv").write_text("\n".join([*lines, lines[1], lines[1], "./" + lines[3]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="mlkd"):
        train = create_dataset("csv", root, "train")
        create_dataset("csv", root, "test")
    assert len(train) == 9  # still read as written
    warnings = [r.getMessage() for r in caplog.records if "more than once" in r.getMessage()]
    assert len(warnings) == 1
    assert (f"{root / 'train.csv'} lists 2 image(s) more than once (3 extra lines; e.g. img/0.png at lines "
            "2, 8, 9; img/2.png at lines 4, 10)") in warnings[0]
    assert "validation carved from train.csv" in warnings[0] and "Remove the repeated lines" in warnings[0]


def test_images_shared_between_split_files_warn(tmp_path, caplog):
    root = csv_root(tmp_path / "data", n_train=6, n_test=2, n_val=2)
    train = (root / "train.csv").read_text().splitlines()
    test = (root / "test.csv").read_text().splitlines()
    val = (root / "val.csv").read_text().splitlines()
    (root / "test.csv").write_text("\n".join([*test, train[2]]) + "\n")
    (root / "val.csv").write_text("\n".join([*val, train[1], test[1]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="mlkd"):
        create_dataset("csv", root, "val")
    text = caplog.text
    assert (f"1 image(s) are listed in both train.csv and test.csv in {root} (e.g. img/1.png (train.csv:3, "
            "test.csv:4)): the test metrics then score images the model was trained or selected on") in text
    assert "1 image(s) are listed in both train.csv and val.csv in" in text
    assert "img/0.png (train.csv:2, val.csv:4)" in text
    assert "1 image(s) are listed in both val.csv and test.csv in" in text
    assert "img/100.png (val.csv:5, test.csv:2)" in text


def test_class_names_equal_up_to_case_warn(tmp_path, caplog):
    root = csv_root(tmp_path / "data", n_train=4, n_test=2)
    (root / "train.csv").write_text("image,labels\nimg/0.png,Cat|red\nimg/1.png,cat\nimg/2.png,CAT|Red\n")
    with caplog.at_level(logging.WARNING, logger="mlkd"):
        ds = create_dataset("csv", root, "train")
    assert {"CAT", "Cat", "cat", "Red", "red"} <= set(ds.classes)  # still separate classes, as written
    assert (f"{root}: 2 group(s) of class names differ only in case (e.g. 'CAT' and 'Cat' and 'cat'; 'Red' and "
            "'red'); each name is a class of its own") in caplog.text


def test_a_clean_csv_root_gives_no_warning(tmp_path, caplog):
    root = csv_root(tmp_path / "data", n_train=6, n_test=2, n_val=2)
    with caplog.at_level(logging.WARNING):
        for split in ("train", "val", "test"):
            create_dataset("csv", root, split)
    assert caplog.records == []

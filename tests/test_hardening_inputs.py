"""Bad data, configs and flags are refused before any work starts, with a message that names the fix.

Issue 10 (odd images, config types, nonsense values, distiller options, data checks before epoch 1,
encodings, paths outside the root) and issue 12 (small data, the CSV format's docs, separators, the
CLI form of skip_unreadable, eval of a carved validation split). Each test fails on the code before
these fixes. The runs are tiny: 16 px images, tiny_cnn, one or two epochs.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image

import mlkd
from mlkd.cli import main
from mlkd.config import RunConfig, load_yaml, make_config
from mlkd.data import DataFormatError, create_dataset

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def write_images(root, n, start=0, seed=0):
    """``n`` 16x16 PNGs; image i shows the colours of its labels as stripes. Returns CSV lines."""
    rng = np.random.default_rng(seed + start)
    lines = []
    names = list(COLOURS)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        labels = [c for c in names if rng.random() < 0.5] or [names[i % 3]]
        pixels = np.zeros((16, 16, 3), dtype=np.uint8)
        for k, c in enumerate(labels):
            pixels[5 * k:5 * k + 5] = COLOURS[c]
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{'|'.join(labels)}")
    return lines


def write_set(root, n_train=40, n_test=12, val=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("image,labels\n" + "\n".join(write_images(root, n_train)) + "\n")
    (root / "test.csv").write_text("image,labels\n" + "\n".join(write_images(root, n_test, start=n_train)) + "\n")
    if val is not None:
        (root / "val.csv").write_text(val)
    return root


def run_args(root, output, *extra, epochs=1, batch=8):
    return ["--dataset", "csv", "--data-root", str(root), "--img-size", "16", "--batch-size", str(batch),
            "--epochs", str(epochs), "--lr", "1e-2", "--model", "tiny_cnn", "--model-option", "embed_dim=8",
            "--model-option", "num_heads=2", "--model-option", "ffn_dim=8", "--no-augment", "--device", "cpu",
            "--quiet", "--output", str(output), *extra]


@pytest.fixture(scope="module")
def csv_root(tmp_path_factory):
    return write_set(tmp_path_factory.mktemp("csvset"))


@pytest.fixture(scope="module")
def trained(csv_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "small"
    assert main(["train", *run_args(csv_root, out)]) == 0
    return out


def error_of(capsys, argv):
    """Run the CLI; assert it exits 2 with an error (no traceback) and return the error text."""
    assert main(argv) == 2
    return capsys.readouterr().err


# ---- issue 10 item 6: deep images -------------------------------------------------------------------

def one_image_set(root, name, save):
    (root / "img").mkdir(parents=True, exist_ok=True)
    save(root / "img" / name)
    (root / "train.csv").write_text(f"image,labels\nimg/{name},a\n")
    (root / "test.csv").write_text(f"image,labels\nimg/{name},a\n")
    return create_dataset("csv", root, "train")


def test_16_bit_png_keeps_its_range(tmp_path):
    values = np.linspace(0, 65535, 8 * 8).round().astype(np.uint16).reshape(8, 8)
    ds = one_image_set(tmp_path, "deep.png", lambda p: Image.fromarray(values).save(p))
    assert Image.open(tmp_path / "img" / "deep.png").mode.startswith("I;16")
    image, _ = ds[0]
    expected = torch.from_numpy(values / 65535.0).float()
    for channel in image:
        assert torch.allclose(channel, expected, atol=0.5 / 255 + 1e-6)


def test_float_tiff_in_unit_range_is_read_and_others_refused(tmp_path):
    values = np.linspace(0, 1, 8 * 8, dtype=np.float32).reshape(8, 8)
    ds = one_image_set(tmp_path / "ok", "f.tif", lambda p: Image.fromarray(values).save(p))
    assert Image.open(tmp_path / "ok" / "img" / "f.tif").mode == "F"
    image, _ = ds[0]
    assert torch.allclose(image[1], torch.from_numpy(values), atol=0.5 / 255 + 1e-6)

    wide = one_image_set(tmp_path / "wide", "f.tif", lambda p: Image.fromarray(values * 40 - 3).save(p))
    with pytest.raises(DataFormatError, match=r"float image with values in \[-3, 37\].*\[0, 1\]"):
        wide[0]
    ints = one_image_set(tmp_path / "int", "i.tif",
                         lambda p: Image.fromarray(np.full((4, 4), 70000, np.int32)).save(p))
    with pytest.raises(DataFormatError, match="32-bit integer image"):
        ints[0]


# ---- issue 10 item 7: config types and nonsense values ----------------------------------------------

def test_yaml_numbers_written_as_strings_are_coerced(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5e-4\nepochs: '3'\naugment: 'false'\nlambdas: {cd: 5e1}\n")
    cfg = make_config(path)
    assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.augment, cfg.lambdas) == (0.001, 0.0005, 3, False, {"cd": 50.0})
    assert isinstance(cfg.lr, float) and isinstance(cfg.epochs, int)


@pytest.mark.parametrize("line, field, wanted", [
    ("lr: fast", "lr", "a number"),
    ("epochs: 2.5", "epochs", "an integer"),
    ("augment: maybe", "augment", "true or false"),
    ("lambdas: [1, 2]", "lambdas", "a mapping"),
    ("model: [resnet]", "model", "a string"),
    ("weight_decay: .inf", "weight_decay", "a finite number"),
])
def test_config_junk_names_field_and_file(tmp_path, line, field, wanted):
    path = tmp_path / "bad.yaml"
    path.write_text(line + "\n")
    with pytest.raises(ValueError) as info:
        load_yaml(path)
    assert str(path) in str(info.value) and f"{field} must be {wanted}" in str(info.value)


def test_nonsense_values_are_refused(trained, csv_root, tmp_path, capsys):
    err = error_of(capsys, ["train", *run_args(csv_root, tmp_path / "a"), "--lr", "inf"])
    assert "lr must be a finite number" in err
    err = error_of(capsys, ["train", *run_args(csv_root, tmp_path / "b"), "--lr", "nan"])
    assert "lr must be a finite number" in err
    err = error_of(capsys, ["distill", "--method", "cd", "--teacher", str(trained / "best.pt"),
                            *run_args(csv_root, tmp_path / "c"), "--lambda", "cd=-100"])
    assert "lambdas['cd']" in err and ">= 0" in err
    for command in ("eval", "export"):
        err = error_of(capsys, [command, "--checkpoint", str(trained / "best.pt"), "--img-size", "0"])
        assert "img_size (--img-size) must be an integer >= 8, got 0" in err
    err = error_of(capsys, ["bench", "--teacher", str(trained / "best.pt"), "--methods", ",",
                            *run_args(csv_root, tmp_path / "d")])
    assert "--methods names no distiller" in err
    assert not any((tmp_path / n).exists() for n in "abcd")


# ---- issue 10 (low): distiller options checked before anything is written ----------------------------

@pytest.mark.parametrize("method, extra, expected", [
    ("l2d", ["--lambda", "foo=3"], "method 'l2d' has no weight 'foo'; its weights are mld, led"),
    ("vanilla", ["--lambda", "cd=3"], "method 'vanilla' has no weight 'cd'; its weights are none"),
    ("kd", ["--method-option", "temprature=4"], "method 'kd' has no option 'temprature'; its options are"),
])
def test_unknown_weights_and_options_refused_before_the_output_exists(trained, csv_root, tmp_path, capsys,
                                                                      method, extra, expected):
    out = tmp_path / "run"
    err = error_of(capsys, ["distill", "--method", method, "--teacher", str(trained / "best.pt"),
                            *run_args(csv_root, out), *extra])
    assert expected in err
    assert not out.exists()


# ---- issue 10 (low): data problems surface before epoch 1 --------------------------------------------

def test_header_only_test_csv(tmp_path, capsys):
    root = write_set(tmp_path / "data")
    (root / "test.csv").write_text("image,labels\n")
    err = error_of(capsys, ["train", *run_args(root, tmp_path / "out")])
    assert "test.csv" in err and "the test split lists no image" in err
    assert not (tmp_path / "out").exists()


def test_validation_split_without_positives(tmp_path, capsys):
    root = write_set(tmp_path / "data")
    write_images(root, 4, start=100)
    (root / "val.csv").write_text("image,labels\n" + "".join(f"img/{i}.png,\n" for i in range(100, 104)))
    err = error_of(capsys, ["train", *run_args(root, tmp_path / "out"), "--config", str(_val_yaml(tmp_path))])
    assert "validation split 'val'" in err and "no positive label" in err and "blue, green, red" in err
    assert not (tmp_path / "out").exists()


def _val_yaml(tmp_path):
    path = tmp_path / "val.yaml"
    path.write_text("val_split: val\n")
    return path


def test_broken_test_image_found_before_training(tmp_path, capsys):
    root = write_set(tmp_path / "data")
    (root / "img" / "45.png").write_bytes((root / "img" / "45.png").read_bytes()[:40])  # cut short
    err = error_of(capsys, ["train", *run_args(root, tmp_path / "out")])
    assert "test split 'test'" in err and "45.png (listed at test.csv:7)" in err
    assert "--dataset-option skip_unreadable=true" in err
    assert not (tmp_path / "out").exists()
    # The suggested fix then works.
    assert main(["train", *run_args(root, tmp_path / "out"), "--dataset-option", "skip_unreadable=true"]) == 0


def test_resume_accepts_skip_unreadable(tmp_path, capsys):
    root = write_set(tmp_path / "data", n_train=20, n_test=6)
    out = tmp_path / "out"
    assert main(["train", *run_args(root, out)]) == 0
    assert main(["train", *run_args(root, out), "--resume", "--dataset-option", "skip_unreadable=true"]) == 0
    err = error_of(capsys, ["train", *run_args(root, out), "--resume", "--seed", "5"])
    assert "seed" in err  # other settings are still compared


def test_latin1_csv_names_file_and_encoding(tmp_path, capsys):
    root = write_set(tmp_path / "data", n_train=12, n_test=4)
    lines = (root / "train.csv").read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",red|café"
    (root / "train.csv").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataFormatError) as info:
        create_dataset("csv", root, "train")
    message = str(info.value)
    assert str(root / "train.csv") in message and "not valid utf-8" in message and "encoding=latin-1" in message
    ds = create_dataset("csv", root, "train", encoding="latin-1")
    assert "café" in ds.classes


@pytest.mark.parametrize("path", ["../outside.png", "img/../../outside.png", "/tmp/outside.png"])
def test_paths_outside_the_root_need_an_option(tmp_path, path):
    root = write_set(tmp_path / "data", n_train=4, n_test=2)
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    target = tmp_path / "outside.png" if path.startswith("/") else path
    (root / "train.csv").write_text(f"image,labels\nimg/0.png,red\n{target},blue\n")
    with pytest.raises(DataFormatError, match=r"train\.csv:3: the image path .* leaves the data root.*"
                                              r"allow_outside_root=true"):
        create_dataset("csv", root, "train")
    ds = create_dataset("csv", root, "train", allow_outside_root=True)
    assert len(ds) == 2 and ds[1][0].shape == (3, 4, 4)


# ---- issue 12 ---------------------------------------------------------------------------------------

def test_small_data_trains(tmp_path):
    """100 images, the default batch of 64, 5 epochs: OneCycleLR used to divide by zero."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "train.csv").write_text("image,labels\n" + "\n".join(write_images(root, 100)) + "\n")
    (root / "test.csv").write_text("image,labels\n" + "\n".join(write_images(root, 8, start=100)) + "\n")
    args = run_args(root, tmp_path / "out", epochs=5, batch=64)
    assert main(["train", *args]) == 0
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    # 90 training images: a full batch of 64 plus the kept batch of 26 each epoch.
    assert len(log) == 5 and all(r["epoch_seconds"] > 0 for r in log)


def test_schedule_with_exactly_one_warmup_step_trains(tmp_path):
    """Issue 21: 5 epochs of one batch at warm-up 0.2 (a one-step warm-up, which torch's OneCycleLR cannot
    build) used to be refused; it trains."""
    from mlkd.engine.preflight import check_schedule

    cfg = RunConfig(batch_size=128, epochs=5, warmup=0.2, lr=1e-3)
    assert check_schedule(cfg, 90) == 5
    with pytest.raises(ValueError, match="too few for a batch"):
        check_schedule(cfg, 1)
    root = write_set(tmp_path / "data", n_train=100, n_test=8)
    assert main(["train", *run_args(root, tmp_path / "out", epochs=5, batch=128)]) == 0
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_csv_format_is_shown_in_list_and_help(capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    helped = capsys.readouterr().out
    for text in (listed, " ".join(helped.split())):
        for part in ("train.csv", "image,labels", "separated by '|'", "classes.txt", "val.csv",
                     "skip_unreadable=true", "docs/data.md"):
            assert part in text, part


def test_wrong_label_separator_warns(tmp_path, caplog):
    root = write_set(tmp_path / "data", n_train=4, n_test=2)
    (root / "train.csv").write_text("image,labels\nimg/0.png,red;blue\nimg/1.png,green\n")
    with caplog.at_level(logging.WARNING):
        ds = create_dataset("csv", root, "train")
    assert "red;blue" in ds.classes  # still one class, as written
    assert "'red;blue' at line 2" in caplog.text and "write 'red|blue'" in caplog.text


def test_unreadable_error_suggests_the_cli_form(tmp_path):
    root = write_set(tmp_path / "data", n_train=4, n_test=2)
    (root / "img" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match="pass --dataset-option skip_unreadable=true"):
        create_dataset("csv", root, "train")[1]


def test_eval_on_the_carved_validation_split(trained, capsys):
    assert main(["eval", "--checkpoint", str(trained / "best.pt"), "--split", "val", "--device", "cpu"]) == 0
    metrics = json.loads((trained / "eval_val.json").read_text())
    recorded = json.loads((trained / "metrics.json").read_text())["best_val_mAP"]
    # The same images as the run's own validation: best.pt scores the mAP that selected it.
    assert math.isclose(metrics["mAP"], recorded, rel_tol=1e-6)


def test_api_evaluate_img_size_zero_refused(trained):
    with pytest.raises(ValueError, match="img_size"):
        mlkd.evaluate(trained / "best.pt", img_size=0, device="cpu")


def test_dataset_switch_must_be_boolean(tmp_path):
    root = write_set(tmp_path / "data", n_train=4, n_test=2)
    with pytest.raises(ValueError, match="option skip_unreadable must be true or false .*got 'maybe'"):
        create_dataset("csv", root, "train", skip_unreadable="maybe")


# ---- issue 21: loss weights, YAML aliases and config-file messages -------------------------------------

@pytest.mark.parametrize("value", ["-1", ".nan", "nan", "-.inf"])
def test_bce_weight_is_checked_like_the_lambdas(trained, csv_root, tmp_path, capsys, value):
    # M2: -1 made the student maximise BCE; nan failed only at the first step, advising a lower --lr.
    out = tmp_path / "run"
    err = error_of(capsys, ["distill", "--method", "kd", "--teacher", str(trained / "best.pt"),
                            *run_args(csv_root, out), "--method-option", f"bce_weight={value}"])
    assert "method 'kd' refuses its options (bce_weight is a loss weight and must be a finite number >= 0" in err
    assert err.count("bce_weight") == 1 and "--lr" not in err
    assert not out.exists()
    # The same through a config file and through the Python API.
    config = tmp_path / "weights.yaml"
    config.write_text(f"method_options: {{bce_weight: {value}}}\n")
    err = error_of(capsys, ["distill", "--method", "l2d", "--teacher", str(trained / "best.pt"),
                            *run_args(csv_root, out), "--config", str(config)])
    assert "bce_weight is a loss weight" in err and not out.exists()
    with pytest.raises(ValueError, match="bce_weight is a loss weight"):
        mlkd.distill(teacher=trained / "best.pt", config=str(config), output=str(out))
    assert not out.exists()


def _alias_bomb(path, width=5, depth=9):
    """A config of ~330 bytes whose ``model_options`` stand for width**depth (2 million) values."""
    lines = ["model_options:", f"  l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, depth)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_yaml_aliases_are_refused_at_once(tmp_path, capsys):
    # L3: nested aliases were expanded when the config was copied (6 s and growing for this one; the
    # probe's 422 bytes took 21 s and 1 GB). They are refused before anything is built.
    bomb = _alias_bomb(tmp_path / "bomb.yaml")
    start = time.monotonic()
    with pytest.raises(ValueError, match=rf"config file {re.escape(str(bomb))} uses the YAML alias \*l0 \(line 3\); "
                                         r"mlkd refuses anchors and aliases .*write the values out instead"):
        make_config(bomb)
    err = error_of(capsys, ["train", "--config", str(bomb), "--output", str(tmp_path / "out")])
    assert time.monotonic() - start < 2
    assert "uses the YAML alias *l0" in err and str(bomb) in err
    assert not (tmp_path / "out").exists()
    # A flag's value is YAML too.
    with pytest.raises(SystemExit):
        main(["train", "--model-option", "x=[&a [1, 1], [*a, *a]]"])
    assert "the value of 'x=[&a [1, 1], [*a, *a]]' uses the YAML alias *a" in capsys.readouterr().err


def test_config_that_is_not_utf8_names_the_file(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model: r\u00e9seau\n".encode("latin-1"))
    err = error_of(capsys, ["train", "--config", str(path), "--output", str(tmp_path / "out")])
    assert f"config file {path} is not UTF-8 text (byte 0xe9 at offset 8); save it as UTF-8" in err
    path.write_bytes("\ufeffepochs: 3\n".encode("utf-8"))  # a byte-order mark is UTF-8 and fine
    assert load_yaml(path) == {"epochs": 3}


def test_config_that_is_a_folder_suggests_its_config_yaml(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    err = error_of(capsys, ["train", "--config", str(run), "--output", str(tmp_path / "out")])
    assert f"config file {run} is a folder, not a YAML file; pass a YAML file" in err and "does not exist" not in err
    (run / "config.yaml").write_text("epochs: 3\n")
    err = error_of(capsys, ["train", "--config", str(run), "--output", str(tmp_path / "out")])
    assert f"config file {run} is a folder, not a YAML file; did you mean {run / 'config.yaml'}?" in err

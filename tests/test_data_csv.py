"""csv reader (users' own data) on fixtures with real PNG/JPEG/PGM/PPM files; also the shared image checks."""
from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mlkd.cli import main
from mlkd.data import DataFormatError, ImageListDataset, create_dataset


def write_csv_set(root, train=None, test=None, val=None, classes=None):
    images = {
        "img/a.png": Image.new("RGB", (6, 4), (255, 0, 0)),
        "img/b.png": Image.new("L", (6, 4), 128),  # grayscale
        "img/c,comma.png": Image.new("RGBA", (6, 4), (0, 255, 0, 10)),
        "img/d.jpg": Image.new("RGB", (6, 4), (0, 0, 255)),
        "img/e.png": Image.new("P", (6, 4), 3),  # palette
    }
    for rel, img in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel)
    files = {
        "train": train if train is not None else 'image,labels\nimg/a.png,dog|cat\nimg/b.png,\n"img/c,comma.png", bird \n',
        "test": test if test is not None else "image,labels\nimg/d.jpg,zebra|dog\n\nimg/e.png,cat\n",
        "val": val,
        "classes": classes,
    }
    for name, text in files.items():
        if text is not None:
            (root / (f"{name}.csv" if name != "classes" else "classes.txt")).write_text(text)
    return root


def test_classes_are_sorted_union_of_all_splits(tmp_path):
    root = write_csv_set(tmp_path)
    train = create_dataset("csv", root, "train")
    assert train.classes == ["bird", "cat", "dog", "zebra"]  # zebra only appears in test.csv
    assert train.targets.tolist() == [[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    assert [p.name for p in train.images] == ["a.png", "b.png", "c,comma.png"]
    test = create_dataset("csv", root, "test")
    assert test.classes == train.classes
    assert test.targets.tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]


def test_images_decoded_as_rgb(tmp_path):
    ds = create_dataset("csv", write_csv_set(tmp_path), "train")
    red, _ = ds[0]
    assert red.shape == (3, 4, 6) and red.dtype == torch.float32
    assert red[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    gray, target = ds[1]
    assert gray.shape == (3, 4, 6)
    assert torch.allclose(gray, torch.full((3, 4, 6), 128 / 255))
    assert target.tolist() == [0, 0, 0, 0]
    rgba, _ = ds[2]
    assert rgba.shape == (3, 4, 6) and rgba[:, 0, 0].tolist() == [0.0, 1.0, 0.0]
    palette, _ = create_dataset("csv", tmp_path, "test")[1]
    assert palette.shape == (3, 4, 6)


def test_classes_txt_fixes_order(tmp_path):
    root = write_csv_set(tmp_path, classes="zebra\n\ndog\ncat\nbird\nunused\n")
    ds = create_dataset("csv", root, "train")
    assert ds.classes == ["zebra", "dog", "cat", "bird", "unused"]
    assert ds.targets.tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 0]]


def test_val_split_and_bom(tmp_path):
    root = write_csv_set(tmp_path, val="\ufeffimage,labels\r\nimg/e.png,horse\r\n")
    ds = create_dataset("csv", root, "val")
    assert ds.classes == ["bird", "cat", "dog", "horse", "zebra"]
    assert ds.targets.tolist() == [[0, 0, 0, 1, 0]]


def test_missing_split_file(tmp_path):
    root = write_csv_set(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"val\.csv: val split file not found\. Write val\.csv with the header 'image,labels'\."):
        create_dataset("csv", root, "val")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", ":1: the header must be 'image,labels', got ''"),
        ("path,tags\nimg/a.png,cat\n", ":1: the header must be 'image,labels', got 'path,tags'"),
        ("image,labels\nimg/a.png,cat\nimg/b.png,cat,dog\n", ":3: expected 2 fields (image,labels), got 3"),
        ("image,labels\nimg/a.png\n", ":2: expected 2 fields (image,labels), got 1"),
        ("image,labels\n ,cat\n", ":2: the image path is empty"),
        ("image,labels\nimg/a.png,cat||dog\n", ":2: empty label name in 'cat||dog'"),
        ("image,labels\nimg/a.png,cat|\n", ":2: empty label name in 'cat|'"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, text, message):
    root = write_csv_set(tmp_path, train=text)
    # The error shows whichever split is built, since every split file is read for the class list.
    with pytest.raises(DataFormatError, match=re.escape(f"{root / 'train.csv'}{message}")):
        create_dataset("csv", root, "test")


def test_no_label_anywhere(tmp_path):
    root = write_csv_set(tmp_path, train="image,labels\nimg/a.png,\n", test="image,labels\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{root / 'train.csv'}, {root / 'test.csv'}: no label is used anywhere")):
        create_dataset("csv", root, "train")


def test_label_outside_classes_txt(tmp_path):
    root = write_csv_set(tmp_path, classes="bird\ncat\ndog\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{root / 'test.csv'}:2: label 'zebra' is not in {root / 'classes.txt'}. Add it there")):
        create_dataset("csv", root, "train")


@pytest.mark.parametrize(
    "text, message",
    [
        ("cat\ndog\ncat\n", ":3: the name 'cat' is listed twice"),
        ("cat|dog\n", ":1: the name 'cat|dog' contains '|', the label separator"),
        ("\n  \n", ": no class names. Write one name per line, or delete the file."),
    ],
)
def test_bad_classes_txt(tmp_path, text, message):
    root = write_csv_set(tmp_path, classes=text)
    with pytest.raises(DataFormatError, match=re.escape(f"{root / 'classes.txt'}{message}")):
        create_dataset("csv", root, "train")


def test_missing_image_names_csv_line(tmp_path):
    root = write_csv_set(tmp_path, train="image,labels\nimg/a.png,cat\nimg/nope.png,dog\nimg/gone.jpg,\n")
    with pytest.raises(FileNotFoundError) as info:
        create_dataset("csv", root, "train")
    assert str(info.value).startswith(
        f"2 of 3 images are missing: {root / 'img/nope.png'} (listed at train.csv:3), "
        f"{root / 'img/gone.jpg'} (listed at train.csv:4). Fix the paths"
    )


def test_unreadable_images_error_or_skip(tmp_path, caplog):
    root = write_csv_set(tmp_path, train="image,labels\nimg/a.png,cat\nimg/bad.png,dog\nimg/cut.jpg,bird\nimg/gone.png,cat\nimg/d.jpg,dog\n")
    (root / "img" / "bad.png").write_bytes(b"this is text, not an image")
    full = (root / "img" / "d.jpg").read_bytes()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(root / "img" / "big.jpg")
    (root / "img" / "cut.jpg").write_bytes((root / "img" / "big.jpg").read_bytes()[:300])  # truncated JPEG
    with caplog.at_level(logging.WARNING, logger="mlkd.data.base"):
        ds = create_dataset("csv", root, "train", skip_unreadable=True)
    assert [p.name for p in ds.images] == ["a.png", "d.jpg"]
    assert ds.classes == ["bird", "cat", "dog", "zebra"]
    assert ds.targets.tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]
    assert [(p.name, why.split(":")[0]) for p, why in ds.skipped] == [
        ("bad.png", "UnidentifiedImageError"), ("cut.jpg", "OSError"), ("gone.png", "file not found")
    ]
    assert "skipped 3 of 5 unreadable images" in caplog.text and "gone.png (file not found)" in caplog.text
    (root / "img" / "gone.png").write_bytes(full)
    ds = create_dataset("csv", root, "train")
    with pytest.raises(DataFormatError, match=re.escape(f"{root / 'img/bad.png'} (listed at train.csv:3): cannot decode image (UnidentifiedImageError")):
        ds[1]
    with pytest.raises(DataFormatError, match=re.escape(f"{root / 'img/cut.jpg'} (listed at train.csv:4): cannot decode image (OSError")) as info:
        ds[2]
    assert "pass --dataset-option skip_unreadable=true" in str(info.value)


def test_image_list_dataset_shape_check(tmp_path):
    with pytest.raises(ValueError, match=re.escape("targets must have shape [len(images), len(classes)] = [1, 2], got [1, 3]")):
        ImageListDataset([tmp_path / "x.png"], np.zeros((1, 3)), ["a", "b"])


def test_skip_unreadable_refuses_to_leave_an_empty_data_set(tmp_path):
    root = write_csv_set(tmp_path, train="image,labels\nimg/bad.png,cat\nimg/gone.png,dog\n")
    (root / "img" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"none of the 2 images could be read, so skip_unreadable would leave an empty"):
        create_dataset("csv", root, "train", skip_unreadable=True)


# ---- issue 21 M6: 16-bit PGM/PPM, M4: encodings that are not text encodings ---------------------------

def _netpbm(magic: bytes, width: int, height: int, maxval: int, values: np.ndarray) -> bytes:
    """A binary PGM (P5) or PPM (P6) written by hand: header, then big-endian 16-bit samples."""
    return magic + b"\n%d %d\n%d\n" % (width, height, maxval) + values.astype(">u2").tobytes()


@pytest.mark.parametrize("maxval", [1000, 65535])
def test_16_bit_pgm_and_ppm_are_scaled_by_their_maxval(tmp_path, maxval):
    grey = np.array([[0, 1, maxval // 4], [maxval // 2, maxval - 1, maxval]])
    colour = np.stack([grey, maxval - grey, np.full_like(grey, maxval // 3)], axis=-1)  # [2, 3, 3] samples
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "grey.pgm").write_bytes(_netpbm(b"P5", 3, 2, maxval, grey))
    (tmp_path / "img" / "colour.ppm").write_bytes(_netpbm(b"P6", 3, 2, maxval, colour))
    (tmp_path / "train.csv").write_text("image,labels\nimg/grey.pgm,a\nimg/colour.ppm,b\n")
    (tmp_path / "test.csv").write_text("image,labels\nimg/grey.pgm,a\n")
    ds = create_dataset("csv", tmp_path, "train")
    grey_image, _ = ds[0]
    colour_image, _ = ds[1]
    # Each sample v of a file with maxval m reads as v / m, at the pipeline's 8-bit precision.
    expected_grey = torch.from_numpy(grey / maxval).float()
    assert grey_image.shape == (3, 2, 3)
    for channel in grey_image:
        assert torch.allclose(channel, expected_grey, atol=0.5 / 255 + 1e-6)
    expected_colour = torch.from_numpy(colour / maxval).float().permute(2, 0, 1)
    assert torch.allclose(colour_image, expected_colour, atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("encoding, kind", [("rot13", "is a codec but not a text encoding"),
                                            ("base64", "is a codec but not a text encoding"),
                                            ("hex", "is a codec but not a text encoding"),
                                            ("klingon-8", "is not a known encoding")])
def test_encoding_must_be_a_text_encoding(tmp_path, capsys, encoding, kind):
    root = write_csv_set(tmp_path)
    with pytest.raises(ValueError) as info:
        create_dataset("csv", root, "train", encoding=encoding)
    assert f"csv option encoding={encoding!r} {kind}" in str(info.value)
    assert "--dataset-option encoding=utf-8 (the default), latin-1 or cp1252" in str(info.value)
    # The command line shows the message, not a traceback, before anything is written.
    out = tmp_path / "run"
    assert main(["train", "--dataset", "csv", "--data-root", str(root), "--dataset-option", f"encoding={encoding}",
                 "--model", "tiny_cnn", "--img-size", "16", "--device", "cpu", "--output", str(out)]) == 2
    assert f"encoding={encoding!r} {kind}" in capsys.readouterr().err
    assert not out.exists()
    assert create_dataset("csv", root, "train", encoding="latin-1").classes == ["bird", "cat", "dog", "zebra"]

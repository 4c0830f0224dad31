"""nuswide reader on a small fixture in the official NUS-WIDE layout (Windows-style image lists, label files)."""
from __future__ import annotations

import re

import pytest
from PIL import Image

from mlkd.data import DataFormatError, create_dataset

# Deliberately not alphabetical: the class order is the order of Concepts81.txt.
CONCEPTS = ["sky", "animal", "beach"]
TRAIN = ["actor\\0001_11.jpg", "beach\\0002_22.jpg", "actor\\0003_33.jpg"]
TEST = ["zoo\\0004_44.jpg"]
LABELS = {  # concept -> (train column, test column)
    "sky": ([1, 0, 0], [1]),
    "animal": ([1, 0, 0], [0]),
    "beach": ([0, 0, 1], [1]),
}


def write_nuswide(root):
    for sub in ("ImageList", "TrainTestLabels", "Flickr"):
        (root / sub).mkdir(parents=True)
    # The official files use CRLF line ends and trailing spaces.
    (root / "Concepts81.txt").write_text("\r\n".join(CONCEPTS) + "\r\n", newline="")
    for tag, names in (("Train", TRAIN), ("Test", TEST)):
        (root / "ImageList" / f"{tag}Imagelist.txt").write_text("\r\n".join(names) + "\r\n", newline="")
        for name in names:
            path = root / "Flickr" / name.replace("\\", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (9, 7), (10, 20, 30)).save(path)
    for concept, (train, test) in LABELS.items():
        for tag, column in (("Train", train), ("Test", test)):
            text = "".join(f"{v} \r\n" for v in column)
            (root / "TrainTestLabels" / f"Labels_{concept}_{tag}.txt").write_text(text, newline="")
    return root


def test_classes_targets_and_paths(tmp_path):
    root = write_nuswide(tmp_path)
    ds = create_dataset("nuswide", root, "train")
    assert ds.classes == CONCEPTS
    assert [p.relative_to(root / "Flickr").as_posix() for p in ds.images] == [
        "actor/0001_11.jpg", "beach/0002_22.jpg", "actor/0003_33.jpg"
    ]
    # Rows: images; columns: sky, animal, beach. Image 2 has no label and is kept by default.
    assert ds.targets.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    image, target = ds[2]
    assert image.shape == (3, 7, 9)
    assert target.tolist() == [0, 0, 1]
    assert create_dataset("nuswide", root, "test").targets.tolist() == [[1, 0, 1]]


def test_drop_unlabeled(tmp_path):
    ds = create_dataset("nuswide", write_nuswide(tmp_path), "train", drop_unlabeled=True)
    assert [p.name for p in ds.images] == ["0001_11.jpg", "0003_33.jpg"]
    assert ds.targets.tolist() == [[1, 1, 0], [0, 0, 1]]


def test_concepts_in_conceptslist_folder(tmp_path):
    root = write_nuswide(tmp_path)
    (root / "ConceptsList").mkdir()
    (root / "Concepts81.txt").rename(root / "ConceptsList" / "Concepts81.txt")
    assert create_dataset("nuswide", root, "test").classes == CONCEPTS


def test_missing_images_skipped(tmp_path):
    root = write_nuswide(tmp_path)
    (root / "Flickr" / "beach" / "0002_22.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 3 images are missing: .*0002_22\.jpg"):
        create_dataset("nuswide", root, "train")
    ds = create_dataset("nuswide", root, "train", skip_unreadable=True)
    assert ds.targets.tolist() == [[1, 1, 0], [0, 0, 1]]


def test_missing_files(tmp_path):
    root = write_nuswide(tmp_path)
    (root / "TrainTestLabels" / "Labels_beach_Test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"Labels_beach_Test\.txt: NUS-WIDE label for concept 'beach' file not found"):
        create_dataset("nuswide", root, "test")
    (root / "Concepts81.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"Concepts81\.txt: NUS-WIDE concept list not found \(nor in ConceptsList/\)"):
        create_dataset("nuswide", root, "train")
    (root / "ImageList" / "TestImagelist.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"TestImagelist\.txt: NUS-WIDE image list file not found"):
        create_dataset("nuswide", root, "test")
    (root / "Flickr").rename(root / "images")
    with pytest.raises(FileNotFoundError, match=r"Flickr: NUS-WIDE image folder not found\. Unpack the official"):
        create_dataset("nuswide", root, "test")


def test_bad_label_value_names_line(tmp_path):
    root = write_nuswide(tmp_path)
    path = root / "TrainTestLabels" / "Labels_animal_Train.txt"
    path.write_text("1\n2\n0\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: expected 0 or 1, got '2'")):
        create_dataset("nuswide", root, "train")


def test_label_count_mismatch(tmp_path):
    root = write_nuswide(tmp_path)
    path = root / "TrainTestLabels" / "Labels_sky_Train.txt"
    path.write_text("1\n0\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: has 2 labels but ")) as info:
        create_dataset("nuswide", root, "train")
    assert "TrainImagelist.txt lists 3 images; the two must align line by line" in str(info.value)


@pytest.mark.parametrize(
    "text, message", [("sky\nanimal\nsky\n", ":3: the concept 'sky' is listed twice"), ("\n\n", ": the concept list is empty")]
)
def test_bad_concept_list(tmp_path, text, message):
    root = write_nuswide(tmp_path)
    (root / "Concepts81.txt").write_text(text)
    with pytest.raises(DataFormatError, match=re.escape(f"{root / 'Concepts81.txt'}{message}")):
        create_dataset("nuswide", root, "train")

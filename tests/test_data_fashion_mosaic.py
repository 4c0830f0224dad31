"""fashion_mosaic: a synthetic idx.gz fixture always, Debian's real Fashion-MNIST files when installed."""
from __future__ import annotations

import gzip
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mlkd.data.fashion_mosaic as fm
from mlkd.data import DataFormatError, create_dataset

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_TEST = 12, 8


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img_name, lbl_name = fm.FILES[split]
    (folder / img_name).write_bytes(gzip.compress(idx_bytes(images)))
    (folder / lbl_name).write_bytes(gzip.compress(idx_bytes(labels)))


def synthetic_items(n: int, offset: int) -> np.ndarray:
    """Items whose pixels encode their identity: value offset + i, with a distinct top-left pixel."""
    items = np.zeros((n, 28, 28), dtype=np.uint8)
    items += (offset + np.arange(n, dtype=np.uint8))[:, None, None]
    items[:, 0, 0] = 255
    return items


TRAIN_ITEMS, TEST_ITEMS = synthetic_items(N_TRAIN, 10), synthetic_items(N_TEST, 100)
TRAIN_LABELS = np.arange(N_TRAIN) % 10
TEST_LABELS = (np.arange(N_TEST) * 3) % 10


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No system folder, an empty cache, and no network: only what a test provides is found."""
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("MLKD_CACHE", str(tmp_path / "cache"))

    def no_network(url, dest):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(fm, "_download", no_network)
    return tmp_path


@pytest.fixture
def fixture_root(isolated):
    root = isolated / "fmnist"
    write_split(root, "train", TRAIN_ITEMS, TRAIN_LABELS)
    write_split(root, "test", TEST_ITEMS, TEST_LABELS)
    return root


def blocks(mosaic: np.ndarray) -> list[np.ndarray]:
    return [mosaic[:28, :28], mosaic[:28, 28:], mosaic[28:, :28], mosaic[28:, 28:]]


def test_mosaics_are_the_placed_items_and_targets_their_classes(fixture_root):
    ds = create_dataset("fashion_mosaic", fixture_root, "train", num_mosaics=3, seed=5)
    assert ds.classes == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
    ]
    assert len(ds) == 3 and ds.sources.shape == (3, 4)
    # 12 items, 3 mosaics x 4 cells: one permutation, every train item used exactly once.
    assert sorted(ds.sources.ravel().tolist()) == list(range(N_TRAIN))
    targets = ds.targets
    assert targets.shape == (3, 10) and targets.dtype == torch.float32
    for i in range(3):
        mosaic = ds.mosaic(i)
        assert mosaic.shape == (56, 56)
        for block, src in zip(blocks(mosaic), ds.sources[i]):
            assert np.array_equal(block, TRAIN_ITEMS[src])
        expected = np.zeros(10, dtype=np.float32)
        expected[TRAIN_LABELS[ds.sources[i]]] = 1
        image, target = ds[i]
        assert target.tolist() == expected.tolist() == targets[i].tolist()
        assert image.shape == (3, 56, 56) and image.dtype == torch.float32
        gray = torch.from_numpy(mosaic).float() / 255
        assert all(torch.equal(image[c], gray) for c in range(3))


def test_train_and_test_never_share_a_source_image(fixture_root):
    train = create_dataset("fashion_mosaic", fixture_root, "train", num_mosaics=7)
    test = create_dataset("fashion_mosaic", fixture_root, "test", num_mosaics=5)
    train_values = {int(v) for v in TRAIN_ITEMS[:, 1, 1]}
    test_values = {int(v) for v in TEST_ITEMS[:, 1, 1]}
    assert not train_values & test_values
    # Read the identity of every placed item back from the pixels.
    seen_train = {int(b[1, 1]) for i in range(len(train)) for b in blocks(train.mosaic(i))}
    seen_test = {int(b[1, 1]) for i in range(len(test)) for b in blocks(test.mosaic(i))}
    assert seen_train <= train_values and seen_test <= test_values
    assert len(test.items) == N_TEST and test.targets.tolist()[0] == [
        float(c in TEST_LABELS[test.sources[0]]) for c in range(10)
    ]


def test_items_repeat_only_after_a_full_pass(fixture_root):
    ds = create_dataset("fashion_mosaic", fixture_root, "train", num_mosaics=5)  # 20 cells, 12 items
    counts = np.bincount(ds.sources.ravel(), minlength=N_TRAIN)
    assert sorted(counts.tolist()) == [1] * 4 + [2] * 8
    assert sorted(ds.sources.ravel()[:N_TRAIN].tolist()) == list(range(N_TRAIN))


def test_seed_reproducibility(fixture_root):
    make = lambda split, seed: create_dataset("fashion_mosaic", fixture_root, split, num_mosaics=6, seed=seed)
    assert np.array_equal(make("train", 3).sources, make("train", 3).sources)
    assert not np.array_equal(make("train", 3).sources, make("train", 4).sources)
    assert torch.equal(make("test", 0).targets, make("test", 0).targets)
    a, b = make("train", 3), make("train", 3)
    assert torch.equal(a[2][0], b[2][0])


def test_default_counts(fixture_root):
    assert len(create_dataset("fashion_mosaic", fixture_root, "train")) == 10_000
    assert len(create_dataset("fashion_mosaic", fixture_root, "test")) == 2_000


@pytest.mark.parametrize("min_items", [0, 2])
def test_min_items_leaves_cells_empty(fixture_root, min_items):
    ds = create_dataset("fashion_mosaic", fixture_root, "train", num_mosaics=400, min_items=min_items)
    filled = (ds.sources >= 0).sum(axis=1)
    assert filled.min() == min_items and filled.max() == 4
    assert set(np.unique(filled)) == set(range(min_items, 5))
    for i in np.nonzero(filled < 4)[0][:20]:
        mosaic = ds.mosaic(i)
        for block, src in zip(blocks(mosaic), ds.sources[i]):
            assert np.array_equal(block, TRAIN_ITEMS[src] if src >= 0 else np.zeros((28, 28), np.uint8))
        assert ds[i][1].tolist() == [float(c in TRAIN_LABELS[ds.sources[i][ds.sources[i] >= 0]]) for c in range(10)]
    if min_items == 0:
        empty = int(np.nonzero(filled == 0)[0][0])
        assert ds[empty][1].sum() == 0 and ds[empty][0].max() == 0


def test_transform_is_applied(fixture_root):
    ds = create_dataset("fashion_mosaic", fixture_root, "test", transform=lambda img: (img.mode, img.size), num_mosaics=1)
    assert ds[0][0] == ("RGB", (56, 56))


@pytest.mark.parametrize(
    "option, message",
    [
        ({"num_mosaics": 0}, "num_mosaics must be an integer >= 1, got 0"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"min_items": 5}, "min_items must be an integer between 0 and 4, got 5"),
        ({"min_items": 2.0}, "min_items must be an integer between 0 and 4, got 2.0"),
    ],
)
def test_bad_options(fixture_root, option, message):
    with pytest.raises(ValueError, match=re.escape(f"fashion_mosaic option {message}")):
        create_dataset("fashion_mosaic", fixture_root, "train", **option)


def test_lookup_order_root_system_cache(isolated):
    system, cache = isolated / "system", isolated / "cache" / "fashion-mnist"
    write_split(system, "train", TRAIN_ITEMS, TRAIN_LABELS)
    write_split(cache, "train", TRAIN_ITEMS[:4], TRAIN_LABELS[:4])
    write_split(cache, "test", TEST_ITEMS[:4], TEST_LABELS[:4])
    root = isolated / "root"
    write_split(root, "train", TRAIN_ITEMS[:6], TRAIN_LABELS[:6])
    assert fm.locate_fashion_mnist("train", root) == root
    (isolated / "empty").mkdir()
    assert fm.locate_fashion_mnist("train", isolated / "empty") == system
    # A root that does not exist is a mistake to report, not a folder to skip.
    with pytest.raises(FileNotFoundError, match="data root .*missing does not exist"):
        fm.locate_fashion_mnist("train", isolated / "missing")
    assert fm.locate_fashion_mnist("train") == system
    assert fm.locate_fashion_mnist("test") == cache
    assert len(create_dataset("fashion_mosaic", None, "test", num_mosaics=1).items) == 4
    assert fm.cache_dir() == cache


def test_cache_dir_default(monkeypatch):
    monkeypatch.delenv("MLKD_CACHE", raising=False)
    assert fm.cache_dir() == Path.home() / ".cache" / "mlkd" / "fashion-mnist"


def test_download_into_cache(isolated, monkeypatch):
    calls = []

    def fake_download(url, dest):
        calls.append((url, dest))
        items, labels = (TEST_ITEMS, TEST_LABELS)
        data = idx_bytes(items if "images" in url else labels)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(gzip.compress(data))

    monkeypatch.setattr(fm, "_download", fake_download)
    ds = create_dataset("fashion_mosaic", None, "test", num_mosaics=2)
    cache = isolated / "cache" / "fashion-mnist"
    assert calls == [
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz", cache / "t10k-images-idx3-ubyte.gz"),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz", cache / "t10k-labels-idx1-ubyte.gz"),
    ]
    assert np.array_equal(ds.items, TEST_ITEMS)
    create_dataset("fashion_mosaic", None, "test", num_mosaics=2)
    assert len(calls) == 2  # now served from the cache


@pytest.mark.parametrize(
    "download, reason",
    [(True, "downloading from http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ failed (network disabled in tests)"),
     (False, "downloading is disabled (download=False)")],
)
def test_nothing_found_explains_the_three_fixes(isolated, download, reason):
    (isolated / "root").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        create_dataset("fashion_mosaic", isolated / "root", "train", download=download)
    message = str(info.value)
    assert message.startswith(
        "Fashion-MNIST files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz not found in "
        f"{isolated / 'root'}, {isolated / 'system'}, {isolated / 'cache' / 'fashion-mnist'}, and {reason}. "
    )
    assert "(1) pass --data-root (root)" in message
    assert "(2) install Debian's package: apt-get install dataset-fashion-mnist" in message
    assert f"(3) allow network access (download=True) so that mlkd downloads them into {isolated / 'cache' / 'fashion-mnist'}" in message


def test_malformed_files(isolated):
    root = isolated / "bad"
    write_split(root, "train", TRAIN_ITEMS, TRAIN_LABELS[:5])
    images, labels = (root / n for n in fm.FILES["train"])
    with pytest.raises(DataFormatError, match=re.escape(f"{labels}: holds 5 labels but {images} holds 12 images")):
        fm.load_fashion_mnist("train", root)
    root2 = isolated / "bad2"
    write_split(root2, "train", TRAIN_ITEMS, np.full(N_TRAIN, 10))
    with pytest.raises(DataFormatError, match="label 10 is out of range"):
        fm.load_fashion_mnist("train", root2)
    path = isolated / "x.gz"
    path.write_bytes(b"plain bytes")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: not a readable gzip file")):
        fm.read_idx(path, 3)
    path.write_bytes(gzip.compress(idx_bytes(TRAIN_LABELS)))
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: not an idx file of unsigned bytes with 3 dimensions (bad magic number 00000801, expected 00000803)")):
        fm.read_idx(path, 3)
    path.write_bytes(gzip.compress(idx_bytes(TRAIN_ITEMS)[:-10]))
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: the header announces shape [12, 28, 28] (9408 bytes) but 9398 bytes follow")):
        fm.read_idx(path, 3)
    path.write_bytes(gzip.compress(idx_bytes(TRAIN_ITEMS))[:-20])
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: not a readable gzip file")):
        fm.read_idx(path, 3)


@pytest.mark.skipif(not (REAL_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    fm._load_pair.cache_clear()
    start = time.perf_counter()
    ds = create_dataset("fashion_mosaic", REAL_DIR, "train", download=False)
    targets = ds.targets
    # Decoding 60 000 items and sampling 10 000 mosaics (vectorised) takes well under 2 s.
    assert time.perf_counter() - start < 2.0
    items, labels = fm.load_fashion_mnist("train", REAL_DIR, download=False)
    assert items is ds.items  # cached per process
    assert items.shape == (60_000, 28, 28) and labels.shape == (60_000,)
    assert np.bincount(labels).tolist() == [6000] * 10
    test_items, test_labels = fm.load_fashion_mnist("test", REAL_DIR, download=False)
    assert test_items.shape == (10_000, 28, 28) and np.bincount(test_labels).tolist() == [1000] * 10
    assert len(ds) == 10_000 and len(np.unique(ds.sources)) == 40_000
    positives = targets.sum(dim=1)
    assert positives.min() >= 1 and positives.max() <= 4
    for i in range(0, 10_000, 997):
        for block, src in zip(blocks(ds.mosaic(i)), ds.sources[i]):
            assert np.array_equal(block, items[src])
        assert ds[i][1].tolist() == [float(c in labels[ds.sources[i]]) for c in range(10)]
    again = create_dataset("fashion_mosaic", None, "train", download=False)
    assert np.array_equal(again.sources, ds.sources)

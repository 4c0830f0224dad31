"""Small synthetic inputs shared by the engine and CLI tests (not a reference for anything)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """Write ``[n, 28, 28]`` uint8 images in the gzipped idx3 format of (Fashion-)MNIST."""
    n, h, w = images.shape
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes())


def write_fashion_like(root: Path, n_train: int = 300, n_test: int = 120, seed: int = 0) -> Path:
    """A Fashion-MNIST-shaped folder whose 10 classes are learnable stripe patterns plus noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    patterns = np.zeros((10, 28, 28), dtype=np.float32)
    for k in range(10):
        patterns[k, 2 * k + 2: 2 * k + 6, :] = 200  # a horizontal band whose height encodes the class
        patterns[k, :, 27 - 2 * k - 4: 27 - 2 * k] += 55
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n)
        images = np.clip(patterns[labels] + rng.normal(0, 30, size=(n, 28, 28)), 0, 255)
        write_idx_images(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx_labels(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root

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


def write_csv_quadrants(root: Path, classes: list[str], n_train: int = 40, n_val: int = 12, n_test: int = 16,
                        size: int = 32, seed: int = 0) -> Path:
    """A ``csv`` data set folder (train/val/test.csv, classes.txt, PNG images) of up to four learnable labels.

    Label ``k`` paints quadrant ``k`` (row-major) of a ``size`` px image in its own colour; every image has
    at least one label; Gaussian noise on top. Images go to ``root/img``.
    """
    from PIL import Image

    if len(classes) > 4:
        raise ValueError("at most 4 classes (one per quadrant)")
    rng = np.random.default_rng(seed)
    colours = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30)]
    half = size // 2
    (root / "img").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        lines = ["image,labels"]
        for i in range(n):
            labels = rng.random(len(classes)) < 0.45
            if not labels.any():
                labels[i % len(classes)] = True
            image = np.full((size, size, 3), 60.0)
            for k in np.flatnonzero(labels):
                r, c = divmod(int(k), 2)
                image[r * half:(r + 1) * half, c * half:(c + 1) * half] = colours[k]
            image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
            name = f"img/{split}{i}.png"
            Image.fromarray(image).save(root / name)
            lines.append(name + "," + "|".join(classes[k] for k in np.flatnonzero(labels)))
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root

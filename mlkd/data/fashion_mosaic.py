"""``fashion_mosaic``: the embedded default data set, multi-label mosaics of real Fashion-MNIST images.

Each sample is a 2x2 mosaic (56x56 pixels, grayscale returned as RGB) of 28x28 Fashion-MNIST items; its
target is the set of the items' classes, so with the default four items per mosaic an image has 1 to 4
positive labels. Cells are numbered 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right. Train
mosaics are built only from Fashion-MNIST's train split and test mosaics only from its test split.

Sampling (reproducible from ``seed``, different streams for train and test): the items are drawn from
random permutations of the split, one permutation after another, so no item repeats before every item
of the split has been used once (10 000 train mosaics use 40 000 of the 60 000 train items, each once).
With ``min_items < 4`` each mosaic holds a uniformly random number of items in ``[min_items, 4]`` in
random cells, the other cells left black (the Fashion-MNIST background), which makes the task harder:
fewer labels per image, and position no longer tells how many items there are. With ``colors=k``
(2 to 8) every item is tinted in one of the first ``k`` colours of `PALETTE` (drawn from a stream of its
own, so the items and cells stay those of ``colors=0``) and the labels are the (colour, class) pairs
present: ``10 k`` labels named like ``"red Shirt"``.

The four standard files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``) are looked up, per split,
in ``root`` (when given), then ``/usr/share/datasets/fashion-mnist`` (Debian's package
``dataset-fashion-mnist``), then the cache folder ``$MLKD_CACHE/fashion-mnist`` (default
``~/.cache/mlkd/fashion-mnist``), and finally downloaded from the data set's public URL into that cache
folder (``download=True``, the default). Decoded files are kept in memory for the life of the process.
"""
from __future__ import annotations

import functools
import gzip
import logging
import os
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mlkd.data.base import DataFormatError, Transform
from mlkd.data.registry import register_dataset
from mlkd.data.transforms import to_tensor

logger = logging.getLogger(__name__)

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# The canonical location given by Fashion-MNIST's authors (github.com/zalandoresearch/fashion-mnist).
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_NUM_MOSAICS = {"train": 10_000, "test": 2_000}
CELLS = 4
_SPLIT_STREAM = {"train": 0, "test": 1}
_IDX_UBYTE = 0x08
#: Tints for ``colors=k``: the first ``k`` entries, as (name, RGB multiplier of the grey item).
PALETTE = (
    ("red", (255, 48, 48)), ("green", (48, 210, 48)), ("blue", (64, 96, 255)), ("yellow", (240, 220, 32)),
    ("magenta", (230, 48, 230)), ("cyan", (32, 210, 230)), ("orange", (255, 140, 16)), ("white", (255, 255, 255)),
)


def tint(gray: np.ndarray, color: int) -> np.ndarray:
    """A ``[..., H, W]`` uint8 grey image as ``[..., H, W, 3]`` uint8 RGB: grey for ``color < 0``, else
    scaled by `PALETTE` entry ``color``."""
    if color < 0:
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.rint(gray[..., None] * (np.array(PALETTE[color][1]) / 255.0)).astype(np.uint8)


def color_class_names(colors: int) -> list[str]:
    """Label names: the 10 classes for ``colors=0``, else ``"<colour> <class>"`` colour-major (label
    ``colour * 10 + class``)."""
    return [f"{name} {cls}" for name, _ in PALETTE[:colors] for cls in CLASSES] if colors else list(CLASSES)


def cache_dir() -> Path:
    """Where downloaded files go: ``$MLKD_CACHE/fashion-mnist``, else ``~/.cache/mlkd/fashion-mnist``."""
    base = os.environ.get("MLKD_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mlkd") / "fashion-mnist"


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Decode a gzip-compressed idx file of unsigned bytes (the MNIST format).

    Args:
        path: the ``*.gz`` file.
        ndim: the expected number of dimensions (3 for images ``[N, H, W]``, 1 for labels ``[N]``).

    Returns:
        A read-only uint8 array of the stored shape.

    Raises:
        DataFormatError: not gzip, truncated, wrong magic number or size.
    """
    fix = "Replace the file (or delete it if it is in the cache folder, to download it again)."
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(f"{path}: not a readable gzip file ({exc}). {fix}") from exc
    header = 4 + 4 * ndim
    if len(data) < header or data[0:2] != b"\0\0" or data[2] != _IDX_UBYTE or data[3] != ndim:
        raise DataFormatError(
            f"{path}: not an idx file of unsigned bytes with {ndim} dimensions (bad magic number "
            f"{data[:4].hex() or 'none'}, expected 000008{ndim:02x}). {fix}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataFormatError(
            f"{path}: the header announces shape {list(shape)} ({expected} bytes) but {len(data) - header} "
            f"bytes follow. {fix}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=4)
def _load_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise DataFormatError(
            f"{labels_path}: holds {len(labels)} labels but {images_path} holds {len(images)} images. "
            "Use the files of one split from the same release."
        )
    if len(labels) and labels.max() >= len(CLASSES):
        raise DataFormatError(f"{labels_path}: label {labels.max()} is out of range (10 classes).")
    return images, labels.astype(np.int64)


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` atomically (a partial download never takes the final name)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
        out.write(response.read())
    os.replace(part, dest)


def locate_fashion_mnist(split: str, root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The folder holding the two files of ``split``, following the lookup order of the module doc.

    Raises:
        FileNotFoundError: nowhere to be found and no download possible; the message lists the folders
            looked in and the three ways to fix it.
    """
    names = FILES[split]
    if root is not None and not Path(root).is_dir():
        raise FileNotFoundError(f"data root {root} does not exist; pass a folder holding the four Fashion-MNIST "
                                "*-ubyte.gz files, or leave the root out to use the system copy or the cache")
    candidates = ([Path(root)] if root is not None else []) + [SYSTEM_DIR, cache_dir()]
    for folder in candidates:
        if all((folder / n).is_file() for n in names):
            return folder
        if root is not None and folder == Path(root):
            logger.warning("no Fashion-MNIST %s files in %s; looking in %s", split, root, SYSTEM_DIR)
    target = cache_dir()
    if download:
        try:
            for n in names:
                if not (target / n).is_file():
                    logger.info("downloading %s into %s", URL + n, target)
                    _download(URL + n, target / n)
            return target
        except OSError as exc:
            why = f"downloading from {URL} failed ({exc})"
    else:
        why = "downloading is disabled (download=False)"
    raise FileNotFoundError(
        f"Fashion-MNIST files {', '.join(names)} not found in {', '.join(map(str, candidates))}, and {why}. "
        "Do one of: (1) pass --data-root (root) pointing to a folder with the four *-ubyte.gz files; "
        "(2) install Debian's package: apt-get install dataset-fashion-mnist; "
        f"(3) allow network access (download=True) so that mlkd downloads them into {target} "
        "(set MLKD_CACHE to change the cache folder)."
    )


def load_fashion_mnist(
    split: str, root: str | os.PathLike | None = None, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` (``"train"`` or ``"test"``) as ``(images [N, 28, 28] uint8, labels [N] int64)``.

    Files are found by `locate_fashion_mnist`; decoded arrays are cached per process and read-only.
    """
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST has no split {split!r}. Valid splits: {', '.join(FILES)}")
    folder = locate_fashion_mnist(split, root, download)
    return _load_pair(folder / FILES[split][0], folder / FILES[split][1])


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
        high is not None and value > high
    ):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"fashion_mosaic option {name} must be an integer {bound}, got {value!r}")
    return int(value)


@register_dataset("fashion_mosaic", splits=("train", "test"))
class FashionMosaic(Dataset):
    """2x2 mosaics of Fashion-MNIST items, 10 labels (10 x colors when tinted; see the module doc).

    Options:
        num_mosaics: mosaics in the split (default 10 000 for train, 2 000 for test).
        seed: makes the mosaics reproducible (default 0); train and test use different streams.
        min_items: fewest items per mosaic, 0 to 4 (default 4: every cell holds an item).
        colors: 0 for grey items and 10 labels (default), or 2 to 8 tints and 10 x colors labels.
        download: allow downloading the files into the cache folder when not found (default True).

    Attributes:
        classes: the 10 Fashion-MNIST class names.
        items: ``[N, 28, 28]`` uint8 Fashion-MNIST images of the split the mosaics are made of.
        item_labels: ``[N]`` int64 their classes.
        sources: ``[num_mosaics, 4]`` int64 index into ``items`` of each cell's item, -1 for an empty cell.
        tints: ``[num_mosaics, 4]`` int64 palette index of each cell's item, -1 for grey or empty.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transform: Transform | None = None,
        *,
        num_mosaics: int | None = None,
        seed: int = 0,
        min_items: int = CELLS,
        colors: int = 0,
        download: bool = True,
    ) -> None:
        if split not in FILES:
            raise ValueError(f"fashion_mosaic has no split {split!r}. Valid splits: {', '.join(FILES)}")
        count = _check_int("num_mosaics", DEFAULT_NUM_MOSAICS[split] if num_mosaics is None else num_mosaics, 1)
        seed = _check_int("seed", seed, 0)
        min_items = _check_int("min_items", min_items, 0, CELLS)
        if colors != 0:
            colors = _check_int("colors", colors, 2, len(PALETTE))
        self.colors = colors
        self.classes = color_class_names(colors)
        self.transform = transform
        self.items, self.item_labels = load_fashion_mnist(split, root, download)
        if len(self.items) == 0:
            raise DataFormatError(f"the Fashion-MNIST {split} files hold no images")
        self.sources = self._sample_sources(count, len(self.items), min_items, seed, split)
        self.tints = np.full(self.sources.shape, -1, dtype=np.int64)
        if colors:
            # A stream of its own: colours never change which items go where.
            filled = self.sources >= 0
            self.tints[filled] = np.random.default_rng([seed, _SPLIT_STREAM[split], 2]).integers(
                0, colors, size=int(filled.sum()))

    @staticmethod
    def _sample_sources(count: int, n_items: int, min_items: int, seed: int, split: str) -> np.ndarray:
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
        per_mosaic = rng.integers(min_items, CELLS + 1, size=count)
        # A random rank per cell; the cells ranked below the mosaic's item count are filled.
        rank = rng.random((count, CELLS)).argsort(axis=1).argsort(axis=1)
        filled = rank < per_mosaic[:, None]
        needed = int(filled.sum())
        rounds = -(-needed // n_items)
        stream = np.concatenate([rng.permutation(n_items) for _ in range(rounds)])[:needed]
        sources = np.full((count, CELLS), -1, dtype=np.int64)
        sources[filled] = stream
        return sources

    @property
    def targets(self) -> Tensor:
        """All targets, ``[num_mosaics, 10]`` float32 in {0, 1}; no image is built."""
        filled = self.sources >= 0
        rows = np.nonzero(filled)[0]
        targets = np.zeros((len(self.sources), len(self.classes)), dtype=np.float32)
        targets[rows, self._labels(self.sources[filled], self.tints[filled])] = 1.0
        return torch.from_numpy(targets)

    def _labels(self, sources: np.ndarray, tints: np.ndarray) -> np.ndarray:
        labels = self.item_labels[sources]
        return labels + len(CLASSES) * tints if self.colors else labels

    def __len__(self) -> int:
        return len(self.sources)

    def mosaic(self, index: int) -> np.ndarray:
        """Mosaic ``index`` as a ``[2h, 2w]`` uint8 array (``[56, 56]`` for Fashion-MNIST)."""
        h, w = self.items.shape[1:]
        out = np.zeros((2 * h, 2 * w), dtype=np.uint8)
        for cell, src in enumerate(self.sources[index]):
            if src >= 0:
                r, c = divmod(cell, 2)
                out[r * h:(r + 1) * h, c * w:(c + 1) * w] = self.items[src]
        return out

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Return ``(transform(PIL RGB mosaic), target [q] float32)``; by default the image is ``[3, 56, 56]``."""
        gray = self.mosaic(index)
        if self.colors:
            h, w = self.items.shape[1:]
            rgb = np.zeros(gray.shape + (3,), dtype=np.uint8)
            for cell, color in enumerate(self.tints[index]):
                r, c = divmod(cell, 2)
                rgb[r * h:(r + 1) * h, c * w:(c + 1) * w] = tint(gray[r * h:(r + 1) * h, c * w:(c + 1) * w], color)
            img = Image.fromarray(rgb)
        else:
            img = Image.fromarray(gray).convert("RGB")
        target = np.zeros(len(self.classes), dtype=np.float32)
        srcs = self.sources[index]
        target[self._labels(srcs[srcs >= 0], self.tints[index][srcs >= 0])] = 1.0
        return (self.transform or to_tensor)(img), torch.from_numpy(target)

    def __repr__(self) -> str:
        return f"FashionMosaic({len(self)} mosaics of {len(self.items)} items, {len(self.classes)} classes)"

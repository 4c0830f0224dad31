"""``fashion_scenes``: cluttered multi-label scenes of Fashion-MNIST items of different sizes, optionally tinted.

A scene is a black square canvas (``canvas`` pixels, default 96) holding between ``min_items`` and
``max_items`` Fashion-MNIST items. Each item is resized to a random side drawn log-uniformly from
``[min_size, max_size]`` (so small, "minor" objects are common: with 8-48 px half of them are under
20 px) and pasted at a random position inside the canvas. Items are painted in order, each only where
its own foreground is (pixels >= `FOREGROUND` after resizing), so later items may hide parts of earlier
ones. **Max-occlusion rule**: an item is placed only where every item of the scene keeps at least
``min_visible`` of its foreground pixels visible; up to `PLACEMENT_TRIES` positions are tried, and an
item that fits nowhere is left out (so a scene may hold fewer items than drawn, never fewer than one).

Labels: the classes present. With ``colors=k`` (2 to 8) every item is tinted in one of the first ``k``
colours of `mlkd.data.fashion_mosaic.PALETTE`, drawn at random, and the labels are the (colour, class)
pairs present: ``10 k`` labels named like ``"red Shirt"``. A model must then bind each colour to the right object, a
fine-grained task with many rare labels (with ``k=4``: 40 labels).

Train scenes are built only from Fashion-MNIST's train split and test scenes only from its test split
(files located as in `mlkd.data.fashion_mosaic`). Items come from random permutations of the split, one
after another, so no item repeats before every item has been used once. Everything is drawn from
``seed`` (different streams for train and test), so equal options give identical scenes. The layout
(items, sizes, positions, colours) is computed once per process and option set; images are painted
on demand, and kept (per process, for the two latest option sets and splits) when a split's images
take at most `PAINT_CACHE_BYTES`: a training run then paints each scene once, not once per epoch
(painting was half of a small student's epoch in `mlkd demo`).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mlkd.data.base import DataFormatError, Transform
from mlkd.data.fashion_mosaic import (CLASSES, FILES, PALETTE, _load_pair, color_class_names,
                                      locate_fashion_mnist, tint)
from mlkd.data.registry import register_dataset
from mlkd.data.transforms import to_tensor

#: A resized item's pixel belongs to its foreground (is painted, counts for visibility) from this value.
FOREGROUND = 16
#: Random positions tried per item before it is left out of its scene.
PLACEMENT_TRIES = 20
DEFAULT_NUM_SCENES = {"train": 10_000, "test": 2_000}
#: Largest split (scenes x canvas^2 x 3 bytes) whose painted images are kept in memory.
PAINT_CACHE_BYTES = 512 * 2**20
# Streams distinct from fashion_mosaic's ([seed, 0] and [seed, 1]).
_SPLIT_STREAM = {"train": 10, "test": 11}


@dataclass(frozen=True)
class SceneLayout:
    """Where every object of every scene is, in painting order (scene ``i`` owns rows ``offsets[i]:offsets[i+1]``).

    Attributes:
        offsets: ``[S + 1]`` int64 row ranges per scene.
        source: ``[M]`` int64 index of the object's item in the split's Fashion-MNIST images.
        size: ``[M]`` int64 side of the resized (square) item in pixels.
        top: ``[M]`` int64 row of its top-left corner in the canvas.
        left: ``[M]`` int64 column of its top-left corner.
        color: ``[M]`` int64 palette index, -1 for grey (``colors=0``).
        visible: ``[M]`` float64 fraction of its foreground pixels left visible in the finished scene.
    """

    offsets: np.ndarray
    source: np.ndarray
    size: np.ndarray
    top: np.ndarray
    left: np.ndarray
    color: np.ndarray
    visible: np.ndarray


def resize_item(item: np.ndarray, size: int) -> np.ndarray:
    """A ``[28, 28]`` uint8 item resized to ``[size, size]`` uint8 (bilinear, antialiased when shrinking)."""
    return np.asarray(Image.fromarray(item).resize((size, size), Image.BILINEAR))


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
        high is not None and value > high
    ):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"fashion_scenes option {name} must be an integer {bound}, got {value!r}")
    return int(value)


@functools.lru_cache(maxsize=8)
def _layout(folder: Path, split: str, count: int, seed: int, canvas: int, min_items: int, max_items: int,
            min_size: int, max_size: int, min_visible: float, colors: int) -> SceneLayout:
    """Draw every scene's objects under the max-occlusion rule (a sequential loop: each placement depends
    on the ones before it). Cached per process, so the several data set objects of one run share it."""
    items, _ = _load_pair(folder / FILES[split][0], folder / FILES[split][1])
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
    drawn = rng.integers(min_items, max_items + 1, size=count)
    total = int(drawn.sum())
    stream = np.concatenate([rng.permutation(len(items)) for _ in range(-(-total // len(items)))])[:total]
    sizes = np.rint(np.exp(rng.uniform(math.log(min_size), math.log(max_size), size=total))).astype(np.int64)
    sizes = np.clip(sizes, min_size, max_size)
    tints = rng.integers(0, colors, size=total) if colors else np.full(total, -1)
    owner = np.empty((canvas, canvas), dtype=np.int64)  # index (within the scene) of the visible object, -1 none
    offsets = [0]
    rows: list[tuple[int, int, int, int, int]] = []
    visible_out: list[float] = []
    k = 0
    for n in drawn:
        owner.fill(-1)
        area: list[int] = []
        shown: list[int] = []
        placed: list[tuple[int, int, int, int, int]] = []
        for _ in range(n):
            src, side, tint = int(stream[k]), int(sizes[k]), int(tints[k])
            k += 1
            mask = resize_item(items[src], side) >= FOREGROUND
            fg = int(mask.sum())
            corners = rng.integers(0, canvas - side + 1, size=(PLACEMENT_TRIES, 2))
            if fg == 0:
                continue  # an item too faint to show at this size cannot be labelled
            for top, left in corners:
                region = owner[top:top + side, left:left + side]
                hidden = region[mask]
                lost = np.bincount(hidden[hidden >= 0], minlength=len(area))
                if all(s - c >= min_visible * a for s, c, a in zip(shown, lost, area)):
                    region[mask] = len(area)
                    shown = [s - c for s, c in zip(shown, lost)] + [fg]
                    area.append(fg)
                    placed.append((src, side, int(top), int(left), tint))
                    break
        rows += placed
        visible_out += [s / a for s, a in zip(shown, area)]
        offsets.append(len(rows))
    table = np.array(rows, dtype=np.int64).reshape(-1, 5)
    arrays = [np.asarray(offsets, dtype=np.int64), *table.T.copy(), np.asarray(visible_out, dtype=np.float64)]
    for a in arrays:
        a.setflags(write=False)
    return SceneLayout(*arrays)


@functools.lru_cache(maxsize=2)
def _painted(key: tuple, count: int, canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """The kept images of the layout ``key`` (`_layout`'s arguments): ``[count, canvas, canvas, 3]`` uint8
    and ``[count]`` bool, which of them are painted. Two entries: a run's train and test splits."""
    return np.zeros((count, canvas, canvas, 3), dtype=np.uint8), np.zeros(count, dtype=bool)


@register_dataset("fashion_scenes", splits=("train", "test"))
class FashionScenes(Dataset):
    """Cluttered scenes of Fashion-MNIST items of different sizes (see the module doc).

    Options:
        num_scenes: scenes in the split (default 10 000 for train, 2 000 for test).
        seed: makes the scenes reproducible (default 0); train and test use different streams.
        canvas: side of the square canvas in pixels (default 96).
        min_items, max_items: items drawn per scene, uniformly in this range (default 2 to 6).
        min_size, max_size: range of the items' sides in pixels, drawn log-uniformly (default 8 to 48).
        min_visible: fraction of each item's foreground that must stay visible (default 0.6).
        colors: 0 for grey items and 10 labels (default), or 2 to 8 tints and 10 x colors labels.
        download: allow downloading Fashion-MNIST into the cache folder when not found (default True).

    Attributes:
        classes: the label names.
        items: ``[N, 28, 28]`` uint8 Fashion-MNIST images of the split.
        item_labels: ``[N]`` int64 their classes.
        layout: the `SceneLayout` of all scenes.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transform: Transform | None = None,
        *,
        num_scenes: int | None = None,
        seed: int = 0,
        canvas: int = 96,
        min_items: int = 2,
        max_items: int = 6,
        min_size: int = 8,
        max_size: int = 48,
        min_visible: float = 0.6,
        colors: int = 0,
        download: bool = True,
    ) -> None:
        if split not in FILES:
            raise ValueError(f"fashion_scenes has no split {split!r}. Valid splits: {', '.join(FILES)}")
        count = _check_int("num_scenes", DEFAULT_NUM_SCENES[split] if num_scenes is None else num_scenes, 1)
        seed = _check_int("seed", seed, 0)
        canvas = _check_int("canvas", canvas, 8)
        min_items = _check_int("min_items", min_items, 1)
        max_items = _check_int("max_items", max_items, min_items)
        min_size = _check_int("min_size", min_size, 4, canvas)
        max_size = _check_int("max_size", max_size, min_size, canvas)
        if isinstance(min_visible, bool) or not isinstance(min_visible, (int, float)) or not 0 <= min_visible <= 1:
            raise ValueError(f"fashion_scenes option min_visible must be a number in [0, 1], got {min_visible!r}")
        if colors != 0:
            colors = _check_int("colors", colors, 2, len(PALETTE))
        self.transform = transform
        self.colors = colors
        folder = locate_fashion_mnist(split, root, download)
        self.items, self.item_labels = _load_pair(folder / FILES[split][0], folder / FILES[split][1])
        if len(self.items) == 0:
            raise DataFormatError(f"the Fashion-MNIST {split} files hold no images")
        self.canvas = canvas
        key = (folder, split, count, seed, canvas, min_items, max_items, min_size, max_size, float(min_visible),
               colors)
        self.layout = _layout(*key)
        # Not the images themselves: a data loader's workers get a copy of the data set, not of the cache.
        self._paint_key = key if count * canvas * canvas * 3 <= PAINT_CACHE_BYTES else None
        self.classes = color_class_names(colors)

    def object_labels(self) -> np.ndarray:
        """``[M]`` int64 label index of every object of the layout (class, or colour x 10 + class)."""
        labels = self.item_labels[self.layout.source]
        return labels + len(CLASSES) * self.layout.color if self.colors else labels

    def largest_sizes(self) -> np.ndarray:
        """``[num_scenes, q]`` int64: per scene and label, the side in canvas pixels of the label's largest
        object in the scene (its resized size, however much of it is hidden); 0 where the label is absent."""
        lay = self.layout
        scene = np.repeat(np.arange(len(self)), np.diff(lay.offsets))
        sizes = np.zeros((len(self), len(self.classes)), dtype=np.int64)
        np.maximum.at(sizes, (scene, self.object_labels()), lay.size)
        return sizes

    @property
    def targets(self) -> Tensor:
        """All targets, ``[num_scenes, q]`` float32 in {0, 1}; no image is painted."""
        lay = self.layout
        scene = np.repeat(np.arange(len(self)), np.diff(lay.offsets))
        targets = np.zeros((len(self), len(self.classes)), dtype=np.float32)
        targets[scene, self.object_labels()] = 1.0
        return torch.from_numpy(targets)

    def __len__(self) -> int:
        return len(self.layout.offsets) - 1

    def scene(self, index: int) -> np.ndarray:
        """Scene ``index`` painted as ``[canvas, canvas, 3]`` uint8 RGB (a new array)."""
        if self._paint_key is None:
            return self._paint(index)
        images, done = _painted(self._paint_key, len(self), self.canvas)
        if not done[index]:
            images[index] = self._paint(index)
            done[index] = True
        return images[index].copy()

    def _paint(self, index: int) -> np.ndarray:
        lay = self.layout
        out = np.zeros((self.canvas, self.canvas, 3), dtype=np.uint8)
        for k in range(lay.offsets[index], lay.offsets[index + 1]):
            side, top, left = lay.size[k], lay.top[k], lay.left[k]
            patch = resize_item(self.items[lay.source[k]], side)
            mask = patch >= FOREGROUND
            rgb = tint(patch, int(lay.color[k]))
            out[top:top + side, left:left + side][mask] = rgb[mask]
        return out

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Return ``(transform(PIL RGB scene), target [q] float32)``; by default the image is ``[3, canvas, canvas]``."""
        lay = self.layout
        target = np.zeros(len(self.classes), dtype=np.float32)
        labels = self.item_labels[lay.source[lay.offsets[index]:lay.offsets[index + 1]]]
        if self.colors:
            labels = labels + len(CLASSES) * lay.color[lay.offsets[index]:lay.offsets[index + 1]]
        target[labels] = 1.0
        return (self.transform or to_tensor)(Image.fromarray(self.scene(index))), torch.from_numpy(target)

    def __repr__(self) -> str:
        return (f"FashionScenes({len(self)} scenes of {len(self.layout.source)} objects on {self.canvas} px, "
                f"{len(self.classes)} classes)")

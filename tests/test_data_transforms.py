"""Image transforms: the training recipe (Cutout, RandAugment), evaluation pipeline, normalisation."""
from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mlkd.data import IMAGENET_MEAN, IMAGENET_STD, Cutout, build_transforms, to_tensor


def gradient_image(size=(40, 30)) -> Image.Image:
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None].repeat(w, 1)
    return Image.fromarray(np.concatenate([x, y, 255 - x], axis=2).astype(np.uint8))


@pytest.mark.parametrize("train", [False, True])
def test_shape_range_and_grayscale(train):
    tf = build_transforms(24, train=train)
    torch.manual_seed(0)
    out = tf(gradient_image())
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    gray = tf(Image.new("L", (17, 33), 90))
    assert gray.shape == (3, 24, 24)
    if not train:
        assert torch.allclose(gray, torch.full((3, 24, 24), 90 / 255))


def test_eval_pipeline_is_resize_and_convert():
    img = gradient_image()
    out = build_transforms(24, train=False)(img)
    assert torch.equal(out, to_tensor(img.resize((24, 24), Image.BILINEAR)))
    assert torch.equal(out, build_transforms(24, train=False)(img))


def test_train_pipeline_is_random_and_seedable():
    tf, img = build_transforms(32, train=True), gradient_image()
    torch.manual_seed(1)
    a = tf(img)
    torch.manual_seed(1)
    b = tf(img)
    c = tf(img)
    assert torch.equal(a, b) and not torch.equal(b, c)
    assert [type(t).__name__ for t in tf.transforms] == ["ToRGB", "Resize", "Cutout", "RandAugment", "ToTensor"]


def test_normalize_imagenet_and_custom():
    img = gradient_image()
    plain = build_transforms(16, train=False)(img)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(build_transforms(16, train=False, normalize=True)(img), (plain - mean) / std, atol=1e-6)
    custom = build_transforms(16, train=False, normalize=True, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])(img)
    assert torch.allclose(custom, (plain - 0.5) / 0.25, atol=1e-6)
    assert build_transforms(16, train=True, normalize=True).transforms[-1].mean == IMAGENET_MEAN


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"img_size": 0}, "img_size must be a positive integer, got 0"),
        ({"img_size": 22.5}, "img_size must be a positive integer, got 22.5"),
        ({"mean": [0.5] * 3}, "mean/std were given but normalize=False; pass normalize=True to use them"),
        ({"normalize": True, "mean": [0.5, 0.5]}, "mean and std need 3 values each, std > 0"),
        ({"normalize": True, "std": [0.2, 0.0, 0.2]}, "mean and std need 3 values each, std > 0"),
    ],
)
def test_build_transforms_errors(kwargs, message):
    kwargs = {"img_size": 8, "train": False, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        build_transforms(**kwargs)


def changed_box(before: np.ndarray, after: np.ndarray):
    ys, xs = np.nonzero((before != after).any(axis=2))
    if len(ys) == 0:
        return None
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_cutout_box_is_one_plain_colour_at_most_half_the_side():
    # On a gradient the changed pixels outline the painted box.
    img = gradient_image((60, 44))
    before = np.asarray(img)
    torch.manual_seed(0)
    sizes = set()
    for _ in range(200):
        after = np.asarray(Cutout(0.5)(img))
        box = changed_box(before, after)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        assert x1 - x0 <= 30 and y1 - y0 <= 22
        patch = after[y0:y1, x0:x1].reshape(-1, 3)
        assert (patch == patch[0]).all()  # the painted box is one colour
        sizes.add((x1 - x0, y1 - y0))
    assert np.array_equal(np.asarray(img), before)  # the input is left untouched
    assert (30, 22) in sizes  # unclipped boxes are exactly half the side
    assert len(sizes) > 10  # boxes near the border are clipped


def test_cutout_grayscale_fraction_and_errors():
    out = Cutout(0.25)(Image.new("L", (8, 8), 0))
    assert out.mode == "RGB"
    assert Cutout(0.5)(Image.new("RGB", (1, 1))).size == (1, 1)  # box of 0 px: unchanged
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=re.escape(f"Cutout fraction must be in (0, 1], got {bad}")):
            Cutout(bad)


def test_transforms_are_picklable():
    tf = pickle.loads(pickle.dumps(build_transforms(8, train=True, normalize=True)))
    assert tf(gradient_image()).shape == (3, 8, 8)

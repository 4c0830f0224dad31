"""Image transforms: the paper's training recipe and the plain evaluation pipeline.

Training (method §5): resize to a square, Cutout with a random-colour box of up to half the side, then
RandAugment, then conversion to a float tensor in [0, 1]; no mean/std normalisation unless asked for
(``normalize=True``, for ImageNet-pretrained backbones). Evaluation: resize and convert only.

Every random choice draws from torch's CPU random generator, so seeding it makes the augmentation
reproducible: `seeded_rng` draws one sample's augmentation from its own seed (what
`mlkd.data.views.AugmentedViews` does for training, so that a view depends on (seed, image, view) only,
never on the batch, the worker process or the number of workers). All transform objects are picklable,
so they work with DataLoader worker processes under any start method.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor(img: Image.Image) -> Tensor:
    """PIL image -> ``[3, H, W]`` float32 tensor in [0, 1]; grayscale and other modes become RGB."""
    return TF.to_tensor(img if img.mode == "RGB" else img.convert("RGB"))


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded with ``seed``, then restore its previous state.

    Only the CPU default generator is touched (``torch.manual_seed`` would also reseed CUDA's), and the
    caller's random stream is left exactly where it was.
    """
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


class ToRGB:
    """Convert a PIL image of any mode (grayscale, palette, RGBA, CMYK) to 3-channel RGB."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


class Cutout:
    """Paint one box of a random colour over a PIL RGB image.

    The box is ``floor(fraction * W)`` by ``floor(fraction * H)`` pixels, centred on a uniformly random
    pixel and clipped at the image border, so each side is at most ``fraction`` of the image side (half by
    default, as in the method). Its colour is uniform over RGB. The input image is not modified.
    """

    def __init__(self, fraction: float = 0.5) -> None:
        """
        Args:
            fraction: largest box side as a fraction of the image side, in (0, 1].
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"Cutout fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def __call__(self, img: Image.Image) -> Image.Image:
        img = img.convert("RGB") if img.mode != "RGB" else img.copy()
        width, height = img.size
        box_w, box_h = int(self.fraction * width), int(self.fraction * height)
        if box_w == 0 or box_h == 0:
            return img
        cx = int(torch.randint(width, ()).item())
        cy = int(torch.randint(height, ()).item())
        x0, y0 = max(0, cx - box_w // 2), max(0, cy - box_h // 2)
        x1, y1 = min(width, cx - box_w // 2 + box_w), min(height, cy - box_h // 2 + box_h)
        colour = tuple(int(c) for c in torch.randint(256, (3,)))
        # PIL rectangles include their end coordinates, hence the -1.
        ImageDraw.Draw(img).rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
        return img

    def __repr__(self) -> str:
        return f"Cutout(fraction={self.fraction})"


def build_transforms(
    img_size: int,
    train: bool,
    normalize: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Callable[[Image.Image], Tensor]:
    """Build the image pipeline of the method (§5).

    Train: ToRGB -> Resize(img_size x img_size) -> Cutout(1/2) -> RandAugment(2 ops, magnitude 9) ->
    tensor [-> Normalize]. Eval: ToRGB -> Resize -> tensor [-> Normalize].

    Args:
        img_size: side of the square output, in pixels (the paper uses 224).
        train: include the random augmentations.
        normalize: subtract ``mean`` and divide by ``std`` per channel after scaling to [0, 1].
        mean: per-channel means (3 values); ImageNet's when ``None``. Only with ``normalize=True``.
        std: per-channel standard deviations (3 positive values); ImageNet's when ``None``.

    Returns:
        A picklable callable mapping a PIL image to a ``[3, img_size, img_size]`` float32 tensor (in
        [0, 1] unless normalised).

    Raises:
        ValueError: ``img_size`` < 1, ``mean``/``std`` without ``normalize=True``, or ``mean``/``std``
            not 3 values (``std`` > 0).
    """
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size must be a positive integer, got {img_size!r}")
    if not normalize and (mean is not None or std is not None):
        raise ValueError("mean/std were given but normalize=False; pass normalize=True to use them")
    steps: list[Callable] = [ToRGB(), T.Resize((img_size, img_size), antialias=True)]
    if train:
        steps += [Cutout(0.5), T.RandAugment()]
    steps.append(T.ToTensor())
    if normalize:
        mean = tuple(IMAGENET_MEAN if mean is None else mean)
        std = tuple(IMAGENET_STD if std is None else std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean}, std={std}")
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)

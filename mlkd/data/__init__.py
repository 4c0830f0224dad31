"""Data sets, transforms and loaders.

``create_dataset(name, root, split, transform=None, **options)`` builds one of `list_datasets()`:
``coco2014``, ``voc2007``, ``nuswide``, ``csv`` (users' own data), ``fashion_mosaic`` (the embedded
default) and ``fashion_scenes`` (cluttered scenes of items of different sizes). `build_transforms` gives
the paper's image pipeline, `build_loader` the DataLoader and `build_datasets` a run's training,
validation and test sets.
"""
from mlkd.data.base import DataFormatError, ImageListDataset
from mlkd.data.registry import create_dataset, dataset_options, dataset_splits, list_datasets, register_dataset
from mlkd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Cutout, ToRGB, build_transforms, to_tensor
from mlkd.data.loaders import build_loader, seed_worker
from mlkd.data.splits import SPLIT_SEED, Splits, build_datasets

# Importing the readers registers them.
from mlkd.data import coco, custom_csv, fashion_mosaic, fashion_scenes, nuswide, voc  # noqa: E402,F401  isort: skip

__all__ = [
    "DataFormatError",
    "ImageListDataset",
    "create_dataset",
    "dataset_options",
    "dataset_splits",
    "list_datasets",
    "register_dataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Cutout",
    "ToRGB",
    "build_transforms",
    "to_tensor",
    "build_loader",
    "seed_worker",
    "SPLIT_SEED",
    "Splits",
    "build_datasets",
]

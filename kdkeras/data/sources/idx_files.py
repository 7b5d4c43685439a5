"""Offline MNIST-style sources: Fashion-MNIST and MNIST read from their
original IDX (gzip) files, or from tensorflow-datasets when already prepared."""

from __future__ import annotations

import dataclasses
import functools
import glob
import os

import numpy as np
import tensorflow as tf

from kdkeras.data.idx import read_idx, read_idx_shape
from kdkeras.data.sources.base import DatasetInfo, DatasetUnavailableError, RawSplit, identity
from kdkeras.data.sources.splits import kept_positions, resolve_split
from kdkeras.data.sources.tfds import TfdsSource

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


@dataclasses.dataclass(frozen=True)
class _IdxDataset:
    """Where an IDX dataset's files are looked for, its class names, and how to install it."""

    env_var: str
    default_dir: str | None
    class_names: tuple[str, ...]
    install_hint: str


IDX_DATASETS = {
    "fashion_mnist": _IdxDataset(
        env_var="KDKERAS_FASHION_MNIST_DIR",
        default_dir="/usr/share/datasets/fashion-mnist",
        class_names=tuple(FASHION_MNIST_CLASSES),
        install_hint="`apt-get install dataset-fashion-mnist`",
    ),
    "mnist": _IdxDataset(
        env_var="KDKERAS_MNIST_DIR",
        default_dir="/usr/share/datasets/mnist",
        class_names=tuple(str(i) for i in range(10)),
        install_hint="set KDKERAS_MNIST_DIR to a folder holding the MNIST IDX files",
    ),
}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_file(directory: str, stem: str) -> str | None:
    """The path of `stem` or `stem.gz` inside `directory`, if either exists."""
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _idx_files(directory: str) -> dict[str, tuple[str, str]] | None:
    """Split -> (images, labels) paths when `directory` holds all the IDX files."""
    found = {}
    for split, stems in _IDX_FILES.items():
        paths = tuple(_find_file(directory, stem) for stem in stems)
        if None in paths:
            return None
        found[split] = paths
    return found


@functools.lru_cache(maxsize=8)
def read_idx_split(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) uint8 and labels (N,) int32 from an IDX pair, read once per process."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"IDX pair does not match: images {images.shape} in {images_path}, "
            f"labels {labels.shape} in {labels_path}"
        )
    images.setflags(write=False)  # shared by every caller through the cache
    labels = labels.astype(np.int32)
    labels.setflags(write=False)
    return images, labels


class IdxSource:
    """MNIST-style datasets read from the original IDX (gzip) files, fully offline."""

    def __init__(self, name: str, files: dict[str, tuple[str, str]], class_names: list[str]):
        self.files = files
        shapes = {split: read_idx_shape(images) for split, (images, _) in files.items()}
        height, width = shapes["train"][1:3]
        channels = shapes["train"][3] if len(shapes["train"]) > 3 else 1
        self.info = DatasetInfo(
            name=name,
            num_classes=len(class_names),
            image_shape=(height, width, channels),
            splits={split: shape[0] for split, shape in shapes.items()},
            class_names=list(class_names),
            train_split="train",
            test_split="test",
        )

    def resolve_split(self, split: str) -> str:
        return resolve_split(self.info, split)

    def raw(self, split: str, limit: int | None = None, validation=None) -> RawSplit:
        """The split's images: `limit` of them, then the `validation` part (see `kept_positions`)."""
        images, labels = read_idx_split(*self.files[split])
        keep = kept_positions(labels, limit, validation, self.info.name, self.info.class_names)
        if keep is not None:  # stratified, seeded: not the first N
            images, labels = images[keep], labels[keep]
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        return RawSplit(dataset, identity, len(labels), shuffle_buffer=len(labels))


def _tfds_prepared(name: str, data_dir: str | None) -> bool:
    """Whether tensorflow-datasets has already prepared `name` under `data_dir` (no import needed)."""
    if not data_dir:
        return False
    root = os.path.join(os.path.expanduser(data_dir), name)
    return bool(
        glob.glob(os.path.join(root, "*", "dataset_info.json"))
        or glob.glob(os.path.join(root, "*", "*", "dataset_info.json"))
    )


def idx_or_tfds_source(name: str, data_dir: str | None):
    """tfds when already prepared under data_dir, else the IDX files (data_dir, env var, default dir)."""
    spec = IDX_DATASETS[name]
    if _tfds_prepared(name, data_dir):
        return TfdsSource(name, data_dir)
    searched = []
    if data_dir:
        searched.append(os.path.expanduser(data_dir))
    override = os.environ.get(spec.env_var)
    if override:
        searched.append(os.path.expanduser(override))
    elif spec.default_dir:
        searched.append(spec.default_dir)
    for directory in searched:
        files = _idx_files(directory)
        if files:
            return IdxSource(name, files, list(spec.class_names))
    stems = ", ".join(f"{s}[.gz]" for pair in _IDX_FILES.values() for s in pair)
    raise DatasetUnavailableError(
        f"No offline data for {name!r}: looked for the IDX files ({stems}) in "
        f"{', '.join(searched) or '(nowhere)'} and for prepared tensorflow-datasets data "
        f"under data_dir={data_dir!r}. Fix: {spec.install_hint} (or set {spec.env_var}), "
        f"or pass data_dir= pointing at a tensorflow-datasets folder with {name!r} prepared."
    )

"""What every source hands out: a `DatasetInfo`, one `RawSplit` per split, and
the two errors for a dataset that cannot be named or cannot be read here."""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

FOLDER_PREFIX = "folder:"

ACCEPTED_NAMES = (
    "a tensorflow-datasets image-classification name (e.g. 'cifar10'), "
    "'fashion_mnist' or 'mnist' (offline from IDX files), "
    "or 'folder:/path/to/root' (root/<split>/<class>/*.png|jpg|...)"
)


class DatasetNotFoundError(ValueError):
    """The dataset name (or folder path) does not name any dataset we can read."""


class DatasetUnavailableError(RuntimeError):
    """The dataset is known but its data is not on this machine and cannot be fetched."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before reading it.

    image_shape is (H, W, C) of the raw images; H and W are None when they vary.
    splits maps split name -> number of examples (empty when the source cannot
    tell without downloading). train_split / test_split are None when absent.
    """

    name: str
    num_classes: int
    image_shape: tuple[int | None, int | None, int]
    splits: dict[str, int]
    class_names: list[str]
    train_split: str | None
    test_split: str | None


@dataclasses.dataclass(frozen=True)
class RawSplit:
    """One split as `(raw, label)` elements and the function turning `raw` into a uint8 HWC image."""

    dataset: tf.data.Dataset
    decode: Callable[[tf.Tensor], tf.Tensor]
    num_examples: int | None
    shuffle_buffer: int


def identity(x: tf.Tensor) -> tf.Tensor:
    """The decode of a source whose raw elements are already uint8 images."""
    return x

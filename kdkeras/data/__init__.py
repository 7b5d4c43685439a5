"""Datasets for distillation: offline Fashion-MNIST/MNIST, image folders, tensorflow-datasets.

`info(name)` describes a dataset; `load(name, split, ...)` returns batched
`tf.data` pipelines of float32 [0, 1] NHWC images and int32 labels.
"""

from kdkeras.data.idx import parse_idx, read_idx, read_idx_shape
from kdkeras.data.pipeline import (
    augment_image,
    convert_channels,
    data_spec,
    default_augment,
    fit_images,
    load,
    preprocess_image,
)
from kdkeras.data.replay import ReplayClock
from kdkeras.data.resample import RESAMPLES, noisy_labels, resampled
from kdkeras.data.sources import (
    FASHION_MNIST_CLASSES,
    DatasetInfo,
    DatasetNotFoundError,
    DatasetUnavailableError,
    info,
    num_examples,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "ReplayClock",
    "RESAMPLES",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetUnavailableError",
    "augment_image",
    "convert_channels",
    "data_spec",
    "default_augment",
    "fit_images",
    "info",
    "load",
    "noisy_labels",
    "num_examples",
    "parse_idx",
    "preprocess_image",
    "read_idx",
    "read_idx_shape",
    "resampled",
]

"""Datasets for distillation: offline Fashion-MNIST/MNIST, image folders, tensorflow-datasets.

`info(name)` describes a dataset; `load(name, split, ...)` returns batched
`tf.data` pipelines of float32 [0, 1] NHWC images and int32 labels, of a whole
split or, with `validation_split=` and `subset=`, of the training or validation
part carved from it (`ValidationSplit`, `carve`).
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
    SUBSETS,
    DatasetInfo,
    DatasetNotFoundError,
    DatasetUnavailableError,
    ValidationSplit,
    carve,
    check_validation_size,
    info,
    num_examples,
    validation_counts,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "ReplayClock",
    "RESAMPLES",
    "SUBSETS",
    "ValidationSplit",
    "carve",
    "check_validation_size",
    "validation_counts",
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

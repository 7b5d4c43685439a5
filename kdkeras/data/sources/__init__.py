"""Where raw examples come from: offline IDX files, image folders, tensorflow-datasets.

Every source describes itself with a `DatasetInfo` and hands out one split at a
time as a `RawSplit`: cheap raw elements (an image, or a file path) that the
pipeline can index and shuffle before paying for decoding. `get_source` picks
the source a dataset name calls for; one module per source (`idx_files`,
`folders`, `tfds`), the split logic they share in `splits` and the validation
split carved from a training split in `validation`.
"""

from __future__ import annotations

from kdkeras.data.sources.base import (
    ACCEPTED_NAMES,
    FOLDER_PREFIX,
    DatasetInfo,
    DatasetNotFoundError,
    DatasetUnavailableError,
    RawSplit,
)
from kdkeras.data.sources.folders import IMAGE_EXTENSIONS, FolderSource
from kdkeras.data.sources.idx_files import (
    FASHION_MNIST_CLASSES,
    IDX_DATASETS,
    IdxSource,
    idx_or_tfds_source,
    read_idx_split,
)
from kdkeras.data.sources.splits import (
    HOLDOUT_PERCENT,
    LIMIT_SEED,
    kept_positions,
    resolve_split,
    split_base,
    stratified_limit,
    stratified_positions,
)
from kdkeras.data.sources.tfds import TfdsSource, tfds_train_test_splits
from kdkeras.data.sources.validation import SUBSETS, ValidationSplit, carve, check_validation_size, validation_counts

__all__ = [
    "ACCEPTED_NAMES", "FASHION_MNIST_CLASSES", "FOLDER_PREFIX", "HOLDOUT_PERCENT", "IMAGE_EXTENSIONS",
    "LIMIT_SEED", "DatasetInfo", "DatasetNotFoundError", "DatasetUnavailableError", "FolderSource",
    "IdxSource", "RawSplit", "SUBSETS", "TfdsSource", "ValidationSplit", "carve", "check_validation_size",
    "get_source", "info", "kept_positions", "num_examples", "read_idx_split", "resolve_split", "split_base",
    "stratified_limit", "stratified_positions", "tfds_train_test_splits", "validation_counts",
]


def get_source(name: str, data_dir: str | None = None) -> FolderSource | IdxSource | TfdsSource:
    """The source object for a dataset name: IDX (fashion_mnist/mnist), folder:PATH, or tfds."""
    if not isinstance(name, str) or not name.strip():
        raise DatasetNotFoundError(f"Dataset name must be a non-empty string, got {name!r}; "
                                   f"accepted: {ACCEPTED_NAMES}.")
    name = name.strip()
    if name.startswith(FOLDER_PREFIX):
        root = name[len(FOLDER_PREFIX):]
        if not root:
            raise DatasetNotFoundError(f"{name!r} has no path; use 'folder:/path/to/root'")
        return FolderSource(root)
    key = name.lower().replace("-", "_")
    if key in IDX_DATASETS:
        return idx_or_tfds_source(key, data_dir)
    return TfdsSource(name, data_dir)


def info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Describes a dataset (classes, image shape, splits) without reading its images."""
    return get_source(name, data_dir).info


def num_examples(name: str, split: str, limit: int | None = None, data_dir: str | None = None,
                 validation: ValidationSplit | None = None) -> int:
    """How many examples `load(name, split, limit=limit)` yields per epoch (of the
    `validation` part of them, when given)."""
    source = get_source(name, data_dir)
    raw = source.raw(source.resolve_split(split), limit, validation)
    if raw.num_examples is None:
        return sum(1 for _ in raw.dataset)
    return int(raw.num_examples)

"""Split logic shared by the sources: split names and their aliases, the test
split held out of a dataset that has none, the stratified, seeded `limit=`, and the
positions a split yields with a limit and a validation split (`kept_positions`)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # for annotations only: the split logic itself is NumPy
    from kdkeras.data.sources.base import DatasetInfo

#: share of the training split held out as the test split when a dataset has none
HOLDOUT_PERCENT = 10
#: the fixed seed of `stratified_limit`: the same subset on every run, whatever --seed
LIMIT_SEED = 0

_SPLIT_ALIASES = {
    "t10k": ("test",),
    "training": ("train",),
    "testing": ("test",),
    "val": ("validation", "valid", "val"),
    "valid": ("validation", "valid", "val"),
    "validation": ("validation", "valid", "val"),
    "dev": ("validation", "valid", "val", "dev"),
}


def resolve_split(info: DatasetInfo, split: str, allow_slicing: bool = False) -> str:
    """Maps a requested split name onto one the dataset has (e.g. 'val' -> 'validation').

    'test' falls back to the dataset's test_split (such as 'validation') when the
    dataset has no 'test'. With `allow_slicing`, tfds slice syntax ('train[:10%]')
    is kept on the resolved name.
    """
    if not isinstance(split, str) or not split.strip():
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    base, bracket, rest = split.strip().partition("[")
    if bracket and not allow_slicing:
        raise ValueError(
            f"Split slicing {split!r} is only supported for tensorflow-datasets "
            f"sources; for {info.name!r} use limit= instead"
        )
    if not info.splits:  # unknown without downloading (tfds): let tfds decide
        return split.strip()
    candidates = (base,) + _SPLIT_ALIASES.get(base.lower(), ())
    if base.lower() == "test" and info.test_split:
        candidates += (info.test_split,)
    for candidate in candidates:
        if candidate in info.splits:
            return candidate + bracket + rest
    raise ValueError(
        f"Unknown split {split!r} for dataset {info.name!r}; "
        f"available splits: {', '.join(sorted(info.splits))}"
    )


def split_base(split: str) -> str:
    """The split name without any tfds slice suffix ('train[:10%]' -> 'train')."""
    return split.partition("[")[0]


def warn_holdout(name: str, train: str, test: str, num_test: int | None) -> None:
    """Say that a dataset without a test split tests on a held-out part of its training split."""
    count = "" if num_test is None else f" ({num_test} examples)"
    warnings.warn(
        f"Dataset {name!r} has no test or validation split: its last {HOLDOUT_PERCENT}% of "
        f"training examples{count} are held out as the test split {test!r} and training "
        f"uses {train!r}.",
        stacklevel=3,
    )


def hold_out(items: list[tuple[str, int]]) -> tuple[list, list]:
    """(train, test): the last HOLDOUT_PERCENT of each class's files in path
    order (at least one of a class with two or more), so the split is
    stratified and the same on every run."""
    by_class: dict[int, list] = {}
    for path, label in sorted(items):
        by_class.setdefault(label, []).append((path, label))
    train, test = [], []
    for label in sorted(by_class):
        files = by_class[label]
        k = max(1, len(files) * HOLDOUT_PERCENT // 100) if len(files) >= 2 else 0
        train += files[: len(files) - k]
        test += files[len(files) - k:]
    return train, test


def stratified_positions(labels, limit: int | None, name: str = "") -> np.ndarray:
    """Positions (ascending) of `limit` examples with these `labels`, taken class
    by class in proportion: each class's examples in a fixed order seeded by
    `LIMIT_SEED` (the same subset on every run), every class represented once
    `limit` reaches the class count. A split's first N examples would hold only
    its first classes when it is sorted by class (an image folder, some tfds sets)."""
    labels = np.asarray(labels).reshape(-1)
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
        raise ValueError(f"limit must be None or a positive int, got {limit!r}.")
    rng = np.random.default_rng(LIMIT_SEED)
    classes = np.unique(labels)
    if limit < len(classes):
        warnings.warn(f"limit={limit} is below the {len(classes)} classes of {name!r}: "
                      f"only {limit} of them are kept.", stacklevel=3)
    # rank of each example within its class, as a fraction: taking the `limit`
    # smallest fractions keeps every class's share (ties broken by class, then position)
    fraction = np.empty(len(labels), np.float64)
    for label in classes:
        positions = np.flatnonzero(labels == label)
        fraction[positions[rng.permutation(len(positions))]] = np.arange(len(positions)) / len(positions)
    order = np.lexsort((np.arange(len(labels)), labels, fraction))
    return np.sort(order[:limit])


def stratified_limit(items: list[tuple[str, int]], limit: int | None, name: str = "") -> list:
    """`limit` of `items` (path, label), stratified and seeded as in
    `stratified_positions`, returned in their original order."""
    positions = stratified_positions([label for _, label in items], limit, name)
    return [items[p] for p in positions]


def kept_positions(labels, limit: int | None, validation=None, name: str = "",
                   class_names=None) -> np.ndarray | None:
    """Positions (ascending) of the examples a split yields: `limit` of them
    (`stratified_positions`), then the `validation` part of those (a
    `validation.ValidationSplit`); None when that is every example."""
    labels = np.asarray(labels).reshape(-1)
    if validation is None and (limit is None or limit >= len(labels)):
        return None
    keep = stratified_positions(labels, limit, name)
    if validation is not None:
        keep = keep[validation.positions(labels[keep], name, class_names)]
    return keep

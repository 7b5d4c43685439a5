"""tensorflow-datasets sources: a tfds image-classification dataset read with
`as_supervised=True`, its train/test splits (a held-out tenth when it has no
test split) and a stratified `limit=` that decodes only the kept images."""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from kdkeras.data.sources.base import (
    ACCEPTED_NAMES,
    DatasetInfo,
    DatasetNotFoundError,
    DatasetUnavailableError,
    RawSplit,
)
from kdkeras.data.sources.splits import HOLDOUT_PERCENT, kept_positions, resolve_split, warn_holdout

TFDS_SHUFFLE_BUFFER = 10_000  # decoded tfds images are big: cap the shuffle buffer
#: where tfds downloads from (checked before a download, with a short timeout)
DOWNLOAD_HOST = ("storage.googleapis.com", 443)


def tfds_train_test_splits(
    name: str, splits: dict[str, int], count: Callable[[str], int]
) -> tuple[dict[str, int], str | None, str | None]:
    """(splits, train split, test split) of a tfds dataset with `splits` sizes.

    The test split is 'test', else 'validation'; a dataset with neither (such
    as tf_flowers or eurosat) trains on 'train[:90%]' and tests on
    'train[90%:]' (sizes from `count`, which takes a tfds split spec). Unknown
    splits (`{}`, not downloaded yet) give ('train', 'test') for tfds to check.
    """
    splits = dict(splits)
    train = "train" if not splits or "train" in splits else None
    test = next((s for s in ("test", "validation") if s in splits), None if splits else "test")
    if test is None and train is not None:
        cut = 100 - HOLDOUT_PERCENT
        train, test = f"train[:{cut}%]", f"train[{cut}%:]"
        for part in (train, test):
            splits[part] = int(count(part))
        warn_holdout(name, train, test, splits[test])
    return splits, train, test


def _import_tfds():
    import tensorflow_datasets as tfds  # slow import: only when a tfds source is used

    return tfds


class TfdsSource:
    """An image-classification dataset from tensorflow-datasets (as_supervised=True)."""

    def __init__(self, name: str, data_dir: str | None = None):
        tfds = _import_tfds()
        self.name, self.data_dir = name, data_dir
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as error:  # DatasetNotFoundError, bad config, ...
            raise DatasetNotFoundError(
                f"Unknown dataset {name!r}: tensorflow-datasets cannot build it "
                f"({type(error).__name__}). Accepted: {ACCEPTED_NAMES}."
            ) from error
        image_feature, label_feature = self._supervised_features(builder)
        self._image_key, self._image_feature = builder.info.supervised_keys[0], image_feature
        if not builder.info.splits:
            self._prepare(builder)
        splits, train_split, test_split = tfds_train_test_splits(
            name, {s: int(v.num_examples) for s, v in builder.info.splits.items()},
            lambda split: int(builder.info.splits[split].num_examples),
        )
        self.info = DatasetInfo(
            name=name,
            num_classes=int(label_feature.num_classes),
            image_shape=tuple(image_feature.shape),
            splits=splits,
            class_names=list(label_feature.names),
            train_split=train_split,
            test_split=test_split,
        )

    def _prepare(self, builder) -> None:
        """Download and prepare the data now (as `tfds.load` would) so that its
        splits are known. Without a network tfds retries for minutes before
        failing: check first, and fail at once with what to do."""
        mocked = "testing" in (getattr(builder.download_and_prepare, "__module__", "") or "")
        if not mocked and not network_reachable():  # tfds.testing.mock_data downloads nothing
            raise DatasetUnavailableError(
                f"tensorflow-datasets dataset {self.name!r} is not prepared under data_dir="
                f"{self.data_dir!r} and the network is unreachable, so it cannot be downloaded. "
                f"Prepare it on a machine with internet (tfds.builder({self.name!r}).download_and_prepare()) "
                f"and pass data_dir=, or use one of: {ACCEPTED_NAMES}.")
        try:
            builder.download_and_prepare()
        except Exception:  # noqa: BLE001 - no data: tfds.load says why later
            pass

    def _supervised_features(self, builder):
        """The (image, label) features named by the builder's supervised keys."""
        tfds = _import_tfds()
        keys = builder.info.supervised_keys
        features = builder.info.features
        if isinstance(keys, (tuple, list)) and len(keys) == 2 and all(
            isinstance(k, str) and k in features for k in keys
        ):
            image, label = features[keys[0]], features[keys[1]]
            if isinstance(image, tfds.features.Image) and isinstance(
                label, tfds.features.ClassLabel
            ):
                return image, label
        raise DatasetNotFoundError(
            f"Dataset {self.name!r} is not an image-classification dataset "
            f"(supervised keys {keys!r}); accepted: {ACCEPTED_NAMES}."
        )

    def resolve_split(self, split: str) -> str:
        return resolve_split(self.info, split, allow_slicing=True)

    def raw(self, split: str, limit: int | None = None, validation=None) -> RawSplit:
        """The split's examples: `limit` of them, then the `validation` part (see `kept_positions`)."""
        tfds = _import_tfds()
        try:
            # images stay encoded (cheap to shuffle) until the pipeline decodes them
            dataset = self._load(split, skip_decoding=True)
        except Exception as error:
            raise DatasetUnavailableError(
                f"Could not load split {split!r} of tensorflow-datasets dataset {self.name!r} "
                f"(data_dir={self.data_dir!r}): {type(error).__name__}: {error}. Without "
                f"internet, prepare it elsewhere and pass data_dir=, or use one of: "
                f"{ACCEPTED_NAMES}."
            ) from error
        num = self.info.splits.get(split)
        if validation is not None or (limit is not None and (num is None or limit < num)):
            return self._stratified(split, limit, validation)
        buffer = min(num or TFDS_SHUFFLE_BUFFER, TFDS_SHUFFLE_BUFFER)
        return RawSplit(dataset, self._image_feature.decode_example, num, shuffle_buffer=buffer)

    def _load(self, split: str, skip_decoding: bool = False) -> tf.data.Dataset:
        """The split as (image, label), with `skip_decoding` its images still encoded (bytes)."""
        tfds = _import_tfds()
        decoders = {self._image_key: tfds.decode.SkipDecoding()} if skip_decoding else None
        return tfds.load(self.name, split=split, data_dir=self.data_dir, as_supervised=True,
                         shuffle_files=False, decoders=decoders)

    def _stratified(self, split: str, limit: int | None, validation=None) -> RawSplit:
        """The examples of `split` that `kept_positions` keeps (a stratified limit, a
        validation part), in split order; images stay encoded until the pipeline decodes them."""
        labels = _tfds_labels(self, split)
        positions = kept_positions(labels, limit, validation, self.name, self.info.class_names)
        keep = np.zeros(len(labels), bool)
        keep[np.arange(len(labels)) if positions is None else positions] = True
        mask = tf.constant(keep)

        def kept(position, item):
            return tf.gather(mask, position)

        def drop_position(position, item):
            return item

        dataset = self._load(split, skip_decoding=True).enumerate().filter(kept).map(drop_position)
        num = int(keep.sum())
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(num))
        return RawSplit(dataset, self._image_feature.decode_example, num,
                        shuffle_buffer=min(num, TFDS_SHUFFLE_BUFFER))


def _tfds_labels(source: TfdsSource, split: str) -> np.ndarray:
    """Every label of a tfds split in order (images left encoded), read once per source."""
    cache = source.__dict__.setdefault("_labels", {})
    if split not in cache:
        labels = source._load(split, skip_decoding=True).map(lambda x, y: y).batch(8192)
        cache[split] = np.concatenate([np.asarray(y) for y in labels.as_numpy_iterator()] or
                                      [np.zeros(0, np.int64)])
    return cache[split]


def network_reachable(host: tuple[str, int] = DOWNLOAD_HOST, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to tfds' download host opens within `timeout` seconds."""
    import socket

    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False

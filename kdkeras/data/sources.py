"""Where raw examples come from: offline IDX files, image folders, tensorflow-datasets.

Every source describes itself with a `DatasetInfo` and hands out one split at a
time as a `RawSplit`: cheap raw elements (an image, or a file path) that the
pipeline can index and shuffle before paying for decoding.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import warnings
from typing import Callable

import numpy as np
import tensorflow as tf

from kdkeras.data.idx import read_idx, read_idx_shape

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
FOLDER_PREFIX = "folder:"
TFDS_SHUFFLE_BUFFER = 10_000  # decoded tfds images are big: cap the shuffle buffer
#: share of the training split held out as the test split when a dataset has none
HOLDOUT_PERCENT = 10

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


def _identity(x: tf.Tensor) -> tf.Tensor:
    return x


# --------------------------------------------------------------------------- splits
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


def _warn_holdout(name: str, train: str, test: str, num_test: int | None) -> None:
    count = "" if num_test is None else f" ({num_test} examples)"
    warnings.warn(
        f"Dataset {name!r} has no test or validation split: its last {HOLDOUT_PERCENT}% of "
        f"training examples{count} are held out as the test split {test!r} and training "
        f"uses {train!r}.",
        stacklevel=3,
    )


def split_base(split: str) -> str:
    """The split name without any tfds slice suffix ('train[:10%]' -> 'train')."""
    return split.partition("[")[0]


# ----------------------------------------------------------------------- IDX files
@dataclasses.dataclass(frozen=True)
class _IdxDataset:
    env_var: str
    default_dir: str | None
    class_names: tuple[str, ...]
    install_hint: str


_IDX_DATASETS = {
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

    def raw(self, split: str, limit: int | None = None) -> RawSplit:
        images, labels = read_idx_split(*self.files[split])
        if limit is not None and limit < len(labels):  # stratified, seeded: not the first N
            keep = stratified_positions(labels, limit, self.info.name)
            images, labels = images[keep], labels[keep]
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        return RawSplit(dataset, _identity, len(labels), shuffle_buffer=len(labels))


def _tfds_prepared(name: str, data_dir: str | None) -> bool:
    """Whether tensorflow-datasets has already prepared `name` under `data_dir` (no import needed)."""
    if not data_dir:
        return False
    root = os.path.join(os.path.expanduser(data_dir), name)
    return bool(
        glob.glob(os.path.join(root, "*", "dataset_info.json"))
        or glob.glob(os.path.join(root, "*", "*", "dataset_info.json"))
    )


def _idx_or_tfds_source(name: str, data_dir: str | None):
    """tfds when already prepared under data_dir, else the IDX files (data_dir, env var, default dir)."""
    spec = _IDX_DATASETS[name]
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


# --------------------------------------------------------------------- image folders
def _native_hwc(path: str) -> tuple[int, int, int]:
    """(H, W, C) of an image file, with C = 1 for greyscale and 3 otherwise."""
    try:
        from PIL import Image  # headers only: fast even for big folders
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        height, width, channels = image.shape
        return height, width, 1 if channels in (1, 2) else 3
    try:
        with Image.open(path) as image:
            width, height = image.size
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    except Exception as error:  # noqa: BLE001 - PIL raises several kinds
        raise ValueError(f"Image file {path!r} is unreadable or truncated ({type(error).__name__}: "
                         f"{error}): delete or replace it.") from error
    _check_complete(path)
    return height, width, 1 if grey else 3


#: the bytes a complete file of each format ends with (a little trailing junk allowed)
_END_MARKERS = {(".jpg", ".jpeg"): b"\xff\xd9", (".png",): b"IEND"}
_TAIL_BYTES = 1024


def _check_complete(path: str) -> None:
    """Refuse a truncated JPEG or PNG (its end marker missing), naming the file:
    TensorFlow would fail mid-epoch with an error that names no file."""
    for extensions, marker in _END_MARKERS.items():
        if path.lower().endswith(extensions):
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - _TAIL_BYTES))
                if marker not in f.read():
                    raise ValueError(
                        f"Image file {path!r} is truncated (no end-of-image marker): an interrupted copy "
                        "or download. Delete or replace it.")


def _list_dirs(path: str) -> list[str]:
    return sorted(
        entry.name for entry in os.scandir(path)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _list_images(path: str) -> list[str]:
    return sorted(
        entry.path for entry in os.scandir(path)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


class FolderSource:
    """An image folder laid out as root/<split>/<class>/*.{jpg,jpeg,png,bmp,gif}.

    Class ids come from the sorted union of class folder names over all splits,
    so the same class has the same label in every split even if one split lacks it.
    """

    def __init__(self, root: str):
        name = FOLDER_PREFIX + root
        root = os.path.abspath(os.path.expanduser(root))
        if not os.path.isdir(root):
            raise DatasetNotFoundError(
                f"Image folder {root!r} (from {name!r}) does not exist or is not a directory; "
                f"expected the layout root/<split>/<class>/*.{{jpg,jpeg,png,bmp,gif}}"
            )
        if any(_list_images(os.path.join(root, d)) for d in _list_dirs(root)):
            # root/<class>/*.jpg: one unsplit set of classes.
            layout = {"train": root}
        else:
            layout = {split: os.path.join(root, split) for split in _list_dirs(root)}
        class_names = sorted({c for d in layout.values() for c in _list_dirs(d)})
        label_of = {c: i for i, c in enumerate(class_names)}
        self.files: dict[str, list[tuple[str, int]]] = {}
        for split, split_dir in layout.items():
            self.files[split] = [
                (path, label_of[c])
                for c in _list_dirs(split_dir)
                for path in _list_images(os.path.join(split_dir, c))
            ]
        test_split = next((s for s in ("test", "val", "validation") if s in self.files), None)
        if test_split is None and self.files.get("train"):
            train, test = _hold_out(self.files["train"])
            if test:
                self.files["train"], self.files["test"] = train, test
                test_split = "test"
                _warn_holdout(name, "train", "test", len(test))
        all_paths = [p for items in self.files.values() for p, _ in items]
        if not all_paths:
            raise DatasetNotFoundError(
                f"No images found in {root!r}; expected the layout "
                f"root/<split>/<class>/*.{{jpg,jpeg,png,bmp,gif}}"
            )
        self.info = DatasetInfo(
            name=FOLDER_PREFIX + root,
            num_classes=len(class_names),
            image_shape=self._common_shape(all_paths),
            splits={split: len(items) for split, items in self.files.items()},
            class_names=class_names,
            train_split="train" if "train" in self.files else None,
            test_split=test_split,
        )

    @staticmethod
    def _common_shape(paths: list[str]) -> tuple[int | None, int | None, int]:
        """Shape of the first image; H/W become None when the images' sizes differ."""
        height, width, channels = _native_hwc(paths[0])
        for path in paths[1:]:
            if _native_hwc(path)[:2] != (height, width):
                return None, None, channels
        return height, width, channels

    def resolve_split(self, split: str) -> str:
        return resolve_split(self.info, split)

    def raw(self, split: str, limit: int | None = None) -> RawSplit:
        items = stratified_limit(self.files[split], limit, self.info.name)
        if not items:
            raise ValueError(f"Split {split!r} of {self.info.name!r} has no images")
        paths = [p for p, _ in items]
        labels = np.array([label for _, label in items], np.int32)
        dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
        decode = functools.partial(_decode_file, shape=self.info.image_shape)
        return RawSplit(dataset, decode, len(items), shuffle_buffer=len(items))


#: the fixed seed of `stratified_limit`: the same subset on every run, whatever --seed
LIMIT_SEED = 0


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


def _hold_out(items: list[tuple[str, int]]) -> tuple[list, list]:
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


def _decode_file(path: tf.Tensor, shape: tuple[int | None, int | None, int]) -> tf.Tensor:
    """Reads and decodes one image file to uint8 HWC with the folder's channel count."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    if shape[2] == 1:
        image = tf.image.rgb_to_grayscale(image)
    image.set_shape(shape)
    return image


# ------------------------------------------------------------------ tensorflow-datasets
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
        _warn_holdout(name, train, test, splits[test])
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

    def raw(self, split: str, limit: int | None = None) -> RawSplit:
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
        if limit is not None and (num is None or limit < num):
            return self._stratified(split, limit)
        buffer = min(num or TFDS_SHUFFLE_BUFFER, TFDS_SHUFFLE_BUFFER)
        return RawSplit(dataset, self._image_feature.decode_example, num, shuffle_buffer=buffer)

    def _load(self, split: str, skip_decoding: bool = False) -> tf.data.Dataset:
        """The split as (image, label), with `skip_decoding` its images still encoded (bytes)."""
        tfds = _import_tfds()
        decoders = {self._image_key: tfds.decode.SkipDecoding()} if skip_decoding else None
        return tfds.load(self.name, split=split, data_dir=self.data_dir, as_supervised=True,
                         shuffle_files=False, decoders=decoders)

    def _stratified(self, split: str, limit: int) -> RawSplit:
        """`limit` examples of `split` kept class by class (`stratified_positions`),
        in split order; images stay encoded until the pipeline decodes the kept ones."""
        labels = _tfds_labels(self, split)
        keep = np.zeros(len(labels), bool)
        keep[stratified_positions(labels, limit, self.name)] = True
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


#: where tfds downloads from (checked before a download, with a short timeout)
DOWNLOAD_HOST = ("storage.googleapis.com", 443)


def network_reachable(host: tuple[str, int] = DOWNLOAD_HOST, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to tfds' download host opens within `timeout` seconds."""
    import socket

    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------------- dispatch
def get_source(name: str, data_dir: str | None = None):
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
    if key in _IDX_DATASETS:
        return _idx_or_tfds_source(key, data_dir)
    return TfdsSource(name, data_dir)


def info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Describes a dataset (classes, image shape, splits) without reading its images."""
    return get_source(name, data_dir).info


def num_examples(name: str, split: str, limit: int | None = None, data_dir: str | None = None) -> int:
    """How many examples `load(name, split, limit=limit)` yields per epoch."""
    source = get_source(name, data_dir)
    raw = source.raw(source.resolve_split(split), limit)
    if raw.num_examples is None:
        return sum(1 for _ in raw.dataset)
    return int(raw.num_examples)

"""Image-folder sources (`folder:/path`): root/<split>/<class>/*.{jpg,png,...},
or root/<class>/* whose last tenth of each class is held out as the test split.

A folder is checked when it is opened, so that a bad one fails at once with the
file or folder named, never trains a silently wrong model: every image readable
and complete, every class folder holding images, at least two classes, and no
split with a class that the training split lacks.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import tensorflow as tf

from kdkeras.data.sources.base import FOLDER_PREFIX, DatasetInfo, DatasetNotFoundError, RawSplit
from kdkeras.data.sources.splits import hold_out, kept_positions, resolve_split, warn_holdout

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_LAYOUT = "root/<split>/<class>/*.{jpg,jpeg,png,bmp,gif} or root/<class>/*.{jpg,...}"


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
    """The sorted names of the folders in `path`, hidden ones left out."""
    return sorted(
        entry.name for entry in os.scandir(path)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _list_images(path: str) -> list[str]:
    """The sorted paths of the image files (by extension) directly in `path`."""
    return sorted(
        entry.path for entry in os.scandir(path)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


class FolderSource:
    """An image folder laid out as root/<split>/<class>/*.{jpg,jpeg,png,bmp,gif}
    (or root/<class>/*, a test split held out of it).

    Class ids number the sorted class folder names, the same in every split: a
    split other than 'train' may lack a class (its label stays the same) but
    never has one that 'train' lacks.
    """

    def __init__(self, root: str):
        name = FOLDER_PREFIX + root
        root = os.path.abspath(os.path.expanduser(root))
        if not os.path.isdir(root):
            raise DatasetNotFoundError(
                f"Image folder {root!r} (from {name!r}) does not exist or is not a directory; "
                f"expected the layout root/<split>/<class>/*.{{jpg,jpeg,png,bmp,gif}}"
            )
        unsplit = any(_list_images(os.path.join(root, d)) for d in _list_dirs(root))
        if unsplit:
            # root/<class>/*.jpg: one unsplit set of classes.
            layout = {"train": root}
        else:
            layout = {split: os.path.join(root, split) for split in _list_dirs(root)}
        images = {
            split: {c: _list_images(os.path.join(split_dir, c)) for c in _list_dirs(split_dir)}
            for split, split_dir in layout.items()
        }
        class_names = _checked_classes(name, root, layout, images, unsplit)
        label_of = {c: i for i, c in enumerate(class_names)}
        self.files: dict[str, list[tuple[str, int]]] = {
            split: [(path, label_of[c]) for c, paths in per_class.items() for path in paths]
            for split, per_class in images.items()
        }
        test_split = next((s for s in ("test", "val", "validation") if s in self.files), None)
        if test_split is None and self.files.get("train"):
            train, test = hold_out(self.files["train"])
            if test:
                self.files["train"], self.files["test"] = train, test
                test_split = "test"
                warn_holdout(name, "train", "test", len(test))
        all_paths = [p for items in self.files.values() for p, _ in items]
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

    def raw(self, split: str, limit: int | None = None, validation=None) -> RawSplit:
        """The split's files: `limit` of them, then the `validation` part (see `kept_positions`)."""
        items = self.files[split]
        keep = kept_positions([label for _, label in items], limit, validation, self.info.name,
                              self.info.class_names)
        items = items if keep is None else [items[p] for p in keep]
        if not items:
            raise ValueError(f"Split {split!r} of {self.info.name!r} has no images")
        paths = [p for p, _ in items]
        labels = np.array([label for _, label in items], np.int32)
        dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
        decode = functools.partial(_decode_file, shape=self.info.image_shape)
        return RawSplit(dataset, decode, len(items), shuffle_buffer=len(items))


def _checked_classes(name: str, root: str, layout: dict[str, str],
                     images: dict[str, dict[str, list[str]]], unsplit: bool) -> list[str]:
    """The sorted class names of a folder whose `images` map split -> class ->
    image paths; a ValueError naming the folder when a class folder holds no
    images, when there are fewer than two classes, or when a split has a class
    that 'train' lacks (it would be scored on a label never trained)."""
    for split, per_class in images.items():
        for class_name, paths in per_class.items():
            if not paths:
                where = "" if unsplit else f" (split {split!r})"
                raise ValueError(
                    f"Class folder {os.path.join(layout[split], class_name)!r}{where} of {name!r} holds "
                    f"no images (*{', *'.join(IMAGE_EXTENSIONS)}): a class needs images to train and "
                    "test on. Add its images or remove the folder.")
    class_names = sorted({c for per_class in images.values() for c in per_class})
    if not class_names:
        raise DatasetNotFoundError(f"No images found in {root!r}; expected the layout {_LAYOUT}")
    if len(class_names) < 2:
        raise ValueError(
            f"Image folder {root!r} (from {name!r}) has one class, {class_names[0]!r}: a classifier "
            f"needs at least 2 classes, one folder of images each ({_LAYOUT}).")
    train = set(images.get("train", class_names))
    for split, per_class in images.items():
        only_here = sorted(set(per_class) - train)
        if only_here:
            only_train = sorted(train - set(per_class))
            raise ValueError(
                f"The class folders of split {split!r} in {name!r} differ from those of 'train': "
                f"only in {split!r}: {', '.join(only_here)}; only in 'train': "
                f"{', '.join(only_train) or 'none'}. Labels number the class folder names, so each "
                f"class of {split!r} must also be a class of 'train': rename or move the folders.")
    return class_names


def _decode_file(path: tf.Tensor, shape: tuple[int | None, int | None, int]) -> tf.Tensor:
    """Reads and decodes one image file to uint8 HWC with the folder's channel count."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    if shape[2] == 1:
        image = tf.image.rgb_to_grayscale(image)
    image.set_shape(shape)
    return image


"""Tests for kdkeras.data: IDX reader, folder / tfds / Fashion-MNIST sources, the pipeline."""

import gzip
import re

import numpy as np
import pytest
import tensorflow as tf

from kdkeras import data
from kdkeras.data import sources
from tests.helpers import HAVE_FASHION, collect_batches

# ------------------------------------------------------------------------ IDX
def _write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(">u1").tobytes())


def _write_idx_dir(directory, n_train=7, n_test=3, hw=(5, 4)):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, *hw), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
        arrays[prefix] = (images, labels)
    return arrays


def test_idx_reader_roundtrip(tmp_path):
    arrays = _write_idx_dir(tmp_path)
    images, labels = arrays["train"]
    got = data.read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert got.dtype == np.uint8 and got.shape == (7, 5, 4)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "train-labels-idx1-ubyte.gz"), labels)
    assert data.read_idx_shape(tmp_path / "t10k-images-idx3-ubyte.gz") == (3, 5, 4)
    # Uncompressed files and wider big-endian types work too.
    raw = np.arange(6, dtype=">i4").reshape(2, 3)
    (tmp_path / "ints").write_bytes(b"\0\0\x0c\x02" + b"\0\0\0\x02\0\0\0\x03" + raw.tobytes())
    np.testing.assert_array_equal(data.read_idx(tmp_path / "ints"), raw)


def test_idx_reader_rejects_garbage():
    with pytest.raises(ValueError, match="not an IDX file"):
        data.parse_idx(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="needs 6 data bytes"):
        data.parse_idx(b"\0\0\x08\x01\0\0\0\x06" + b"\0" * 5)


def test_idx_source_via_env_dir(tmp_path, monkeypatch):
    arrays = _write_idx_dir(tmp_path)
    monkeypatch.setenv("KDKERAS_FASHION_MNIST_DIR", str(tmp_path))
    info = data.info("fashion_mnist")
    assert info.splits == {"train": 7, "test": 3}
    assert info.image_shape == (5, 4, 1) and info.num_classes == 10
    x, y = collect_batches(data.load("fashion_mnist", "t10k", batch_size=2))  # t10k -> test alias
    np.testing.assert_allclose(x[..., 0], arrays["t10k"][0] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(y, arrays["t10k"][1])
    assert not data.default_augment(info, "train")  # no flips for clothes/digits


def test_fashion_mnist_missing_files_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KDKERAS_FASHION_MNIST_DIR", str(tmp_path / "nothing"))
    with pytest.raises(data.DatasetUnavailableError, match="apt-get install dataset-fashion-mnist"):
        data.info("fashion_mnist")


@pytest.mark.skipif(not HAVE_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_files(monkeypatch):
    monkeypatch.delenv("KDKERAS_FASHION_MNIST_DIR", raising=False)
    info = data.info("fashion_mnist")
    assert info.num_classes == 10 and info.class_names[0] == "T-shirt/top"
    assert info.splits == {"train": 60000, "test": 10000}
    assert info.image_shape == (28, 28, 1)
    x, y = next(iter(data.load("fashion_mnist", "test", batch_size=8, limit=8)))
    assert x.shape == (8, 28, 28, 1) and y.dtype == tf.int32


# ------------------------------------------------------------------ folder source
def _write_png(path, value, size=(6, 6), mode="RGB"):
    channels = 3 if mode == "RGB" else 1
    pixels = np.full((*size, channels), value, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(pixels).numpy())


@pytest.fixture
def image_folder(tmp_path):
    # train: cat, dog, emu ; test: cat, emu (no dog) -> emu must be label 2 in both.
    layout = {"train": {"cat": 2, "dog": 2, "emu": 1}, "test": {"cat": 1, "emu": 2}}
    for split, classes in layout.items():
        for ci, (cls, n) in enumerate(classes.items()):
            for i in range(n):
                _write_png(tmp_path / split / cls / f"{i}.png", 40 * ci + i)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_info_and_consistent_labels(image_folder):
    name = f"folder:{image_folder}"
    info = data.info(name)
    assert info.class_names == ["cat", "dog", "emu"] and info.num_classes == 3
    assert info.splits == {"test": 3, "train": 5}
    assert info.image_shape == (6, 6, 3)
    assert (info.train_split, info.test_split) == ("train", "test")
    _, y_test = collect_batches(data.load(name, "test", batch_size=2))
    assert sorted(y_test.tolist()) == [0, 2, 2]
    x, y_train = collect_batches(data.load(name, "train", batch_size=2, augment=False))
    assert sorted(y_train.tolist()) == [0, 0, 1, 1, 2]
    assert x.shape == (5, 6, 6, 3) and x.dtype == np.float32


def test_folder_varying_sizes_need_image_size(tmp_path):
    _write_png(tmp_path / "train" / "a" / "0.png", 10, size=(6, 6), mode="L")
    _write_png(tmp_path / "train" / "b" / "0.png", 20, size=(8, 5), mode="L")
    name = f"folder:{tmp_path}"
    assert data.info(name).image_shape == (None, None, 1)
    with pytest.raises(ValueError, match="image_size"):
        data.load(name, "train")
    x, _ = collect_batches(data.load(name, "train", image_size=(7, 7), channels=3, augment=False))
    assert x.shape == (2, 7, 7, 3)


def test_folder_missing_path_is_clear(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="nope"):
        data.info(f"folder:{tmp_path / 'nope'}")


# ------------------------------------------------- folders refused when opened
def _folder(root, class_folders):
    """Tiny PNGs under `root`: `class_folders` maps a class folder (relative) to its
    number of images, 0 for a folder with none (a text file in it, not an image)."""
    for rel, n in class_folders.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel / "notes.txt").write_text("not an image")
        for i in range(n):
            _write_png(root / rel / f"{i}.png", 12 * i)
    return f"folder:{root}"


def _refused_on_opening(name, match, limit):
    """The folder fails for its description and for a split, limited or not."""
    for call in (lambda: data.info(name), lambda: data.load(name, "train", limit=limit),
                 lambda: data.num_examples(name, "test", limit=limit)):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("limit", [None, 2])
@pytest.mark.parametrize("layout", ["split", "unsplit"])
def test_a_folder_with_one_class_is_refused(tmp_path, layout, limit):
    name = _folder(tmp_path, {"train/cat": 4, "test/cat": 2} if layout == "split" else {"cat": 20})
    _refused_on_opening(name, rf"{re.escape(repr(str(tmp_path)))} .*one class, 'cat'.*at least 2 classes", limit)


@pytest.mark.parametrize("limit", [None, 2])
@pytest.mark.parametrize("layout, empty", [("unsplit", "dog"), ("split", "train/dog"), ("split", "test/dog")])
def test_a_class_folder_without_images_is_refused(tmp_path, layout, empty, limit):
    if layout == "split":
        folders = {"train/cat": 3, "train/dog": 3, "train/emu": 3, "test/cat": 1, "test/dog": 1, "test/emu": 1}
    else:
        folders = {"cat": 10, "dog": 10, "emu": 10}
    name = _folder(tmp_path, {**folders, empty: 0})
    where = rf" \(split '{empty.split('/')[0]}'\)" if layout == "split" else ""
    _refused_on_opening(name, re.escape(repr(str(tmp_path / empty))) + where + " of .*holds no images", limit)


@pytest.mark.parametrize("limit", [None, 2])
@pytest.mark.parametrize("test_classes, message", [
    ("abz", "only in 'test': z; only in 'train': c"),
    ("abcz", "only in 'test': z; only in 'train': none"),
])
def test_a_test_split_with_a_class_training_lacks_is_refused(tmp_path, test_classes, message, limit):
    folders = {f"train/{c}": 2 for c in "abc"} | {f"test/{c}": 1 for c in test_classes}
    name = _folder(tmp_path, folders)
    _refused_on_opening(name, r"class folders of split 'test' .*differ from those of 'train': " + message, limit)


def test_every_split_is_held_to_the_training_classes(tmp_path):
    name = _folder(tmp_path, {"train/a": 2, "train/b": 2, "train/c": 2, "test/a": 1, "test/b": 1})
    assert data.info(name).class_names == ["a", "b", "c"]  # a split may lack a class
    _folder(tmp_path, {"val/a": 1, "val/y": 1})
    with pytest.raises(ValueError, match="split 'val' .*only in 'val': y; only in 'train': b, c"):
        data.info(name)


# --------------------------------------------------------------------- tfds source
@pytest.fixture
def mock_cifar10():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        yield "cifar10"


def test_tfds_shapes_dtypes_range(mock_cifar10):
    info = data.info(mock_cifar10)
    assert info.num_classes == 10 and info.image_shape == (32, 32, 3)
    x, y = next(iter(data.load(mock_cifar10, "test", batch_size=5)))
    assert x.shape == (5, 32, 32, 3) and x.dtype == tf.float32
    assert y.shape == (5,) and y.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0


def test_tfds_resize_and_channels(mock_cifar10):
    x, _ = next(iter(data.load(mock_cifar10, "train", batch_size=4, image_size=(16, 20),
                               channels=1)))
    assert x.shape == (4, 16, 20, 1)
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0


def test_tfds_index_unique_when_shuffled(mock_cifar10):
    ds = data.load(mock_cifar10, "train", batch_size=5, with_index=True, shuffle=True, seed=3)
    plain_x, _ = collect_batches(data.load(mock_cifar10, "train", batch_size=5, with_index=True,
                                    shuffle=False, augment=False))
    for _ in range(2):  # two epochs: same index set, stable meaning
        x, y = collect_batches(ds)
        assert set(x) == {"image", "index"} and x["index"].dtype == np.int64
        assert sorted(x["index"].tolist()) == list(range(12))
    np.testing.assert_array_equal(plain_x["index"], np.arange(12))
    shuffled, _ = collect_batches(data.load(mock_cifar10, "train", batch_size=5, with_index=True,
                                     shuffle=True, augment=False, seed=3))
    order = shuffled["index"]
    assert not np.array_equal(order, np.arange(12))
    np.testing.assert_allclose(shuffled["image"], plain_x["image"][order])  # index -> same example


def test_tfds_limit_drop_remainder_repeat(mock_cifar10):
    x, y = collect_batches(data.load(mock_cifar10, "train", batch_size=4, limit=7, with_index=True))
    assert len(y) == 7 and sorted(x["index"].tolist()) == list(range(7))
    batches = list(data.load(mock_cifar10, "train", batch_size=4, limit=7, drop_remainder=True))
    assert [int(b[1].shape[0]) for b in batches] == [4]
    ds = data.load(mock_cifar10, "test", batch_size=5, limit=7, repeat=True)
    assert len(list(ds.take(4))) == 4


def test_tfds_unknown_dataset_is_clear():
    with pytest.raises(data.DatasetNotFoundError, match="no_such_dataset_xyz.*folder:"):
        data.info("no_such_dataset_xyz")


def test_tfds_load_failure_is_clear(mock_cifar10, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(data.DatasetUnavailableError, match="'cifar10'.*no internet"):
        data.load(mock_cifar10, "train")


def test_fashion_mnist_prefers_prepared_tfds_data(mock_cifar10, tmp_path):
    (tmp_path / "fashion_mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "fashion_mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    assert isinstance(sources.get_source("fashion_mnist", str(tmp_path)), sources.TfdsSource)
    x, y = next(iter(data.load("fashion_mnist", data_dir=str(tmp_path), batch_size=3)))
    assert x.shape == (3, 28, 28, 1) and y.dtype == tf.int32


def test_split_names_are_translated():
    info = data.DatasetInfo("d", 2, (4, 4, 3), {"train": 5, "validation": 2}, ["a", "b"],
                            "train", "validation")
    assert sources.resolve_split(info, "test") == "validation"
    assert sources.resolve_split(info, "val") == "validation"
    assert sources.resolve_split(info, "train[:50%]", allow_slicing=True) == "train[:50%]"
    with pytest.raises(ValueError, match="'extra'.*train, validation"):
        sources.resolve_split(info, "extra")


# ---------------------------------------------------------------------- augmentation
def _folder_with_gradients(root, n=6, size=(10, 10)):
    rng = np.random.default_rng(1)
    for i in range(n):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        cls = "cd"[i % 2]  # two classes: a one-class folder is refused
        path = root / "train" / cls / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(pixels).numpy())
        (root / "test" / cls).mkdir(parents=True, exist_ok=True)
        (root / "test" / cls / f"{i}.png").write_bytes(path.read_bytes())
    return f"folder:{root}"


def test_augmentation_shape_range_seed_and_effect(tmp_path):
    name = _folder_with_gradients(tmp_path)
    plain, _ = collect_batches(data.load(name, "train", batch_size=6, shuffle=False, augment=False))
    aug1, _ = collect_batches(data.load(name, "train", batch_size=6, shuffle=False, seed=7))
    aug2, _ = collect_batches(data.load(name, "train", batch_size=6, shuffle=False, seed=7))
    assert aug1.shape == plain.shape == (6, 10, 10, 3)
    assert aug1.min() >= 0.0 and aug1.max() <= 1.0
    np.testing.assert_array_equal(aug1, aug2)  # reproducible with a seed
    changed = [not np.array_equal(a, p) for a, p in zip(aug1, plain)]
    assert any(changed)  # it does something
    test_x, _ = collect_batches(data.load(name, "test", batch_size=6))  # no augmentation by default
    np.testing.assert_array_equal(test_x, plain)


def test_augment_image_zero_pads_tiny_images():
    image = tf.ones((3, 3, 1))
    out = data.augment_image(image, tf.constant([1, 2], tf.int64))
    assert out.shape == (3, 3, 1)


# ---------------------------------------------------------------------- bad inputs
def test_bad_arguments_name_the_value(image_folder):
    name = f"folder:{image_folder}"
    with pytest.raises(ValueError, match="'bogus'.*test, train"):
        data.load(name, "bogus")
    with pytest.raises(ValueError, match="batch_size.*0"):
        data.load(name, batch_size=0)
    with pytest.raises(ValueError, match=r"image_size.*\(32, -1\)"):
        data.load(name, image_size=(32, -1))
    with pytest.raises(ValueError, match="channels.*2"):
        data.load(name, channels=2)
    with pytest.raises(ValueError, match="limit.*-3"):
        data.load(name, limit=-3)
    with pytest.raises(ValueError, match=r"train\[:5\]"):
        data.load(name, "train[:5]")


# ------------------------------------------------- datasets without a test split
@pytest.mark.filterwarnings("ignore:Dataset .* has no test or validation split")
def test_folder_without_test_split_holds_out_each_class(tmp_path):
    # root/<class>/*.png (no split folders): 20 cats, 5 dogs, 1 emu; each file its own grey.
    for ci, (cls, n) in enumerate({"cat": 20, "dog": 5, "emu": 1}.items()):
        for i in range(n):
            _write_png(tmp_path / cls / f"{i:02d}.png", 60 * ci + i)
    name = f"folder:{tmp_path}"
    with pytest.warns(UserWarning, match="no test or validation split"):
        info = data.info(name)
    assert info.class_names == ["cat", "dog", "emu"]
    assert (info.train_split, info.test_split) == ("train", "test")
    # 10% of 20 cats = 2, at least one of the 5 dogs, none of the single emu.
    assert info.splits == {"train": 23, "test": 3}
    _, y_test = collect_batches(data.load(name, "test", batch_size=4))
    assert sorted(y_test.tolist()) == [0, 0, 1]
    x_train, y_train = collect_batches(data.load(name, "train", batch_size=4, augment=False,
                                          shuffle=False))
    assert sorted(y_train.tolist()) == [0] * 18 + [1] * 4 + [2]
    x_test, _ = collect_batches(data.load(name, "test", batch_size=4))
    # disjoint: no held-out image is also a training image (the pixels encode the file)
    train_rows = {row.tobytes() for row in x_train.reshape(len(x_train), -1)}
    assert not any(row.tobytes() in train_rows for row in x_test.reshape(len(x_test), -1))
    assert len(train_rows) == 23  # every file distinct, so the check above means disjoint
    # the same split on every run
    with pytest.warns(UserWarning):
        assert data.info(name).splits == info.splits


def test_tfds_splits_hold_out_train_when_no_test():
    from tensorflow_datasets.core import naming
    from tensorflow_datasets.core import splits as splits_lib

    template = naming.ShardedFileTemplate(data_dir="/nonexistent", dataset_name="x",
                                          split="train", filetype_suffix="tfrecord")
    split_dict = splits_lib.SplitDict([splits_lib.SplitInfo(
        name="train", shard_lengths=[60, 43], num_bytes=0, filename_template=template)])

    def count(spec):
        return split_dict[spec].num_examples

    with pytest.warns(UserWarning, match=r"train\[90%:\]"):
        splits, train, test = data.sources.tfds_train_test_splits("flowers", {"train": 103}, count)
    assert (train, test) == ("train[:90%]", "train[90%:]")
    assert splits["train[:90%]"] + splits["train[90%:]"] == 103 and splits["train[90%:]"] == 10
    info = data.DatasetInfo("flowers", 5, (None, None, 3), splits, [], train, test)
    assert data.sources.resolve_split(info, "test", allow_slicing=True) == "train[90%:]"
    assert data.sources.resolve_split(info, train, allow_slicing=True) == "train[:90%]"
    # A validation split is used as the test split; unknown splits are left to tfds.
    assert data.sources.tfds_train_test_splits("x", {"train": 5, "validation": 2}, count)[1:] == (
        "train", "validation")
    assert data.sources.tfds_train_test_splits("x", {}, count) == ({}, "train", "test")


# --------------------------------------------------- stratified, seeded limits (issue 13)
def _write_sorted_idx_dir(directory, per_class=10, classes=3):
    """IDX files sorted by class (as a folder is), each image filled with its own
    position, so a kept image can be traced back to its example."""
    n = per_class * classes
    labels = np.repeat(np.arange(classes), per_class).astype(np.uint8)
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 4, 4))
    for prefix in ("train", "t10k"):
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
    return labels


def test_stratified_positions_keep_class_shares_and_a_fixed_subset():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    keep = sources.stratified_positions(labels, 10)
    assert np.array_equal(np.bincount(labels[keep], minlength=3), [6, 3, 1])  # shares kept
    assert np.all(np.diff(keep) > 0)  # split order
    assert np.array_equal(keep, sources.stratified_positions(labels, 10))  # seeded: same subset
    assert not np.array_equal(keep[:6], np.arange(6))  # not the class's first examples
    assert np.array_equal(sources.stratified_positions(labels, 500), np.arange(100))
    with pytest.warns(UserWarning, match="limit=2 is below the 3 classes"):
        assert len(sources.stratified_positions(labels, 2)) == 2
    with pytest.raises(ValueError, match="limit.*-1"):
        sources.stratified_positions(labels, -1)


def test_an_idx_limit_keeps_every_class_with_its_images(tmp_path, monkeypatch):
    labels = _write_sorted_idx_dir(tmp_path)
    monkeypatch.setenv("KDKERAS_FASHION_MNIST_DIR", str(tmp_path))
    runs = [collect_batches(data.load("fashion_mnist", "train", batch_size=64, limit=6, shuffle=False))
            for _ in range(2)]
    (x, y), (x2, y2) = runs
    assert np.array_equal(np.bincount(y, minlength=3), [2, 2, 2])  # the first 6 would be all class 0
    np.testing.assert_array_equal(x, x2)
    position = np.round(x[:, 0, 0, 0] * 255).astype(int)  # each image still carries its label
    np.testing.assert_array_equal(labels[position], y)
    assert data.num_examples("fashion_mnist", "train", limit=6) == 6


@pytest.mark.skipif(not HAVE_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_a_fashion_mnist_train_limit_is_stratified(monkeypatch):
    monkeypatch.delenv("KDKERAS_FASHION_MNIST_DIR", raising=False)
    labels = [int(y) for _, y in sources.get_source("fashion_mnist").raw("train", 100).dataset]
    assert np.array_equal(np.bincount(labels, minlength=10), [10] * 10)  # 6,000 of each class


def test_a_tfds_limit_keeps_every_class_and_the_same_subset():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        source = sources.get_source("cifar10")
        every = sources.tfds._tfds_labels(source, "train")
        assert len(every) == 40 and len(set(every.tolist())) == 10
        full, _ = collect_batches(data.load("cifar10", "train", batch_size=40, shuffle=False, augment=False))
        runs = [collect_batches(data.load("cifar10", "train", batch_size=4, limit=10, shuffle=False,
                                   augment=False, with_index=True)) for _ in range(2)]
    (x, y), (x2, y2) = runs
    assert sorted(y.tolist()) == list(range(10))  # one of each class, whatever the split's order
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(x["image"], x2["image"])
    keep = sources.stratified_positions(every, 10)
    np.testing.assert_array_equal(every[keep], y)
    np.testing.assert_allclose(x["image"], full[keep])  # the kept examples' own images
    assert x["index"].tolist() == list(range(10))  # indices count the kept examples


def test_the_cache_fingerprint_marks_a_stratified_limit():
    info = sources.DatasetInfo("d", 2, (4, 4, 1), {"train": 8}, ["a", "b"], "train", None)
    assert data.data_spec(info, "train", None, None, False, 4, 0)["limit_subset"] == "stratified"
    assert data.data_spec(info, "train", None, None, False, None, 0)["limit_subset"] is None

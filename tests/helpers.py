"""Tiny models and data, and the script runners, shared by the tests."""

import importlib
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.exists(FASHION_MNIST), reason="needs Debian's dataset-fashion-mnist"
)
#: recipe flags of the end-to-end tests: tiny Fashion-MNIST subsets, one epoch, eager steps
TINY = ["--dataset=fashion_mnist", "--train_limit=128", "--test_limit=64", "--batch_size=64",
        "--epochs=1", "--run_eagerly"]


def run_script(path, *args, timeout=600, check=True, env=None):
    """Run the project script `path` (relative to the repo root) with this Python
    and quiet TF logs; with `check`, assert it exited 0 (showing its output's tail)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, path), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_recipe(name, *args):
    """Run `recipes/<name>.py` in this process on its own flag values (so recipes
    and tests can share one TensorFlow start-up); returns what its `run` returns."""
    from absl import flags

    module = importlib.import_module(f"recipes.{name}")
    values = flags.FlagValues()
    module.define_flags(values)
    values([f"{name}.py", *args])
    return module.run(values)


def tiny_cnn(width=4, num_classes=3, input_shape=(8, 8, 1), name="net", batchnorm=True):
    """conv -> (BN) -> relu -> conv -> relu -> GAP -> dense: tappable by name."""
    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(width, 3, padding="same", name="conv1")(inp)
    if batchnorm:
        x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    out = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name=name)


def tiny_data(n=32, input_shape=(8, 8, 1), num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + tuple(input_shape)).astype("float32")
    y = rng.integers(0, num_classes, n).astype("int32")
    return x, y


class CallCounter(keras.layers.Layer):
    """Identity layer that counts how often it is called (traced) per network."""

    counts: dict = {}

    def call(self, x):
        CallCounter.counts[self.name] = CallCounter.counts.get(self.name, 0) + 1
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


def counted_cnn(name, width=4, num_classes=3, input_shape=(8, 8, 1)):
    inp = keras.Input(input_shape)
    x = CallCounter(name=f"{name}_counter")(inp)
    x = keras.layers.Conv2D(width, 3, padding="same", name="conv1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    out = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name=name)


def image_folder(root, classes=3, per_class=10, size=(8, 8), seed=0):
    """An unsplit folder of random RGB PNGs, root/class<c>/<i>.png; returns its
    kdkeras name `folder:<root>` (the last image of each class is held out)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            path = os.path.join(str(root), f"class{c}", f"{i}.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pixels = rng.integers(0, 256, (*size, 3)).astype(np.uint8)
            with open(path, "wb") as f:
                f.write(tf.io.encode_png(pixels).numpy())
    return f"folder:{root}"


FASHION_DIR = "/usr/share/datasets/fashion-mnist"
HAVE_FASHION = os.path.isfile(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))


def collect_batches(ds):
    """Concatenates all batches of a (x, y) dataset into numpy arrays (x a dict of arrays
    when the batches carry one)."""
    xs, ys = [], []
    for x, y in ds:
        xs.append(x), ys.append(y.numpy())
    if isinstance(xs[0], dict):
        return {k: np.concatenate([x[k].numpy() for x in xs]) for k in xs[0]}, np.concatenate(ys)
    return np.concatenate([x.numpy() for x in xs]), np.concatenate(ys)


class StageSpy(keras.callbacks.Callback):
    """Records `parts()` in `seen` as each stage's fit begins (`"stage_<name>_begin"`)
    and ends (`"stage_<name>"`): what a stage trained and what it left alone."""

    def __init__(self, parts):
        super().__init__()
        self.parts, self.seen = parts, {}

    def on_train_begin(self, logs=None):
        self.seen[self.model.name + "_begin"] = self.parts()

    def on_train_end(self, logs=None):
        self.seen[self.model.name] = self.parts()


def same(a, b):
    """Two weight snapshots are equal, array by array."""
    return all(np.array_equal(u, v) for u, v in zip(a, b))


def all_changed(a, b):
    """A non-empty snapshot every array of which differs in the other."""
    return bool(a) and all(not np.array_equal(u, v) for u, v in zip(a, b))


def assert_float32_litert_matches_keras(model, path, n=5, seed=2):
    """Export `model` to a float32 LiteRT file at `path` and run it against Keras on `n`
    random inputs of the model's input shape: the same top-1 on each, logits within 1e-4."""
    from kdkeras import export

    x = np.random.default_rng(seed).random((n, *model.input_shape[1:])).astype("float32")
    path = export.export_tflite(model, path)
    result = export.compare_with_keras(model, path, (x, np.zeros(n, "int32")))
    assert result["num_examples"] == n and result["top1_agreement"] == 1.0
    assert result["max_abs_logit_diff"] < 1e-4, result
    return result

"""Tiny models and data shared by the tests."""

import keras
import numpy as np


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

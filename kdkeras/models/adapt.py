"""Feed a saved model images of another size or channel count."""

from __future__ import annotations

from typing import Sequence

import keras

from kdkeras.data.pipeline import fit_images


def adapt_input(model: keras.Model, shape: Sequence[int]) -> keras.Model:
    """`model` reading images of `shape` (H, W, C): resized and channel-converted
    (greyscale by luminance, grey to RGB by repetition) inside the graph, so a
    teacher saved at one input size reads a student's pipeline of another.
    Returns `model` itself when the shapes already match."""
    own = tuple(model.input_shape[1:])
    if own == tuple(shape):
        return model
    inputs = keras.Input(tuple(shape), name="image")
    fitted = keras.layers.Lambda(lambda x: fit_images(x, own), name="fit_input")(inputs)
    print(f"{model.name}: input {own} adapted to {tuple(shape)}")
    return keras.Model(inputs, model(fitted), name=f"{model.name}_adapted")

"""Convert Keras 3 models to LiteRT (TFLite) flatbuffers.

`tf.lite.TFLiteConverter.from_keras_model` does not understand Keras 3
models, so the conversion goes through a SavedModel written by
`model.export(..., format="tf_saved_model")` and
`tf.lite.TFLiteConverter.from_saved_model`. Several variants of one model
can share that SavedModel (`export_saved_model`, then `saved_model_dir=`).
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import tensorflow as tf

from .batches import iter_batches
from .granularity import WEIGHT_GRANULARITIES, mixed_granularity
from .size import strip_tensor_names

if TYPE_CHECKING:  # keras is imported by callers; only the annotations name it
    import keras

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")


def _representative_examples(
    data: Any, example_rank: int, limit: int
) -> Iterator[np.ndarray]:
    """Yield up to `limit` float32 examples of shape (1, H, W, C) from `data`
    (anything `iter_batches` reads); `example_rank` is the rank of one example
    without its batch dimension, to tell batched from unbatched data."""
    count = 0
    for x, _ in iter_batches(data, None):
        if x.ndim == example_rank:  # unbatched dataset: one example per element
            x = x[None]
        for i in range(x.shape[0]):
            if count >= limit:
                return
            yield x[i:i + 1]
            count += 1


def check_exportable(model: Any) -> None:
    """Refuse what is not a plain inference model: a Distiller (teacher, student and
    methods) exports badly or not at all; its `student` is the network to ship."""
    import keras

    from kdkeras.distiller import Distiller

    if isinstance(model, Distiller):
        raise TypeError(
            "Got a kdkeras.Distiller: export its student, e.g. export_tflite(distiller.student, path). "
            "The Distiller holds the teacher and the methods' training parts too.")
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model to export, got {type(model).__name__}.")


def export_saved_model(model: keras.Model, directory: str) -> str:
    """Write `model`'s inference function as a TF SavedModel in `directory` and
    return it; give it to `export_tflite(saved_model_dir=...)` to convert
    several variants from one export."""
    check_exportable(model)
    directory = os.fspath(directory)
    model.export(directory, format="tf_saved_model", verbose=False)
    return directory


def export_tflite(
    model: keras.Model,
    path: str,
    quantization: str = "float32",
    representative_data: Any = None,
    num_representative: int = 200,
    allow_custom_ops: bool = False,
    strip_names: bool = False,
    saved_model_dir: str | None = None,
    weight_granularity: str = "per_channel",
) -> str:
    """Convert a Keras 3 model to a .tflite file and return its path.

    quantization:
      * "float32": plain conversion, numerically matches Keras.
      * "float16": weights stored as float16 (half the size), float32 I/O.
      * "dynamic": weights int8, activations quantised on the fly; no
        calibration data needed.
      * "int8": full integer model with int8 input and output tensors, for
        integer-only accelerators (Edge TPU, NPUs, MCUs). Needs
        `representative_data` to calibrate the activation ranges.

    Only built-in LiteRT ops are allowed unless `allow_custom_ops` is set, in
    which case TensorFlow select ops (Flex) may be used; such files need a
    runtime with the Flex delegate.

    `strip_names` drops tensor names from the file (`strip_tensor_names`):
    smaller, same outputs, but debuggers and Netron show no names.
    `saved_model_dir` is a SavedModel of `model` already written by
    `export_saved_model`; without it the model is exported to a temporary one.
    `weight_granularity` (int8 only): "per_channel", the converter's scales
    per output channel everywhere, or "mixed", one scale per tensor for 1x1
    convolutions and dense layers (`mixed_granularity`): a smaller file, and
    a small accuracy cost to check with `evaluate_tflite`.
    """
    check_exportable(model)
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"unknown quantization {quantization!r}; "
            f"expected one of {', '.join(repr(q) for q in QUANTIZATIONS)}")
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "quantization='int8' needs representative_data: full-integer "
            "quantisation must observe real activations to choose each "
            "tensor's scale and zero point. Pass a tf.data dataset of (x, y) "
            "or x batches, or a numpy array of input images (a few hundred "
            "training images are enough), or use quantization='dynamic', "
            "which needs no calibration data.")
    if num_representative < 1:
        raise ValueError(f"num_representative must be >= 1, got {num_representative}")
    if weight_granularity not in WEIGHT_GRANULARITIES:
        raise ValueError(
            f"unknown weight_granularity {weight_granularity!r}; expected one of "
            f"{', '.join(repr(g) for g in WEIGHT_GRANULARITIES)}")
    if weight_granularity != "per_channel" and quantization != "int8":
        raise ValueError(
            f"weight_granularity={weight_granularity!r} applies to quantization='int8' only, "
            f"got quantization={quantization!r}")

    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)

    if saved_model_dir is not None:
        saved_model_dir = os.fspath(saved_model_dir)
        if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
            raise ValueError(
                f"saved_model_dir={saved_model_dir!r} holds no saved_model.pb; write it "
                "with kdkeras.export.export_saved_model(model, directory) first.")
    with tempfile.TemporaryDirectory(prefix="kdkeras_savedmodel_") as tmp:
        if saved_model_dir is None:
            saved_model_dir = export_saved_model(model, os.path.join(tmp, "saved_model"))
        flatbuffer = _convert(model, saved_model_dir, quantization, representative_data,
                              num_representative, allow_custom_ops)
    if weight_granularity == "mixed":
        flatbuffer, _ = mixed_granularity(flatbuffer)
    if strip_names:
        flatbuffer = strip_tensor_names(flatbuffer)

    with open(path, "wb") as f:
        f.write(flatbuffer)
    return path


def _convert(model, saved_dir: str, quantization: str, representative_data: Any,
             num_representative: int, allow_custom_ops: bool) -> bytes:
    """Run the LiteRT converter on a SavedModel with `quantization`'s settings."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_dir)

    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        example_rank = len(model.inputs[0].shape) - 1

        def representative_dataset():
            n = 0
            for example in _representative_examples(
                    representative_data, example_rank, num_representative):
                n += 1
                yield [example]
            if n == 0:
                raise ValueError("representative_data yielded no examples")

        converter.representative_dataset = representative_dataset
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    if allow_custom_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops

    return converter.convert()

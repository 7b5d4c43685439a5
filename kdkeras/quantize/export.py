"""Convert a trained fake-quant model to an int8 LiteRT file whose scales are
the ones it trained with: the converter reads each FakeQuantWithMinMaxVars
(PerChannel) op's range as that tensor's quantisation parameters, so no
representative data is needed.
"""

from __future__ import annotations

import os
import tempfile

import keras
import tensorflow as tf

from kdkeras.export.size import strip_tensor_names
from kdkeras.export.tflite import export_saved_model

from .transform import is_qat_model

IO_TYPES = ("int8", "float")


def export_qat_tflite(
    qat_model: keras.Model,
    path: str,
    io: str = "int8",
    *,
    strip_names: bool = False,
    saved_model_dir: str | None = None,
) -> str:
    """Write `qat_model` (from `prepare_qat`, trained) as a full-integer .tflite
    file and return its path.

    `io="int8"`: int8 input and output tensors (integer-only accelerators);
    `io="float"`: float32 input and output with QUANTIZE/DEQUANTIZE at the ends.
    `strip_names` drops tensor names (smaller file). `saved_model_dir`: a
    SavedModel of `qat_model` already written by `export_saved_model`.
    """
    if not is_qat_model(qat_model):
        raise ValueError(
            f"export_qat_tflite needs a fake-quant model; {getattr(qat_model, 'name', qat_model)!r} "
            "has no quantisation layers. Call kdkeras.quantize.prepare_qat(model) first (and train "
            "it), or export a float model with kdkeras.export.export_tflite(..., quantization='int8').")
    if io not in IO_TYPES:
        raise ValueError(f"io={io!r}; expected one of {list(IO_TYPES)}")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kdkeras_qat_") as tmp:
        saved = saved_model_dir or export_saved_model(qat_model, os.path.join(tmp, "saved_model"))
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        # TFLITE_BUILTINS_INT8 would demand a representative dataset: on the SavedModel path the
        # converter checks for one before it has seen the graph's FakeQuant ops.
        if io == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        flatbuffer = converter.convert()
    if strip_names:
        flatbuffer = strip_tensor_names(flatbuffer)
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return path

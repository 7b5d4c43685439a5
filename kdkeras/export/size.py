# Kept hand-written: no package gives a byte breakdown, and flatbuffer_utils.strip_strings also drops the signature defs, which strip_tensor_names keeps for get_signature_runner.
"""Where the bytes of a .tflite file go, and dropping the ones the runtime never reads.

`tflite_size_breakdown` splits a file into tensor data, quantisation
parameters and graph; `strip_tensor_names` removes tensor names (the
converter writes each tensor's fused TF op names, tens of KB for a
MobileNetV2), which only debugging tools read.

Full-integer int8 files store, per output channel of every convolution, a
float32 scale and an int64 zero point for the weights and again for the int32
bias (the LiteRT schema fixes those types). A 3x3 depthwise channel holds 9
int8 weights but about 28 bytes of such parameters, so depthwise-heavy
networks such as MobileNetV2 stay well above a quarter of their float32 size;
this breakdown shows by how much.
"""

from __future__ import annotations

import os

from .flatbuffer import read_model, require_model, write_model

SCALE_BYTES = 4  # float32, per the LiteRT schema
ZERO_POINT_BYTES = 8  # int64, per the LiteRT schema


def strip_tensor_names(flatbuffer: bytes) -> bytes:
    """`flatbuffer` without tensor names, subgraph names or model description.

    Signature definitions are kept (they address tensors by index), so
    `get_signature_runner` still works; tensor details report empty names.
    Raises RuntimeError when TensorFlow's LiteRT schema module is missing.
    """
    model = require_model(flatbuffer, "strip_tensor_names")
    model.description = None
    for subgraph in model.subgraphs:
        subgraph.name = None
        for tensor in subgraph.tensors:
            tensor.name = None
    return write_model(model)


def tflite_size_breakdown(path: str) -> dict | None:
    """Bytes of `path` by kind: tensor data, quantisation parameters, the rest.

    Returns {"file_bytes", "tensor_data_bytes", "quant_param_bytes",
    "quantized_channels", "other_bytes", "tensor_name_bytes"} (other = graph,
    op and tensor metadata, alignment; of which tensor names), or None when
    TensorFlow's schema module is missing.
    """
    with open(os.fspath(path), "rb") as f:
        buf = f.read()
    model = read_model(buf)
    if model is None:
        return None
    data = sum(len(b.data) for b in model.buffers if b.data is not None)
    data += sum(int(b.size or 0) for b in model.buffers)  # data stored outside the flatbuffer
    channels = param_bytes = 0
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            q = tensor.quantization
            if q is None:
                continue
            n_scale = 0 if q.scale is None else len(q.scale)
            n_zero = 0 if q.zeroPoint is None else len(q.zeroPoint)
            n_minmax = sum(0 if v is None else len(v) for v in (q.min, q.max))
            channels += n_scale
            param_bytes += n_scale * SCALE_BYTES + n_zero * ZERO_POINT_BYTES + n_minmax * 4
    names = sum(len(t.name or b"") for subgraph in model.subgraphs for t in subgraph.tensors)
    return {
        "file_bytes": len(buf),
        "tensor_data_bytes": int(data),
        "quant_param_bytes": int(param_bytes),
        "quantized_channels": int(channels),
        "other_bytes": int(len(buf) - data - param_bytes),
        "tensor_name_bytes": int(names),
    }

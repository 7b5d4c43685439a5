# Kept hand-written: ai-edge-quantizer 0.10.0 fits the pins (needs ai-edge-litert==2.3.0) and can make full-int8 files with tensorwise FULLY_CONNECTED, but tells 1x1 from 3x3 CONV_2D only by output-name regex (so this parsing stays) and re-calibrates the float model itself (other activation scales than the converter's), while this rewrites the converter's own int8 file, as tests/test_export.py checks.
"""Per-tensor weights for the 1x1 convolutions of a full-integer LiteRT model.

The converter quantises every convolution's weights per output channel, and
the LiteRT schema stores a float32 scale and an int64 zero point per channel
for the weights and again for the int32 bias: about 24 bytes per channel, on
top of the channel's own weights. For a 1x1 (pointwise) convolution or a
dense layer, whose channels hold few weights each and whose ranges are alike,
one scale for the whole tensor costs little accuracy; depthwise and spatial
convolutions keep theirs (MobileNetV2 with per-tensor depthwise weights falls
from 73% to 30% top-1). `mixed_granularity` rewrites a converted file that way.
"""

from __future__ import annotations

import numpy as np

from .flatbuffer import require_model, schema as flatbuffer_schema, write_model

WEIGHT_GRANULARITIES = ("per_channel", "mixed")


def _buffer_array(model, tensor, dtype) -> np.ndarray:
    data = model.buffers[tensor.buffer].data
    return np.frombuffer(bytes(bytearray(data)), dtype)


def _per_channel_symmetric(quantization) -> bool:
    return (
        quantization is not None
        and quantization.scale is not None
        and len(quantization.scale) > 1
        and quantization.quantizedDimension == 0
        and (quantization.zeroPoint is None or not np.any(quantization.zeroPoint))
    )


def mixed_granularity(flatbuffer: bytes) -> tuple[bytes, int]:
    """Return (`flatbuffer` with per-tensor weights for its 1x1 convolutions and
    fully connected layers, number of layers rewritten).

    Each rewritten filter takes the largest of its channel scales, so no weight
    clips; its int32 bias is re-expressed in `input scale * new scale`, the
    scale the integer kernels expect. Filters shared by several tensors, and
    tensors that are not symmetric int8 per-channel, are left as they are.
    """
    model = require_model(flatbuffer, "mixed_granularity")
    schema = flatbuffer_schema()
    op = schema.BuiltinOperator
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    uses: dict[int, int] = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            uses[tensor.buffer] = uses.get(tensor.buffer, 0) + 1
    rewritten = 0
    for subgraph in model.subgraphs:
        for operator in subgraph.operators:
            code = codes[operator.opcodeIndex]
            if code not in (op.CONV_2D, op.FULLY_CONNECTED):
                continue
            inputs = list(operator.inputs)
            source, weights = subgraph.tensors[inputs[0]], subgraph.tensors[inputs[1]]
            bias = subgraph.tensors[inputs[2]] if len(inputs) > 2 and inputs[2] >= 0 else None
            shape = [int(d) for d in weights.shape]
            if code == op.CONV_2D and shape[1:3] != [1, 1]:
                continue  # spatial convolution: keep per-channel
            if (
                weights.type != schema.TensorType.INT8
                or not _per_channel_symmetric(weights.quantization)
                or uses.get(weights.buffer, 0) != 1
                or source.quantization is None
                or source.quantization.scale is None
                or len(source.quantization.scale) != 1
            ):
                continue
            if bias is not None and (
                bias.type != schema.TensorType.INT32
                or not _per_channel_symmetric(bias.quantization)
                or uses.get(bias.buffer, 0) != 1
            ):
                continue
            scales = np.asarray(weights.quantization.scale, np.float64)
            scale = float(scales.max())
            values = _buffer_array(model, weights, np.int8).reshape(shape).astype(np.float64)
            values *= (scales / scale).reshape([-1] + [1] * (len(shape) - 1))
            quantized = np.clip(np.round(values), -127, 127).astype(np.int8)
            model.buffers[weights.buffer].data = np.frombuffer(quantized.tobytes(), np.uint8)
            weights.quantization.scale = [scale]
            weights.quantization.zeroPoint = [0]
            if bias is not None:
                input_scale = float(source.quantization.scale[0])
                old = _buffer_array(model, bias, np.int32).astype(np.float64)
                old *= np.asarray(bias.quantization.scale, np.float64)
                new = np.round(old / (input_scale * scale)).astype(np.int32)
                model.buffers[bias.buffer].data = np.frombuffer(new.tobytes(), np.uint8)
                bias.quantization.scale = [input_scale * scale]
                bias.quantization.zeroPoint = [0]
            rewritten += 1
    return write_model(model), rewritten

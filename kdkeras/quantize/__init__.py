"""Quantisation-aware distillation: train an int8 student against its teacher.

`prepare_qat(model)` turns a float Keras 3 CNN into its fake-quant twin
(Conv2D/DepthwiseConv2D/Dense with BatchNormalization folded in, int8 weights
and activations simulated); `distill_qat` distils it with any kdkeras method;
`export_qat_tflite` writes the int8 LiteRT file with the trained scales;
`check_int8_kernels` verifies the file holds no float kernel or FakeQuant op.
"""

from .export import IO_TYPES, export_qat_tflite
from .fake_quant import GRANULARITIES, fake_quant_weights
from .check import check_int8_kernels
from .flatten import flatten_model
from .layers import (
    QAT_LAYERS,
    ActivationQuantizer,
    QuantActivation,
    QuantAdd,
    QuantAveragePooling2D,
    QuantConv2D,
    QuantDense,
    QuantDepthwiseConv2D,
    QuantGlobalAveragePooling2D,
    QuantReLU,
)
from .plan import (
    DEFAULT_WEIGHTS,
    WEIGHT_CHOICES,
    WEIGHT_KINDS,
    WEIGHT_PRESETS,
    QATPlan,
    auto_granularity,
    channel_levels,
    plan_qat,
    supported_types,
)
from .transform import calibrate_ranges, is_qat_model, prepare_qat, set_fake_quant

__all__ = [
    "prepare_qat", "plan_qat", "QATPlan", "calibrate_ranges", "is_qat_model", "set_fake_quant",
    "export_qat_tflite", "check_int8_kernels", "distill_qat", "SELF_TEACHER", "fake_quant_weights",
    "IO_TYPES", "GRANULARITIES", "DEFAULT_WEIGHTS", "WEIGHT_KINDS", "WEIGHT_CHOICES", "WEIGHT_PRESETS",
    "auto_granularity", "channel_levels", "flatten_model", "supported_types", "QAT_LAYERS",
    "ActivationQuantizer", "QuantConv2D", "QuantDepthwiseConv2D", "QuantDense", "QuantReLU",
    "QuantActivation", "QuantAdd", "QuantGlobalAveragePooling2D", "QuantAveragePooling2D",
]


def __getattr__(name):
    if name in ("distill_qat", "SELF_TEACHER"):  # the run layer (data, training) only when used
        from . import distill

        return getattr(distill, name)
    raise AttributeError(f"module 'kdkeras.quantize' has no attribute {name!r}")

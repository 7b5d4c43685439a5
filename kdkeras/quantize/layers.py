"""Keras 3 layers that simulate TFLite's int8 arithmetic while training.

Each is a subclass of the float layer it replaces (so `isinstance` checks,
layer names and default taps keep working) plus fake quantisation:
weights symmetric int8 (per channel or per tensor), and an output quantiser
whose range is a moving average of the batch min/max (ranges updated only
with `training=True`; the first batch sets them). A convolution or dense
layer whose output feeds a ReLU/ReLU6 that TFLite fuses into it leaves its
output unquantised (`quantize_output=False`): the activation quantises.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from .fake_quant import GRANULARITIES, fake_quant_activation, fake_quant_weights
from .folding import BN_WEIGHTS, fold

_PACKAGE = "kdkeras.quantize"
DEFAULT_EMA_DECAY = 0.99


def _register(cls):
    return keras.saving.register_keras_serializable(package=_PACKAGE)(cls)


class _OutputRange:
    """Mixin: an output quantiser with ranges tracked by moving averages."""

    #: set False (then call eagerly or re-trace) to run the float arithmetic
    fake_quant_enabled = True

    def _init_range(self, quantize_output: bool = True, ema_decay: float = DEFAULT_EMA_DECAY):
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
        self.quantize_output = bool(quantize_output)
        self.ema_decay = float(ema_decay)
        if self.quantize_output:
            self._add_range_weights()

    def _add_range_weights(self):
        # ReLU, Add, ... are built in __init__, which locks their state: unlock
        # for the three range scalars (created once, here, like any weight).
        locked = getattr(self._tracker, "locked", False)
        if locked:
            self._tracker.unlock()
        try:
            self.range_min = self.add_weight(name="range_min", shape=(), initializer="zeros",
                                             trainable=False)
            self.range_max = self.add_weight(name="range_max", shape=(), initializer="zeros",
                                             trainable=False)
            self.range_count = self.add_weight(name="range_count", shape=(), initializer="zeros",
                                               trainable=False)
        finally:
            if locked:
                self._tracker.lock()

    def _range_config(self) -> dict:
        return {"quantize_output": self.quantize_output, "ema_decay": self.ema_decay}

    def quantize_activation(self, x, training=None):
        """Update the range from `x` when training, then fake-quantise `x`."""
        if not self.quantize_output or not self.fake_quant_enabled:
            return x
        if training:
            batch = ops.stop_gradient(ops.cast(x, "float32"))
            lo, hi = ops.minimum(ops.min(batch), 0.0), ops.maximum(ops.max(batch), 0.0)
            first = ops.equal(self.range_count, 0.0)
            d = self.ema_decay
            self.range_min.assign(ops.where(first, lo, d * self.range_min + (1.0 - d) * lo))
            self.range_max.assign(ops.where(first, hi, d * self.range_max + (1.0 - d) * hi))
            self.range_count.assign(self.range_count + 1.0)
        return ops.cast(fake_quant_activation(x, self.range_min, self.range_max), x.dtype)


@_register
class ActivationQuantizer(_OutputRange, keras.layers.Layer):
    """A quantisation point on its own: the model input, or after an op that
    changes ranges and is not replaced by a quantised subclass."""

    def __init__(self, ema_decay: float = DEFAULT_EMA_DECAY, **kwargs):
        kwargs.pop("quantize_output", None)
        super().__init__(**kwargs)
        self._init_range(True, ema_decay)

    def call(self, inputs, training=None):
        return self.quantize_activation(inputs, training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), **self._range_config()}


class _WeightQuant(_OutputRange):
    """Mixin for kernels: an optional folded BatchNormalization (`bn_epsilon`
    not None: frozen moving statistics, trainable gamma and beta), symmetric
    int8 fake quant of the folded kernel per `weight_quant` (the class's
    `default_weight_quant` when None), and an output quantiser."""

    default_weight_quant = "per_channel"
    _depthwise = False

    def __init__(self, *args, weight_quant: str | None = None, quantize_output: bool = True,
                 ema_decay: float = DEFAULT_EMA_DECAY, bn_epsilon: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        weight_quant = weight_quant or self.default_weight_quant
        if weight_quant not in GRANULARITIES:
            raise ValueError(f"weight_quant must be one of {GRANULARITIES}, got {weight_quant!r}")
        self.weight_quant = weight_quant
        self.bn_epsilon = None if bn_epsilon is None else float(bn_epsilon)
        self._init_range(quantize_output, ema_decay)

    def build(self, input_shape):
        super().build(input_shape)
        if self.bn_epsilon is not None:
            channels = int(np.prod(self.kernel.shape[2:])) if self._depthwise else self.kernel.shape[-1]
            for name, init, trainable in zip(BN_WEIGHTS, ("ones", "zeros", "zeros", "ones"),
                                             (True, True, False, False)):
                setattr(self, name, self.add_weight(name=name, shape=(channels,), initializer=init,
                                                    trainable=trainable))

    def get_config(self):
        return {**super().get_config(), "weight_quant": self.weight_quant,
                "bn_epsilon": self.bn_epsilon, **self._range_config()}

    # Conv and Dense save only kernel and bias (their own quantisation modes);
    # the generic Layer format keeps every variable, ranges included.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def folded_kernel_and_bias(self):
        """(kernel, bias or None) with the BatchNormalization folded in: what the
        int8 file holds before rounding."""
        bias = self.bias if self.use_bias else None
        if self.bn_epsilon is None:
            return self.kernel, bias
        return fold(self.kernel, bias, *(getattr(self, n) for n in BN_WEIGHTS), self.bn_epsilon,
                    depthwise=self._depthwise)

    def quantized_kernel(self, kernel=None):
        """The (folded) kernel as the int8 file will hold it, dequantised."""
        kernel = self.folded_kernel_and_bias()[0] if kernel is None else kernel
        if not self.fake_quant_enabled:
            return kernel
        return fake_quant_weights(kernel, -1 if self.weight_quant == "per_channel" else None)

    def _forward(self, op, inputs, training):
        kernel, bias = self.folded_kernel_and_bias()
        outputs = op(inputs, self.quantized_kernel(kernel))
        if bias is not None:
            outputs = ops.add(outputs, bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return self.quantize_activation(outputs, training)


@_register
class QuantConv2D(_WeightQuant, keras.layers.Conv2D):
    """Conv2D (BatchNormalization folded in) with int8 fake-quant kernel and output."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1:
            raise ValueError(f"{self.name!r}: grouped convolutions (groups={self.groups}) are not supported")

    def call(self, inputs, training=None):
        return self._forward(self.convolution_op, inputs, training)


@_register
class QuantDepthwiseConv2D(_WeightQuant, keras.layers.DepthwiseConv2D):
    """DepthwiseConv2D (BatchNormalization folded in) with int8 fake quant; the
    per-channel weight scales are per output channel (c * multiplier + m), as
    in TFLite's (1, H, W, C * M) depthwise filter."""

    _depthwise = True

    def quantized_kernel(self, kernel=None):
        kernel = self.folded_kernel_and_bias()[0] if kernel is None else kernel
        if not self.fake_quant_enabled or self.weight_quant == "per_tensor":
            return super().quantized_kernel(kernel)
        h, w, c, m = kernel.shape
        flat = ops.reshape(kernel, (1, h, w, c * m))  # TFLite's depthwise filter layout
        return ops.reshape(fake_quant_weights(flat, -1), (h, w, c, m))

    def call(self, inputs, training=None):
        def depthwise(x, kernel):
            return ops.depthwise_conv(x, kernel, strides=self.strides, padding=self.padding,
                                      dilation_rate=self.dilation_rate, data_format=self.data_format)

        return self._forward(depthwise, inputs, training)


@_register
class QuantDense(_WeightQuant, keras.layers.Dense):
    """Dense (BatchNormalization folded in) with int8 fake-quant kernel and output."""

    default_weight_quant = "per_tensor"

    def call(self, inputs, training=None):
        return self._forward(ops.matmul, inputs, training)


def _quantized_subclass(base):
    """`base` (a weightless layer) whose output is a quantisation point."""

    class Quantized(_OutputRange, base):
        def __init__(self, *args, quantize_output: bool = True,
                     ema_decay: float = DEFAULT_EMA_DECAY, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_range(quantize_output, ema_decay)

        def call(self, inputs, training=None):
            return self.quantize_activation(super().call(inputs), training)

        def get_config(self):
            return {**super().get_config(), **self._range_config()}

    Quantized.__name__ = Quantized.__qualname__ = f"Quant{base.__name__}"
    Quantized.__doc__ = f"{base.__name__} whose output is quantised (a TFLite quantisation point)."
    return _register(Quantized)


QuantReLU = _quantized_subclass(keras.layers.ReLU)
QuantActivation = _quantized_subclass(keras.layers.Activation)
QuantAdd = _quantized_subclass(keras.layers.Add)
QuantGlobalAveragePooling2D = _quantized_subclass(keras.layers.GlobalAveragePooling2D)
QuantAveragePooling2D = _quantized_subclass(keras.layers.AveragePooling2D)

#: every layer class this package adds (for custom_objects and checks)
QAT_LAYERS = (ActivationQuantizer, QuantConv2D, QuantDepthwiseConv2D, QuantDense, QuantReLU,
              QuantActivation, QuantAdd, QuantGlobalAveragePooling2D, QuantAveragePooling2D)

"""The fake-quant arithmetic QAT layers share: symmetric int8 weights and
activation ranges tracked by moving averages of batch min/max.

Both go through `keras.quantizers.fake_quant_with_min_max_vars`, which on the
TensorFlow backend emits `FakeQuantWithMinMaxVars(PerChannel)`: the op the
TFLite converter turns into quantisation parameters, and whose gradient is
straight-through inside the range.
"""

from __future__ import annotations

import keras
from keras import ops

#: weight granularities a layer kind accepts
GRANULARITIES = ("per_channel", "per_tensor")
_EPS = 1e-8


def weight_range(kernel, axis: int | None):
    """Symmetric range (-m, m) of `kernel`: m = max |w| per channel along `axis`
    (None: over the whole tensor), no gradient (the range follows the weights)."""
    absolute = ops.abs(ops.stop_gradient(kernel))
    if axis is None:
        m = ops.max(absolute)
    else:
        axis = axis % len(kernel.shape)
        reduce = tuple(i for i in range(len(kernel.shape)) if i != axis)
        m = ops.max(absolute, axis=reduce)
    m = ops.maximum(m, _EPS)
    return -m, m


def fake_quant_weights(kernel, axis: int | None):
    """`kernel` through symmetric narrow-range int8 (-127..127, scale m/127),
    per channel along `axis` or per tensor (`axis=None`)."""
    lo, hi = weight_range(kernel, axis)
    return keras.quantizers.fake_quant_with_min_max_vars(
        kernel, lo, hi, num_bits=8, narrow_range=True, axis=axis)


def fake_quant_activation(x, range_min, range_max):
    """`x` through asymmetric int8 on [range_min, range_max] (widened to hold 0,
    as TFLite's zero point must be representable)."""
    lo = ops.minimum(ops.convert_to_tensor(range_min), 0.0)
    hi = ops.maximum(ops.maximum(ops.convert_to_tensor(range_max), 0.0), lo + 1e-6)
    return keras.quantizers.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8, narrow_range=False)

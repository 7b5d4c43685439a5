"""BatchNormalization folded into the convolution or dense layer before it, the
way the TFLite converter folds it, with the moving statistics:
kernel * gamma / sqrt(var + eps), bias = beta + (bias - mean) * gamma / sqrt(var + eps).

QAT layers fold on the fly in every step (the statistics frozen, gamma, beta
and the kernel trained as in the float model), so the optimiser sees the
float model's parameters while the forward pass computes what the int8 file
will: the folded kernel, fake-quantised.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

BN_WEIGHTS = ("bn_gamma", "bn_beta", "bn_mean", "bn_variance")


def bn_weights(bn: keras.layers.BatchNormalization) -> list[np.ndarray]:
    """[gamma, beta, moving mean, moving variance] of `bn` (gamma 1 / beta 0
    when it has no scale / centre)."""
    mean = keras.ops.convert_to_numpy(bn.moving_mean)
    gamma = keras.ops.convert_to_numpy(bn.gamma) if bn.scale else np.ones_like(mean)
    beta = keras.ops.convert_to_numpy(bn.beta) if bn.center else np.zeros_like(mean)
    return [gamma, beta, mean, keras.ops.convert_to_numpy(bn.moving_variance)]


def fold(kernel, bias, gamma, beta, mean, variance, epsilon: float, depthwise: bool = False):
    """(kernel, bias) of the layer followed by the BatchNormalization in inference mode.

    The output channel is the kernel's last axis, except for a depthwise kernel
    (H, W, C, M), whose output channel c * M + m is (c, m). `bias` may be None.
    """
    scale = gamma * ops.rsqrt(variance + epsilon)
    if depthwise:
        folded = kernel * ops.reshape(scale, (kernel.shape[2], kernel.shape[3]))
    else:
        folded = kernel * scale
    shift = beta - mean * scale if bias is None else beta + (bias - mean) * scale
    return folded, shift

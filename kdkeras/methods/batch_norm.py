"""BatchNormalization for the methods' own parts (connectors, ReviewKD's ABF).

Keras 3 trains BatchNormalization op by op (moments, then the normalisation):
on a CPU its forward and backward pass over a (64, 32, 32, 64) map take about
twice what TensorFlow's fused kernel takes. A method's connector sits on the
student's largest maps, so that cost shows in every step. `MapBatchNorm` is
Keras' layer with the same variables, arguments, inference path and moving
statistics, whose training pass on a 4-D NHWC map runs the fused kernel.
"""

from __future__ import annotations

import keras
from keras import ops


def _fusable(layer: keras.layers.BatchNormalization, inputs, mask) -> bool:
    """Whether Keras' training pass equals the fused kernel's here: TensorFlow,
    a 4-D map normalised over its last axis, per replica, no mask, no renorm."""
    return (keras.backend.backend() == "tensorflow" and mask is None and len(inputs.shape) == 4
            and layer.axis in (-1, 3) and not layer.synchronized and not layer.renorm)


@keras.saving.register_keras_serializable(package="kdkeras")
class MapBatchNorm(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training pass on a 4-D NHWC map runs
    TensorFlow's fused batch-norm kernel (about 2x faster on a CPU, forward and
    backward); the moving statistics take the batch's biased variance, as Keras'
    do. Anything else (inference, other ranks or axes, masks, renorm, synchronised
    statistics, another backend) is Keras' own path."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and _fusable(self, inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # only on the TensorFlow backend (`_fusable`)

        x = ops.cast(inputs, "float32")  # as Keras: statistics in float32 under mixed precision
        channels = x.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,), "float32")
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,), "float32")
        y, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        # The kernel returns the Bessel-corrected variance: back to the biased one Keras keeps.
        count = ops.cast(ops.prod(ops.shape(x)[:-1]), "float32")
        variance = ops.where(count > 1.0, unbiased * (count - 1.0) / ops.maximum(count, 1.0), 0.0)
        momentum = self.momentum
        self.moving_mean.assign(ops.cast(self.moving_mean, "float32") * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(
            ops.cast(self.moving_variance, "float32") * momentum + variance * (1.0 - momentum))
        return ops.cast(y, self.compute_dtype)

"""MapBatchNorm (methods/batch_norm.py): its fused training pass gives what Keras'
BatchNormalization gives (outputs, gradients, moving statistics) on 4-D maps, with
and without affine parameters, under mixed precision, and falls back elsewhere."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdkeras.methods.batch_norm import MapBatchNorm

RNG = np.random.default_rng(5)


def pair(shape, dtype="float32", **kwargs):
    """A Keras BN and a MapBatchNorm with the same arguments and parameters."""
    layers = [cls(momentum=0.9, epsilon=1e-5, dtype=dtype, **kwargs)
              for cls in (keras.layers.BatchNormalization, MapBatchNorm)]
    c = shape[-1]
    for layer in layers:
        layer.build(shape)
    for name, values in (("gamma", RNG.uniform(0.5, 2, c)), ("beta", RNG.normal(0, 1, c)),
                         ("moving_mean", RNG.normal(0, 1, c)), ("moving_variance", RNG.uniform(0.5, 2, c))):
        if getattr(layers[0], name) is not None:
            for layer in layers:
                getattr(layer, name).assign(values.astype("float32"))
    return layers


def step(layer, x, w):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, "float32") ** 2 * w)
    grads = tape.gradient(loss, [x, *layer.trainable_variables])
    return [np.asarray(v, "float64") for v in (y, *grads)]


@pytest.mark.parametrize("shape,affine", [((6, 5, 4, 3), True), ((6, 5, 4, 3), False), ((2, 1, 1, 7), True),
                                          ((6, 3), True)])
def test_training_pass_matches_keras_batch_normalization(shape, affine):
    keras_bn, ours = pair(shape, center=affine, scale=affine)
    initial_mean = np.asarray(ours.moving_mean)
    x = tf.constant(RNG.normal(1.0, 3.0, shape).astype("float32"))
    w = tf.constant(RNG.normal(size=shape).astype("float32"))
    for _ in range(2):  # two steps: the moving statistics compound
        for want, got in zip(step(keras_bn, x, w), step(ours, x, w)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(np.asarray(getattr(ours, name)), np.asarray(getattr(keras_bn, name)),
                                   rtol=1e-5, atol=1e-6)
    # the statistics moved from where they started (both layers' updates are compared above)
    assert not np.allclose(np.asarray(ours.moving_mean), initial_mean)


def test_inference_uses_the_moving_statistics_as_keras_does():
    keras_bn, ours = pair((4, 3, 3, 5))
    x = tf.constant(RNG.normal(size=(4, 3, 3, 5)).astype("float32"))
    np.testing.assert_allclose(ours(x, training=False), keras_bn(x, training=False), rtol=1e-6, atol=1e-6)


def test_mixed_precision_computes_in_float32_and_returns_the_compute_dtype():
    keras_bn, ours = pair((8, 4, 4, 3), dtype="mixed_float16")
    x = tf.constant(RNG.normal(size=(8, 4, 4, 3)).astype("float16"))
    got, want = ours(x, training=True), keras_bn(x, training=True)
    assert got.dtype == tf.float16 and ours.moving_variance.dtype == "float32"
    np.testing.assert_allclose(np.asarray(got, "float32"), np.asarray(want, "float32"), atol=2e-3)


def test_config_round_trips_to_the_same_class():
    layer = MapBatchNorm(momentum=0.8, epsilon=1e-3, center=False, name="bn")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is MapBatchNorm
    assert (again.momentum, again.epsilon, again.center) == (0.8, 1e-3, False)

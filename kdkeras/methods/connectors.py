"""Small trainable adapters that feature methods put between the two networks.

Each is a Keras layer built from the tapped shapes in a method's
`build_parts`; it trains with the student, is saved with the Distiller and
never becomes part of the exported student. BatchNormalization uses PyTorch's
defaults (momentum 0.1 there, 0.9 here; epsilon 1e-5), as the reference code.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
from keras import ops

from kdkeras.methods.batch_norm import MapBatchNorm
from kdkeras.methods.features import flatten, l2_normalize

_BN = {"momentum": 0.9, "epsilon": 1e-5}


def _register(cls):
    return keras.saving.register_keras_serializable(package="kdkeras")(cls)


def _conv(filters: int, kernel, name: str, strides=1, padding="same", use_bias=True):
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer="he_normal",
        name=name,
    )


def _spatial(shape) -> tuple[int, int]:
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise ValueError(
            f"Connectors need 4-D feature maps (B, H, W, C) with known H and W; got {shape}."
        )
    return int(shape[1]), int(shape[2])


@_register
class ConvRegressor(keras.layers.Layer):
    """FitNet's regressor: conv + BN mapping a map to `channels` at `size`.

    Equal sizes use a 3x3 conv; a student map `k` times larger a 3x3 conv of
    stride `k`; `k` times smaller a transposed conv of stride `k`; any other
    larger size a "valid" conv whose kernel absorbs the difference.
    """

    def __init__(self, channels: int, size: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.size = tuple(int(v) for v in size)

    def build(self, input_shape):
        (h, w), (th, tw) = _spatial(input_shape), self.size
        if (h, w) == (th, tw):
            self.conv = _conv(self.channels, 3, "conv")
        elif h % th == 0 and w % tw == 0:
            self.conv = _conv(self.channels, 3, "conv", strides=(h // th, w // tw))
        elif th % h == 0 and tw % w == 0:
            sh, sw = th // h, tw // w
            self.conv = keras.layers.Conv2DTranspose(
                self.channels,
                (2 * sh, 2 * sw),
                strides=(sh, sw),
                padding="same",
                kernel_initializer="he_normal",
                name="conv",
            )
        elif h >= th and w >= tw:
            self.conv = _conv(self.channels, (1 + h - th, 1 + w - tw), "conv", padding="valid")
        else:
            raise ValueError(
                f"Cannot regress a {h}x{w} map to {th}x{tw}: sizes must be equal, "
                "integer multiples, or the student's larger in both dimensions."
            )
        self.bn = MapBatchNorm(name="bn", **_BN)
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, x, training=False):
        return self.bn(self.conv(x), training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "size": list(self.size)}


@_register
class Connector1x1(keras.layers.Layer):
    """1x1 conv (no bias) + BN: maps a map's channels to `channels` (AB)."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        # He init on fan-out, as the AB reference initialises its connectors.
        self.conv = keras.layers.Conv2D(
            self.channels,
            1,
            use_bias=False,
            kernel_initializer=keras.initializers.VarianceScaling(
                2.0, "fan_out", "untruncated_normal"
            ),
            name="conv",
        )
        self.bn = MapBatchNorm(name="bn", **_BN)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build((*tuple(input_shape)[:-1], self.channels))

    def call(self, x, training=False):
        return self.bn(self.conv(x), training=training)

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@_register
class LinearEmbed(keras.layers.Layer):
    """Flatten, Dense to `dim`, L2-normalise each row (CC, CRD embeddings)."""

    def __init__(self, dim: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.dense = keras.layers.Dense(self.dim, name="dense")

    def build(self, input_shape):
        self.dense.build((input_shape[0], math.prod(input_shape[1:])))

    def call(self, x):
        return l2_normalize(self.dense(flatten(x)), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


@_register
class VIDRegressor(keras.layers.Layer):
    """VID's Gaussian: mean `mu(x)` by three 1x1 convs with ReLU between, and a
    per-channel variance `softplus(log_scale) + eps` that starts at `init_variance`."""

    def __init__(
        self,
        channels: int,
        mid_channels: int | None = None,
        init_variance: float = 5.0,
        eps: float = 1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.mid_channels = int(mid_channels or channels)
        self.init_variance = float(init_variance)
        self.eps = float(eps)
        self.convs = [
            _conv(self.mid_channels, 1, "conv1", use_bias=False),
            _conv(self.mid_channels, 1, "conv2", use_bias=False),
            _conv(self.channels, 1, "conv3", use_bias=False),
        ]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = (*shape[:-1], conv.filters)
        start = math.log(math.expm1(self.init_variance - self.eps))
        self.log_scale = self.add_weight(
            shape=(self.channels,),
            initializer=keras.initializers.Constant(start),
            name="log_scale",
        )

    def call(self, x):
        x = ops.relu(self.convs[0](x))
        x = ops.relu(self.convs[1](x))
        return self.convs[2](x)

    def variance(self):
        """The per-channel variance, shape (channels,)."""
        return ops.softplus(ops.cast(self.log_scale, "float32")) + self.eps

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.channels)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "mid_channels": self.mid_channels,
            "init_variance": self.init_variance,
            "eps": self.eps,
        }


def _conv_stack(channels: Sequence[int], prefix: str, use_bn: bool) -> list:
    layers = []
    for i, c in enumerate(channels, start=1):
        layers.append(_conv(c, 3, f"{prefix}_conv{i}"))
        if use_bn:
            layers.append(MapBatchNorm(name=f"{prefix}_bn{i}", **_BN))
        layers.append(keras.layers.LeakyReLU(0.1, name=f"{prefix}_lrelu{i}"))
    return layers


def _run(layers, x, training):
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            x = layer(x, training=training)
        else:
            x = layer(x)
    return x


def _build_stack(layers, shape):
    shape = tuple(shape)
    for layer in layers:
        layer.build(shape)
        shape = layer.compute_output_shape(shape)
    return shape


@_register
class Paraphraser(keras.layers.Layer):
    """FT's paraphraser: a 3x3 conv autoencoder of the teacher's map whose
    bottleneck (`encode`) has `int(channels * factor_rate)` channels."""

    def __init__(self, channels: int, factor_rate: float = 0.5, use_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.factor_rate = float(factor_rate)
        self.use_bn = bool(use_bn)
        k = factor_channels(self.channels, self.factor_rate)
        self.encoder = _conv_stack([self.channels, k, k], "enc", self.use_bn)
        self.decoder = _conv_stack([k, self.channels, self.channels], "dec", self.use_bn)

    def build(self, input_shape):
        _build_stack(self.decoder, _build_stack(self.encoder, input_shape))

    def encode(self, x, training=False):
        """The teacher's factor."""
        return _run(self.encoder, x, training)

    def decode(self, factor, training=False):
        """The map rebuilt from a factor."""
        return _run(self.decoder, factor, training)

    def call(self, x, training=False):
        """The reconstruction of `x` through the factor."""
        return self.decode(self.encode(x, training), training)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "factor_rate": self.factor_rate,
            "use_bn": self.use_bn,
        }


@_register
class Translator(keras.layers.Layer):
    """FT's translator: three 3x3 conv + BN + LeakyReLU from the student's map
    to a factor of `channels` channels (the paraphraser's bottleneck)."""

    def __init__(self, channels: int, use_bn: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.use_bn = bool(use_bn)
        self.stack = None

    def build(self, input_shape):
        self.stack = _conv_stack(
            [int(input_shape[-1]), self.channels, self.channels], "tr", self.use_bn
        )
        _build_stack(self.stack, input_shape)

    def call(self, x, training=False):
        return _run(self.stack, x, training)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "use_bn": self.use_bn}


@_register
class Adapter3x3(keras.layers.Layer):
    """3x3 conv (with bias) to `channels`, optionally + BN and an activation:
    KTA's feature adapter (BN + ReLU) and the affinity adapters (conv alone)."""

    def __init__(self, channels: int, use_bn: bool = False, activation: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.use_bn = bool(use_bn)
        self.activation = activation
        self.conv = _conv(self.channels, 3, "conv")
        self.bn = MapBatchNorm(name="bn", **_BN) if self.use_bn else None
        self.act = keras.activations.get(activation) if activation else None

    def build(self, input_shape):
        self.conv.build(input_shape)
        if self.bn is not None:
            self.bn.build((*tuple(input_shape)[:-1], self.channels))

    def call(self, x, training=False):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, training=training)
        return self.act(x) if self.act is not None else x

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "use_bn": self.use_bn,
                "activation": self.activation}


def factor_channels(channels: int, factor_rate: float) -> int:
    """FT's factor width: `int(channels * factor_rate)`, at least 1."""
    return max(1, int(channels * factor_rate))


@_register
class LinearBN(keras.layers.Layer):
    """Flatten, Dense to `units`, BatchNorm1d: SRD's projector (BN without affine
    parameters, epsilon 1e-4) and PAD's variance estimator (BN with them)."""

    def __init__(self, units: int, affine: bool = True, epsilon: float = 1e-5, use_dense: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.affine = bool(affine)
        self.epsilon = float(epsilon)
        self.use_dense = bool(use_dense)
        self.dense = keras.layers.Dense(self.units, name="dense") if self.use_dense else None
        self.bn = keras.layers.BatchNormalization(
            momentum=_BN["momentum"], epsilon=self.epsilon, center=self.affine, scale=self.affine, name="bn")

    def build(self, input_shape):
        flat = (input_shape[0], math.prod(input_shape[1:]))
        if self.dense is not None:
            self.dense.build(flat)
        elif flat[-1] != self.units:
            raise ValueError(f"LinearBN(use_dense=False) normalises {self.units} features, got shape {input_shape}.")
        self.bn.build((input_shape[0], self.units))

    def call(self, x, training=False):
        x = flatten(x)
        if self.dense is not None:
            x = self.dense(x)
        return self.bn(x, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "affine": self.affine,
                "epsilon": self.epsilon, "use_dense": self.use_dense}

"""Knowledge review (ReviewKD): each student stage, fused with the deeper ones, matches its teacher stage.

Chen, Liu, Zhao and Jia (CVPR 2021), as mdistiller's ReviewKD distiller computes it
(the loss is torchdistill's HierarchicalContextLoss): attention-based fusion modules
(`ABF`) run along a review path from the student's deepest tap to its shallowest, each
mixing its own stage with the fused result of the deeper ones, and every fused map is
compared with the teacher's map of that stage by the hierarchical context loss (`hcl_loss`:
an MSE on the map and on its 4x4, 2x2 and 1x1 average pools, weights halving).
Formula, taps and defaults: docs/methods.md.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
from keras import ops

from kdkeras import tap_detection
from kdkeras.methods.base import StepContext, as_float32, epoch_warmup, is_training
from kdkeras.methods.batch_norm import MapBatchNorm
from kdkeras.methods.features import FeatureMethod, pool_to
from kdkeras.methods.registry import register_method
from kdkeras.search_space import Float

#: the pooled sizes of the hierarchical context loss, each level weighted half the previous one
HCL_LEVELS = (4, 2, 1)
# PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 here), as the reference trains
_BN = {"momentum": 0.9, "epsilon": 1e-5}


def resize_nearest(x, size: Sequence[int]):
    """Nearest-neighbour resize of an NHWC map to `size`, as PyTorch's
    `interpolate(mode="nearest")`: output row `i` reads input row `floor(i * H / H_out)`
    (TF's half-pixel nearest picks other rows when shrinking)."""
    (h, w), (th, tw) = x.shape[1:3], tuple(int(v) for v in size)
    if (h, w) == (th, tw):
        return x
    if th % h == 0 and tw % w == 0:  # k-fold upsampling: each row repeated k times (cheap to differentiate)
        return ops.repeat(ops.repeat(x, th // h, axis=1), tw // w, axis=2)
    if h % th == 0 and w % tw == 0:  # k-fold shrinking: every k-th row from the first
        return x[:, :: h // th, :: w // tw]
    x = ops.take(x, [(i * h) // th for i in range(th)], axis=1)
    return ops.take(x, [(j * w) // tw for j in range(tw)], axis=2)


def as_map(x):
    """A tapped tensor as an NHWC map: a (B, C) vector (the pooled feature) becomes (B, 1, 1, C)."""
    if len(x.shape) == 4:
        return x
    return ops.reshape(x, (-1, 1, 1, math.prod(x.shape[1:])))


def _pool(x, level: int):
    """Average-pool an NHWC map to `level x level`: one pooling op when the size divides
    (far cheaper to differentiate on CPU than a 6-D reduce), `pool_to` otherwise."""
    h, w = x.shape[1:3]
    if (h, w) != (level, level) and h % level == 0 and w % level == 0:
        return ops.average_pool(x, (h // level, w // level), strides=(h // level, w // level), padding="valid")
    return pool_to(x, (level, level))


def hcl_loss(student_maps: Sequence, teacher_maps: Sequence, levels: Sequence[int] = HCL_LEVELS):
    """The hierarchical context loss, summed over map pairs of equal shapes (NHWC).

    Per pair: `(mse(s, t) + sum_k 2^-k mse(pool_l(s), pool_l(t))) / (1 + sum_k 2^-k)`
    over the levels `l` (k = 1, 2, ...) smaller than the map's height, `pool_l` the
    average pool to l x l, `mse` the mean over every element.
    """
    total = 0.0
    for s, t in zip(student_maps, teacher_maps):
        # Average pooling is linear: the pooled difference is the difference of the pools;
        # a level whose blocks tile an exact block pool of the map pools that pool instead.
        diff = as_float32(s) - as_float32(t)
        loss, weight, norm, block = ops.mean(ops.square(diff)), 1.0, 1.0, diff
        for level in levels:
            if level >= diff.shape[1]:
                continue
            weight /= 2.0
            exact = not (diff.shape[1] % level or diff.shape[2] % level)
            reuse = exact and not (block.shape[1] % level or block.shape[2] % level)
            source = _pool(block if reuse else diff, level)
            block = source if exact else block
            loss = loss + weight * ops.mean(ops.square(source))
            norm += weight
        total = total + loss / norm
    return total


def _conv(filters: int, kernel: int, name: str, **kwargs):
    # The reference's kaiming_uniform_(a=1): uniform with bound sqrt(3 / fan_in).
    init = keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")
    return keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, kernel_initializer=init,
                               name=name, **kwargs)


@keras.saving.register_keras_serializable(package="kdkeras")
class ABF(keras.layers.Layer):
    """ReviewKD's attention-based fusion of one student stage with the deeper ones.

    `x' = BN(conv1x1(x))` (to `mid_channels`); with `fuse`, the deeper stages' fused map
    `r` is resized (nearest) to `x'`'s size and `x' = x' * a_0 + r * a_1`, the two
    attention maps `a = sigmoid(conv1x1([x', r]))`; `x'` is resized to `size` (the
    teacher's) and the layer returns `(BN(conv3x3(x')), x')`: the map compared with the
    teacher's (its channels) and the fused map handed to the next, shallower stage.
    """

    def __init__(self, mid_channels: int, out_channels: int, fuse: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.mid_channels = int(mid_channels)
        self.out_channels = int(out_channels)
        self.fuse = bool(fuse)
        self.conv1 = _conv(self.mid_channels, 1, "conv1")
        self.bn1 = MapBatchNorm(name="bn1", **_BN)
        self.conv2 = _conv(self.out_channels, 3, "conv2")
        self.bn2 = MapBatchNorm(name="bn2", **_BN)
        self.att_conv = None
        if self.fuse:
            # PyTorch's default Conv2d init: kernel and bias uniform within 1 / sqrt(fan_in).
            bound = 1.0 / math.sqrt(2 * self.mid_channels)
            self.att_conv = keras.layers.Conv2D(
                2, 1, kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
                bias_initializer=keras.initializers.RandomUniform(-bound, bound), name="att_conv")

    def build(self, input_shape):
        batch = input_shape[0]
        mid = (batch, None, None, self.mid_channels)
        self.conv1.build(input_shape)
        self.bn1.build(mid)
        if self.att_conv is not None:
            self.att_conv.build((batch, None, None, 2 * self.mid_channels))
        self.conv2.build(mid)
        self.bn2.build((batch, None, None, self.out_channels))

    def call(self, x, residual=None, size=None, training=False):
        x = self.bn1(self.conv1(x), training=training)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError(f"ABF {self.name!r} fuses a deeper stage: give its fused map as `residual`.")
            x = self._fuse(x, ops.cast(residual, x.dtype))
        if size is not None:
            x = resize_nearest(x, size)
        return self.bn2(self.conv2(x), training=training), x

    def _fuse(self, x, residual):
        """`x * a_0 + up(r) * a_1`, `a = sigmoid(conv1x1([x, up(r)]))`. The 1x1 conv splits into
        its `x` and `r` halves, and the `r` half is applied before the nearest upsampling
        (they commute), which spares a concatenation and half the conv at the larger size."""
        kernel = ops.cast(self.att_conv.kernel, x.dtype)[0, 0]  # (2 * mid, 2)
        mid, size = self.mid_channels, x.shape[1:3]
        logits_x = ops.matmul(x, kernel[:mid]) + ops.cast(self.att_conv.bias, x.dtype)
        logits_r = resize_nearest(ops.matmul(residual, kernel[mid:]), size)
        a = ops.sigmoid(logits_x + logits_r)
        return x * a[..., 0:1] + resize_nearest(residual, size) * a[..., 1:2]

    def get_config(self):
        return {**super().get_config(), "mid_channels": self.mid_channels, "out_channels": self.out_channels,
                "fuse": self.fuse}


def _map_shape(name: str, shape) -> tuple:
    """The NHWC shape a tap is read as (a (B, C) vector as (B, 1, 1, C)); others refused."""
    shape = tuple(shape)
    if len(shape) == 4 and None not in shape[1:]:
        return shape
    if len(shape) == 2 and shape[1] is not None:
        return (shape[0], 1, 1, shape[1])
    raise ValueError(
        f"ReviewKD reads NHWC stage maps of known size or (B, C) pooled features, but tap {name!r} has "
        f"shape {shape}. Tap stage outputs and the pre-logit feature.")


@register_method("reviewkd")
class ReviewKD(FeatureMethod):
    """Chen et al. (CVPR 2021), knowledge review, on every stage and the pooled feature.

    With the student's taps `s_1..s_n` and the teacher's `t_1..t_n` ordered shallow to
    deep, `ABF_n` maps `s_n` alone and each `ABF_i` (i < n) fuses `s_i` with the fused
    map of `ABF_{i+1}`; the term is `w(e) * hcl_loss([o_1..o_n], [t_1..t_n])`, with
    `o_i` at `t_i`'s size and channels and the warm-up `w(e) = min((e + 1) / warmup, 1)`
    as DKD's. The ABF modules (middle width `min(max_mid_channels, channels of s_n)`)
    train with the student; the teacher's maps are read only.

    Default taps: the student's stage outputs, the teacher's pre-activation stage
    outputs (as mdistiller reads them), each followed by the pre-logit pooled feature
    (`pooled=False` leaves it out); lists of different lengths pair deepest-first.

    Example:

    >>> import numpy as np
    >>> f = np.ones((2, 4, 4, 3), "float32")
    >>> float(hcl_loss([f], [f]))
    0.0
    """

    #: mdistiller's CIFAR-100 config: CE 1, ReviewKD 1, warm-up over 20 of 240 epochs
    default_weight = 1.0
    default_student_loss_weight = 1.0
    search_space = {"warmup_fraction": Float(0.01, 0.5)}
    #: the recipes' warm-up: the published 20 of 240 epochs as a twelfth of any run
    run_length_defaults = {"warmup_fraction": 20 / 240}
    run_length_unless = ("warmup_epochs", "warmup_fraction")

    def __init__(
        self,
        warmup_epochs: int = 20,
        warmup_fraction: float | None = None,
        max_mid_channels: int = 512,
        pooled: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"ReviewKD warmup_epochs must be an integer >= 0, got {warmup_epochs!r}.")
        if warmup_fraction is not None and not 0.0 < float(warmup_fraction) <= 1.0:
            raise ValueError(f"ReviewKD warmup_fraction must be in (0, 1] or None, got {warmup_fraction!r}.")
        if isinstance(max_mid_channels, bool) or not isinstance(max_mid_channels, int) or max_mid_channels < 1:
            raise ValueError(f"ReviewKD max_mid_channels must be an integer >= 1, got {max_mid_channels!r}.")
        if not isinstance(pooled, bool):
            raise ValueError(f"ReviewKD pooled must be True or False, got {pooled!r}.")
        self.warmup_epochs = warmup_epochs
        self.warmup_fraction = None if warmup_fraction is None else float(warmup_fraction)
        self.max_mid_channels = max_mid_channels
        self.pooled = pooled
        self.abfs = []

    def default_taps(self, model, role):
        stages = (tap_detection.preact_stage_outputs if role == "teacher" else tap_detection.stage_outputs)(model)
        return stages + ([tap_detection.embedding_layer(model)] if self.pooled else [])

    def build_parts(self, teacher_shapes, student_shapes):
        teacher, student = self.tap_names()
        t_shapes = [_map_shape(n, teacher_shapes[n]) for n in teacher]
        s_shapes = [_map_shape(n, student_shapes[n]) for n in student]
        mid = min(self.max_mid_channels, int(s_shapes[-1][-1]))
        abfs = []
        for i, (t_shape, s_shape) in enumerate(zip(t_shapes, s_shapes)):
            abf = ABF(mid, t_shape[-1], fuse=i < len(s_shapes) - 1, name=f"abf_{i}")
            abf.build(s_shape)
            abfs.append(abf)
        self.abfs = abfs

    def review(self, student_maps: Sequence, sizes: Sequence, training: bool = False) -> list:
        """The ABF outputs `[o_1..o_n]` (shallow to deep) of the student's maps, run
        from the deepest; `sizes` are the teacher maps' spatial sizes."""
        outputs, residual = [None] * len(student_maps), None
        for i in reversed(range(len(student_maps))):
            out, residual = self.abfs[i](student_maps[i], residual, size=tuple(sizes[i]), training=training)
            outputs[i] = as_float32(out)
        return outputs

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        teacher_names, student_names = self.tap_names()
        targets = [as_map(as_float32(teacher[n])) for n in teacher_names]
        maps = [as_map(student[n]) for n in student_names]
        outputs = self.review(maps, [t.shape[1:3] for t in targets], is_training(context))
        return epoch_warmup(context, self.warmup_epochs, self.warmup_fraction) * hcl_loss(outputs, targets)

    def get_config(self):
        return {
            **super().get_config(),
            "warmup_epochs": self.warmup_epochs,
            "warmup_fraction": self.warmup_fraction,
            "max_mid_channels": self.max_mid_channels,
            "pooled": self.pooled,
        }

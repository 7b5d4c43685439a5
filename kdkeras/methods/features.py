"""What the feature-map (hint) and relational methods share.

`FeatureMethod` pairs the teacher's and the student's tap lists and hands
`compute_loss` float32 (teacher, student) tensor pairs; the functions below
are the tensor helpers those methods (and the connectors) use: flattening,
pooling two maps to a common spatial size, L2 normalisation and the
attention map of AT and FT.
"""

from __future__ import annotations

import math
from typing import Callable, Collection, Mapping

from keras import ops

from kdkeras import tap_detection
from kdkeras.methods.base import Method, as_float32


def flatten(x):
    """(B, ...) -> (B, prod(...)) with a static feature size."""
    return ops.reshape(x, (-1, math.prod(x.shape[1:])))


def l2_normalize(x, axis=-1, epsilon: float = 1e-12):
    """`x / max(||x||, epsilon)` along `axis`, with a finite gradient at 0.

    `keras.ops.normalize` gives the same values but a NaN gradient for an
    all-zero vector (its `min(rsqrt(.), 1 / epsilon)` differentiates `rsqrt`
    at 0), so the clamp is applied to the squared norm here.
    """
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, epsilon * epsilon))


def pool_to(x, size):
    """Average-pool an NHWC map to spatial `size` (exact blocks when the sizes
    divide, adaptive average pooling otherwise)."""
    h, w = x.shape[1], x.shape[2]
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if h % th == 0 and w % tw == 0:
        x = ops.reshape(x, (-1, th, h // th, tw, w // tw, x.shape[-1]))
        return ops.mean(x, axis=(2, 4))
    return ops.adaptive_average_pool(x, (th, tw))


def common_size(a_shape, b_shape) -> tuple[int, int]:
    """The smaller spatial size of two NHWC shapes (per dimension)."""
    return min(a_shape[1], b_shape[1]), min(a_shape[2], b_shape[2])


def match_spatial(a, b):
    """Average-pool the larger of two NHWC maps to the smaller's size."""
    size = common_size(a.shape, b.shape)
    return pool_to(a, size), pool_to(b, size)


def spatial_attention(f):
    """AT's `l2_normalize(flatten(mean_over_channels(f^2)))` per sample."""
    return l2_normalize(flatten(ops.mean(ops.square(f), axis=-1)), axis=-1)


def channel_vectors(f):
    """NHWC -> (B, HW, C): one spatial vector per channel (as columns)."""
    return ops.reshape(f, (-1, f.shape[1] * f.shape[2], f.shape[3]))


def _check_4d(name: str, shape, method: str) -> None:
    if len(shape) != 4:
        raise ValueError(
            f"{method} needs 4-D (B, H, W, C) feature maps, but tap {name!r} has "
            f"shape {shape}. Tap a convolutional stage output."
        )


class FeatureMethod(Method):
    """Base of the feature and relational methods: pairs the tap lists and
    hands `compute_loss` float32 (teacher, student) tensor pairs."""

    uses_teacher_logits = False

    def match_taps(self, teacher_layers, student_layers) -> tuple[list[str], list[str]]:
        """Lists of different lengths paired deepest-first (`tap_detection.pair_taps`);
        a method with no layer to tap is refused."""
        t, s = list(teacher_layers), list(student_layers)
        if len(t) != len(s):
            t, s = tap_detection.pair_taps(t, s)
        if not t:
            raise ValueError(f"Method {self.name!r} has no layers to tap.")
        return t, s

    def tap_pairs(self, teacher: Mapping, student: Mapping) -> list[tuple]:
        """[(teacher map, student map)] in float32, one per tap pair."""
        return [(as_float32(teacher[t]), as_float32(student[s])) for t, s in zip(*self.tap_names())]

    def shape_pairs(self, teacher_shapes: Mapping, student_shapes: Mapping) -> list[tuple]:
        """[(teacher shape, student shape)], one per tap pair."""
        return [
            (tuple(teacher_shapes[t]), tuple(student_shapes[s]))
            for t, s in zip(*self.tap_names())
        ]

    def build_per_pair(self, teacher_shapes: Mapping, student_shapes: Mapping, *, pool: bool = False,
                       on_teacher: Collection[str] = (), **makers: Callable) -> list | tuple[list, ...]:
        """Each pair's trainable parts: for tap pair `i` and each maker, in the makers'
        order, `makers[key](teacher_shape, name=f"{key}_{i}")` built on the student's map
        shape (pooled to the pair's common spatial size with `pool`; the teacher's for a
        key in `on_teacher`). One maker gives its list, several a tuple of lists."""
        parts = {key: [] for key in makers}
        for i, (t_shape, s_shape) in enumerate(self.shape_pairs(teacher_shapes, student_shapes)):
            pooled = (s_shape[0], *common_size(t_shape, s_shape), s_shape[-1]) if pool else s_shape
            for key, make in makers.items():
                layer = make(t_shape, name=f"{key}_{i}")
                layer.build(t_shape if key in on_teacher else pooled)
                parts[key].append(layer)
        return parts[next(iter(makers))] if len(makers) == 1 else tuple(parts.values())

    def check_4d(self, teacher_shapes: Mapping, student_shapes: Mapping) -> None:
        """Raise a ValueError naming the first tap that is not an NHWC map."""
        for t, s in zip(*self.tap_names()):
            _check_4d(t, teacher_shapes[t], type(self).__name__)
            _check_4d(s, student_shapes[s], type(self).__name__)

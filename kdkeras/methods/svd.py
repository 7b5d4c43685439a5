"""KDSVD: the student matches how the teacher's dominant feature directions relate
across consecutive stages, from a truncated SVD of each stage's map.

Formulas as computed: docs/methods.md.
"""

from __future__ import annotations

from keras import ops

from kdkeras import tap_detection
from kdkeras.methods.base import StepContext, is_training
from kdkeras.methods.connectors import Connector1x1
from kdkeras.methods.features import FeatureMethod, as_float32, channel_vectors, l2_normalize
from kdkeras.methods.registry import register_method
from kdkeras.search_space import Int


def _finite(x):
    """Non-finite entries of `x` set to 0 (the reference's `removenan`)."""
    return ops.where(ops.isfinite(x), x, ops.zeros_like(x))


def top_singular(f, n: int, fix_signs: bool = False):
    """The `n` leading right singular vectors of each sample's (HW, C) matrix,
    L2-normalised, (B, C, n), and its `n` leading singular values L2-normalised
    together, (B, n): from the eigenvectors and eigenvalues of its (C, C) Gram
    matrix when HW >= C, from an SVD otherwise. `fix_signs` flips each vector so that its entry of largest
    magnitude is positive (an SVD's signs are otherwise the solver's choice)."""
    x = channel_vectors(f)
    if x.shape[1] >= x.shape[2]:  # tall: the (C, C) Gram's eigenvectors, ~3x faster than an SVD
        e, v = ops.eigh(ops.matmul(ops.transpose(x, (0, 2, 1)), x))
        v, s = ops.flip(v, axis=-1), ops.sqrt(ops.maximum(ops.flip(e, axis=-1), 0.0))
    else:
        _, s, vh = ops.svd(x, full_matrices=False)
        v = ops.transpose(vh, (0, 2, 1))
    v = l2_normalize(_finite(v)[:, :, :n], axis=1)
    if fix_signs:
        peak = ops.take_along_axis(v, ops.expand_dims(ops.argmax(ops.abs(v), axis=1), 1), axis=1)
        v = v * ops.where(peak < 0, -1.0, 1.0)
    return v, l2_normalize(_finite(s)[:, :n], axis=1)


def align_signs(v_s, v_t):
    """For each teacher vector, the student vector of largest |cosine| with it, its
    sign flipped to make the cosine positive: (B, C, k) from (B, C, k + extra)."""
    cosine = ops.matmul(ops.transpose(v_s, (0, 2, 1)), v_t)
    best = ops.max(ops.abs(cosine), axis=1, keepdims=True)
    mask = ops.where(ops.equal(ops.abs(cosine), best), ops.sign(cosine), ops.zeros_like(cosine))
    return ops.matmul(v_s, ops.stop_gradient(mask))


def _rbf(a, b):
    """`exp(-(a_i - b_j)^2 / 8)` for every channel pair, per singular index:
    (B, C_a, C_b, k) from (B, C_a, k) and (B, C_b, k)."""
    return ops.exp(-ops.square(a[:, :, None, :] - b[:, None, :, :]) / 8.0)


@register_method("kdsvd")
class KDSVD(FeatureMethod):
    """Lee et al. (ECCV 2018), self-supervised KD with singular value decomposition.

    Per stage, `k` leading right singular vectors of the teacher's map and `k + 3`
    of the student's (`top_singular`; the teacher's signed so that each vector's
    largest entry is positive); each teacher vector takes its best-aligned
    student vector, sign-corrected (`align_signs`); both are scaled by the teacher's
    normalised singular values. For each consecutive stage pair, the RBF
    `exp(-(v_i - v_{i-1})^2 / 8)` between every channel of one and of the other is
    compared: the term is `sum_{i>0} sum (rbf_s - rbf_t)^2 / B`, non-finite
    entries dropped. Spatial sizes may differ. Where a pair's channel counts differ
    (the reference pairs equal widths only), the student's map first goes through a
    1x1 conv + BN to the teacher's channels (`connectors`, trained with the student).
    """

    default_weight = 1.0
    search_space = {"k": Int(1, 4)}

    def __init__(self, k: int = 1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or int(k) != k or k < 1:
            raise ValueError(f"KDSVD k must be an integer >= 1, got {k!r}.")
        self.k = int(k)
        #: 1x1 conv + BN for each tap pair whose channel counts differ (`connected` lists those pairs)
        self.connectors, self.connected = [], ()

    def default_taps(self, model, role):
        return tap_detection.stage_outputs(model)

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)
        pairs = self.shape_pairs(teacher_shapes, student_shapes)
        if len(pairs) < 2:
            raise ValueError(f"KDSVD relates consecutive stages: it needs two tap pairs or more, got {len(pairs)}.")
        self.connected = tuple(i for i, (t_shape, s_shape) in enumerate(pairs) if t_shape[-1] != s_shape[-1])
        self.connectors = []
        for i in self.connected:
            self.connectors.append(Connector1x1(pairs[i][0][-1], name=f"connector_{i}"))
            self.connectors[-1].build(pairs[i][1])
        for (t, s), (t_shape, s_shape) in zip(zip(*self.tap_names()), pairs):
            s_shape = (*s_shape[:-1], t_shape[-1])  # through its connector where the channels differ
            for name, shape, n in ((t, t_shape, self.k), (s, s_shape, self.k + 3)):
                if min(shape[1] * shape[2], shape[3]) < n:
                    raise ValueError(f"KDSVD needs {n} singular vectors of tap {name!r} {shape}: "
                                     f"it has min(H*W, C) = {min(shape[1] * shape[2], shape[3])}.")

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        total, previous = 0.0, None
        batch, connectors = None, dict(zip(self.connected, self.connectors))
        for i, (t, s) in enumerate(self.tap_pairs(teacher, student)):
            if i in connectors:
                s = as_float32(connectors[i](s, training=is_training(context)))
            v_t, s_t = top_singular(ops.stop_gradient(t), self.k, fix_signs=True)
            v_s, _ = top_singular(s, self.k + 3)
            v_s = align_signs(v_s, v_t)
            scale = s_t[:, None, :]
            v_t, v_s = v_t * scale, v_s * scale
            if previous is not None:
                diff = ops.square(_rbf(v_s, previous[1]) - ops.stop_gradient(_rbf(v_t, previous[0])))
                total = total + ops.sum(_finite(diff))
            previous, batch = (v_t, v_s), ops.shape(s)[0]
        return total / ops.cast(batch, "float32")

    def get_config(self):
        return {**super().get_config(), "k": self.k}

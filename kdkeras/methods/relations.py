"""Relational methods: the student matches relations between samples.

RKD, PKT, SP and CC compare how the samples of a batch relate to each other
(distances, angles, similarities, correlations) rather than the features
themselves, so teacher and student widths may differ freely. Taps default to
the penultimate embedding (RKD, PKT, CC) or the last stage output (SP); a
tapped map is flattened per sample.
"""

from __future__ import annotations

import keras
from keras import ops

from kdkeras import tap_detection
from kdkeras.methods.base import StepContext, as_float32
from kdkeras.methods.connectors import LinearEmbed
from kdkeras.methods.features import FeatureMethod, flatten, l2_normalize
from kdkeras.methods.registry import register_method


def _batch_size(x):
    return ops.cast(ops.shape(x)[0], "float32")


def huber(a, b):
    """Smooth L1 (delta 1) averaged over every element: `keras.losses.huber`
    (which averages the last axis) on the flattened tensors."""
    return keras.losses.huber(ops.reshape(b, (1, -1)), ops.reshape(a, (1, -1)), delta=1.0)[0]


def pairwise_distances(e, eps: float = 1e-12):
    """Euclidean distances between rows, clamped at `sqrt(eps)`, diagonal 0."""
    sq = ops.sum(ops.square(e), axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * ops.matmul(e, ops.transpose(e))
    d = ops.sqrt(ops.maximum(d2, eps))
    n = ops.shape(e)[0]
    return d * (1.0 - ops.eye(n, dtype=d.dtype))


def _normalised_distances(e):
    d = pairwise_distances(e)
    positive = ops.cast(d > 0, d.dtype)
    mean = ops.sum(d * positive) / ops.maximum(ops.sum(positive), 1.0)
    return d / mean


def _angles(e):
    """(B, B, B) cosines between the L2-normalised `e_j - e_i` for each anchor i."""
    diff = l2_normalize(e[None, :, :] - e[:, None, :], axis=-1)
    return ops.matmul(diff, ops.transpose(diff, (0, 2, 1)))


class _EmbeddingMethod(FeatureMethod):
    def default_taps(self, model, role):
        return [tap_detection.embedding_layer(model)]

    def vector_pairs(self, teacher, student):
        return [(flatten(t), flatten(s)) for t, s in self.tap_pairs(teacher, student)]


@register_method("rkd")
class RKD(_EmbeddingMethod):
    """Park et al. (2019), relational KD on the embedding.

    Distance: pairwise Euclidean distances (diagonal 0), each matrix divided
    by the mean of its positive entries, Huber mean. Angle: for each anchor,
    cosines between the L2-normalised difference vectors, Huber mean. The
    term is `distance_weight * distance + angle_weight * angle` (both logged).
    """

    default_weight = 1.0
    log_keys = ("distance", "angle")

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0, **kwargs):
        super().__init__(**kwargs)
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        distance, angle = 0.0, 0.0
        for t, s in self.vector_pairs(teacher, student):
            distance = distance + huber(_normalised_distances(s), _normalised_distances(t))
            angle = angle + huber(_angles(s), _angles(t))
        return {
            "distance": self.distance_weight * distance,
            "angle": self.angle_weight * angle,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "distance_weight": self.distance_weight,
            "angle_weight": self.angle_weight,
        }


def _pkt_probabilities(x, eps):
    x = x / (ops.sqrt(ops.sum(ops.square(x), axis=1, keepdims=True)) + eps)
    sim = (ops.matmul(x, ops.transpose(x)) + 1.0) / 2.0
    return sim / ops.sum(sim, axis=1, keepdims=True)


@register_method("pkt")
class PKT(_EmbeddingMethod):
    """Passalis & Tefas (2018), probabilistic knowledge transfer.

    Rows L2-normalised (`x / (||x|| + eps)`), cosine similarities mapped to
    `(c + 1) / 2` and normalised per row into `P`;
    `mean(P_t * log((P_t + eps) / (P_s + eps)))` over the B x B entries.
    """

    default_weight = 30000.0

    def __init__(self, eps: float = 1e-7, **kwargs):
        super().__init__(**kwargs)
        self.eps = float(eps)

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        total, eps = 0.0, self.eps
        for t, s in self.vector_pairs(teacher, student):
            p_t, p_s = _pkt_probabilities(t, eps), _pkt_probabilities(s, eps)
            total = total + ops.mean(p_t * ops.log((p_t + eps) / (p_s + eps)))
        return total

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


@register_method("sp")
class SP(FeatureMethod):
    """Tung & Mori (2019), similarity-preserving KD on the last stage.

    `G = F F^T` over the batch of flattened maps, each row L2-normalised;
    the term is `sum((G_t - G_s)^2) / B^2`, summed over taps.
    """

    default_weight = 3000.0

    def default_taps(self, model, role):
        return tap_detection.stage_outputs(model)[-1:]

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        total = 0.0
        for t, s in self.tap_pairs(teacher, student):
            t, s = flatten(t), flatten(s)
            g_t = l2_normalize(ops.matmul(t, ops.transpose(t)), axis=1)
            g_s = l2_normalize(ops.matmul(s, ops.transpose(s)), axis=1)
            b = _batch_size(s)
            total = total + ops.sum(ops.square(g_t - g_s)) / (b * b)
        return total


@register_method("cc")
class CC(_EmbeddingMethod):
    """Peng et al. (2019), correlation congruence (the reference's simplified form).

    Embeds `e_s, e_t` (linear to `embed_dim`, L2-normalised; both trained);
    with `d_b = abs(e_s[b] - e_t[b])`, the term is the mean over consecutive
    samples of `sum(d_b * d_(b+1))`.
    """

    default_weight = 0.02

    def __init__(self, embed_dim: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = int(embed_dim)
        self.student_embeds = []
        self.teacher_embeds = []

    def build_parts(self, teacher_shapes, student_shapes):
        self.student_embeds, self.teacher_embeds = self.build_per_pair(
            teacher_shapes, student_shapes, on_teacher=("teacher_embed",),
            student_embed=lambda t, name: LinearEmbed(self.embed_dim, name=name),
            teacher_embed=lambda t, name: LinearEmbed(self.embed_dim, name=name))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        total = 0.0
        parts = zip(self.tap_pairs(teacher, student), self.teacher_embeds, self.student_embeds)
        for (t, s), e_t, e_s in parts:
            d = ops.abs(as_float32(e_s(s)) - as_float32(e_t(t)))
            pairs = ops.sum(d[:-1] * d[1:], axis=1)
            count = ops.maximum(_batch_size(d) - 1.0, 1.0)
            total = total + ops.sum(pairs) / count
        return total

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim}

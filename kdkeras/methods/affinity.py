"""Affinity methods: the student matches how the parts of one sample's map relate.

ICKD compares the channel-by-channel correlation (Gram) matrix of a map,
Affinity the position-by-position affinity of each channel, and KTA (from the
same segmentation paper as Affinity) adapts the student to a factor of the
teacher's map learnt by a paraphraser, plus Affinity on that factor. Each
compares matrices built within a sample, so a trainable adapter brings the
student's channels to the teacher's (ICKD, Affinity) or to the factor's (KTA).
All tap the last stage output by default and read only the teacher's maps, so
a teacher cache serves them. Formulas as computed: docs/methods.md.
"""

from __future__ import annotations

from keras import ops

from kdkeras import tap_detection
from kdkeras.methods.base import StepContext, as_float32, check_weight, is_training
from kdkeras.methods.connectors import Adapter3x3, Connector1x1, factor_channels
from kdkeras.methods.features import FeatureMethod, flatten, l2_normalize, match_spatial
from kdkeras.methods.paraphrased import ParaphrasedMethod, ParaphraserTerm
from kdkeras.methods.registry import register_method
from kdkeras.replicas import global_batch_size
from kdkeras.search_space import Float


def channel_gram(f):
    """ICKD's inter-channel correlation of an NHWC map: `F^T F` with `F` the
    (HW, C) matrix of each sample, each row L2-normalised; shape (B, C, C)."""
    f = ops.reshape(f, (-1, f.shape[1] * f.shape[2], f.shape[3]))
    return l2_normalize(ops.matmul(ops.transpose(f, (0, 2, 1)), f), axis=-1)


def affinity_distance(s, t):
    """Per sample, `sum_c ||a_c a_c^T - b_c b_c^T||_F / HW` with `a_c`, `b_c` the
    L2-normalised spatial vectors of channel `c` of two NHWC maps of one shape.

    Computed without the (HW x HW) matrices: `||a a^T - b b^T||_F^2 =
    (a.a)^2 + (b.b)^2 - 2 (a.b)^2`, which holds for the all-zero channels the
    normalisation leaves at 0 too. Shape (B,)."""
    hw = s.shape[1] * s.shape[2]
    a = l2_normalize(ops.reshape(s, (-1, hw, s.shape[3])), axis=1)
    b = l2_normalize(ops.reshape(t, (-1, hw, t.shape[3])), axis=1)
    aa, bb, ab = (ops.sum(x * y, axis=1) for x, y in ((a, a), (b, b), (a, b)))
    squared = ops.square(aa) + ops.square(bb) - 2.0 * ops.square(ab)
    return ops.sum(ops.sqrt(ops.maximum(squared, 1e-12)), axis=-1) / float(hw)


class _LastStage(FeatureMethod):
    def default_taps(self, model, role):
        return tap_detection.stage_outputs(model)[-1:]


@register_method("ickd")
class ICKD(_LastStage):
    """Liu et al. (2021), inter-channel correlation (torchdistill's `ChSimLoss`).

    The student's map goes through an embedding (1x1 conv + BN) to the
    teacher's channels `C`; with `G` the row-normalised (C, C) Gram matrix of
    each sample (`channel_gram`), the term is `sum((G_s - G_t)^2) / (C B^2)`,
    summed over taps (under replicas, one `B` is the global batch's, so they sum
    to one device's term). Spatial sizes may differ (the Gram matrix is C x C).

    >>> import numpy as np
    >>> m = ICKD(teacher_layers=["t"], student_layers=["s"])
    >>> m.build_from_taps({"t": (None, 2, 2, 3)}, {"s": (None, 4, 4, 5)})
    >>> f = {"t": np.ones((2, 2, 2, 3), "float32")}
    >>> float(m.compute_loss(f, {"s": np.ones((2, 4, 4, 5), "float32")}, None)) >= 0.0
    True
    """

    default_weight = 500.0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embeds = []

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)
        self.embeds = self.build_per_pair(
            teacher_shapes, student_shapes, embed=lambda t, name: Connector1x1(t[-1], name=name))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        total, training = 0.0, is_training(context)
        for (t, s), e in zip(self.tap_pairs(teacher, student), self.embeds):
            g_s, g_t = channel_gram(as_float32(e(s, training=training))), channel_gram(t)
            b = ops.cast(ops.shape(t)[0], "float32")
            # sum / (C B^2) is a batch mean divided by B once more: that B is the global
            # batch's, so N replicas (each scaled by 1/N) give one device's term
            total = total + ops.sum(ops.square(g_s - g_t)) / (float(t.shape[-1]) * b * global_batch_size(b))
        return total


@register_method("affinity")
class Affinity(_LastStage):
    """He et al. (2019), affinity distillation (torchdistill's `AffinityLoss`)
    on the teacher's own map.

    The student's map goes through an adapter (3x3 conv with bias) to the
    teacher's channels; the larger map is average-pooled to the smaller; the
    term is the batch mean of `affinity_distance`, summed over taps.
    """

    default_weight = 1.0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.adapters = []

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)
        self.adapters = self.build_per_pair(
            teacher_shapes, student_shapes, adapter=lambda t, name: Adapter3x3(t[-1], name=name))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        total = 0.0
        for (t, s), a in zip(self.tap_pairs(teacher, student), self.adapters):
            s, t = match_spatial(as_float32(a(s)), t)
            total = total + ops.mean(affinity_distance(s, t))
        return total


@register_method()
class KTAParaphraser(ParaphraserTerm):
    """KTA's initialisation-stage term: `sum_taps mean((P(f_t) - f_t)^2) +
    regularization * sum(|P.encode(f_t)|)` (the L1 norm summed over the batch,
    as the reference), through which the paraphrasers `P` learn the factor.

    `KTA` makes one, named as itself, holding the paraphraser layers KTA then
    reads frozen.
    """

    paraphraser_bn = True

    def __init__(self, factor_rate: float = 0.5, regularization: float = 1e-7, **kwargs):
        super().__init__(factor_rate, **kwargs)
        self.regularization = check_weight(regularization, "KTAParaphraser regularization")

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        total, training = 0.0, is_training(context)
        for name, p in zip(self.tap_names()[0], self.paraphrasers):
            t = as_float32(teacher[name])
            factor = p.encode(t, training=training)
            rebuilt = as_float32(p.decode(factor, training=training))
            total = total + ops.mean(ops.square(rebuilt - t))
            total = total + self.regularization * ops.sum(ops.abs(as_float32(factor)))
        return total

    def get_config(self):
        return {**super().get_config(), "regularization": self.regularization}


@register_method("kta")
class KTA(ParaphrasedMethod):
    """He et al. (2019), knowledge translation and adaptation + affinity
    distillation (torchdistill's `KTALoss` and `AffinityLoss`, as its KTAAD
    recipe combines them).

    A paraphraser (`KTAParaphraser`, trained first in the `kta_paraphraser`
    stage, then frozen) encodes the teacher's map into a factor `z_t` of
    `int(C_t * factor_rate)` channels. Two student adapters map the student's
    map to that width: the feature adapter (3x3 conv + BN + ReLU) and the
    affinity adapter (3x3 conv). With maps pooled to the smaller size,
    `adapt = mean(|normalize(flatten(feature_adapter(f_s))) - normalize(flatten(z_t))|)`
    and `affinity` = the batch mean of `affinity_distance(affinity_adapter(f_s), z_t)`;
    the term is `adapt_weight * adapt + affinity_weight * affinity` (both logged).
    """

    default_weight = 1.0
    paraphraser_stage = "kta_paraphraser"
    log_keys = ("adapt", "affinity")
    search_space = {"weight": None, "adapt_weight": Float(12.5, 200.0, log=True),
                    "affinity_weight": Float(0.25, 4.0, log=True)}

    def __init__(self, adapt_weight: float = 50.0, affinity_weight: float = 1.0, factor_rate: float = 0.5,
                 regularization: float = 1e-7, **kwargs):
        super().__init__(**kwargs)
        self.adapt_weight = check_weight(adapt_weight, "KTA adapt_weight")
        self.affinity_weight = check_weight(affinity_weight, "KTA affinity_weight")
        self.regularization = check_weight(regularization, "KTA regularization")
        self._init_paraphraser(factor_rate, KTAParaphraser, regularization=self.regularization)
        self.feature_adapters, self.affinity_adapters = [], []

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)
        self.build_paraphrasers(teacher_shapes, student_shapes)

        def width(t):
            return factor_channels(t[-1], self.factor_rate)

        self.feature_adapters, self.affinity_adapters = self.build_per_pair(
            teacher_shapes, student_shapes,
            feature_adapter=lambda t, name: Adapter3x3(width(t), use_bn=True, activation="relu", name=name),
            affinity_adapter=lambda t, name: Adapter3x3(width(t), name=name))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        training = is_training(context)
        adapt, affinity = 0.0, 0.0
        parts = zip(self.tap_pairs(teacher, student), self.paraphrasers, self.feature_adapters,
                    self.affinity_adapters)
        for (t, s), p, f, a in parts:
            z_t = as_float32(p.encode(t, training=False))
            f_s, z = match_spatial(as_float32(f(s, training=training)), z_t)
            adapt = adapt + ops.mean(ops.abs(l2_normalize(flatten(f_s)) - l2_normalize(flatten(z))))
            a_s, z = match_spatial(as_float32(a(s)), z_t)
            affinity = affinity + ops.mean(affinity_distance(a_s, z))
        return {"adapt": self.adapt_weight * adapt, "affinity": self.affinity_weight * affinity}

    def get_config(self):
        return {**super().get_config(), "adapt_weight": self.adapt_weight,
                "affinity_weight": self.affinity_weight, "factor_rate": self.factor_rate,
                "regularization": self.regularization}

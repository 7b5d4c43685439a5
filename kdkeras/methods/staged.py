"""Hint methods whose paper trains an initialisation stage before the main one.

FSP and AB train their own term alone (no CE) with the student in a shared
`init` stage and leave the main stage; FT pretrains its paraphraser in a
stage of its own (`FTParaphraser`, a method object sharing FT's paraphraser
layers) and then trains its translator with the student through that frozen
paraphraser. Each declares this as `InitStage` data (`Method.init_stages`);
`kdkeras.stages` runs it. Formulas: docs/methods.md.
"""

from __future__ import annotations

from keras import ops

from kdkeras import tap_detection
from kdkeras.methods.base import InitStage, StepContext, as_float32, is_training
from kdkeras.methods.connectors import Connector1x1, Translator, factor_channels
from kdkeras.methods.features import (
    FeatureMethod,
    channel_vectors,
    match_spatial,
    spatial_attention,
)
from kdkeras.methods.paraphrased import ParaphrasedMethod, ParaphraserTerm
from kdkeras.methods.registry import register_method


class _InitStageTerm(FeatureMethod):
    """A method whose paper trains its term alone (no CE) with the student in
    an initialisation stage, then leaves it out of the main stage (AB, FSP)."""

    in_main_stage = False

    def init_stages(self) -> list[InitStage]:
        return [InitStage("init", (self,), train_student=True, student_loss_weight=0.0)]


def fsp_matrix(a, b):
    """`G[i, j] = mean over positions of a_i * b_j`, the larger map pooled to
    the smaller; shape (B, C_a, C_b)."""
    a, b = match_spatial(a, b)
    a, b = channel_vectors(a), channel_vectors(b)
    return ops.matmul(ops.transpose(a, (0, 2, 1)), b) / float(a.shape[1])


@register_method("fsp")
class FSP(_InitStageTerm):
    """Yim et al. (2017), flow of solution procedure between consecutive stages.

    `mean((G_s - G_t)^2)` for each consecutive pair of tapped maps, summed.
    Matched taps must have equal channel counts. The paper trains with this
    term alone in an initialisation stage, then with CE.

    Weight 1: the reference code trains its init stage on the unweighted sum
    (the 50 its scripts pass never reaches FSP). At 50 every conv kernel of a
    resnet8 grew 2-7x in norm in one init epoch; behind BatchNorm that shrinks
    the CE stage's effective step, and the student then fit its data worse
    than the student alone (docs/results.md).
    """

    default_weight = 1.0

    def default_taps(self, model, role):
        return tap_detection.stage_outputs(model)

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)
        teacher, student = self.tap_names()
        if len(teacher) < 2:
            raise ValueError(
                "FSP compares consecutive taps, so it needs at least two; got "
                f"teacher {teacher} and student {student}."
            )
        for (t, s), (ts, ss) in zip(zip(teacher, student), self.shape_pairs(teacher_shapes, student_shapes)):
            if ts[-1] != ss[-1]:
                raise ValueError(
                    f"FSP needs equal channel counts for matched taps: teacher {t!r} "
                    f"has {ts[-1]}, student {s!r} has {ss[-1]}. Tap layers of equal "
                    "width (e.g. resnet56 -> resnet20) or use another method."
                )

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        pairs = self.tap_pairs(teacher, student)
        total = 0.0
        for (t0, s0), (t1, s1) in zip(pairs[:-1], pairs[1:]):
            total = total + ops.mean(ops.square(fsp_matrix(s0, s1) - fsp_matrix(t0, t1)))
        return total


@register_method()
class FTParaphraser(ParaphraserTerm):
    """FT's initialisation-stage term: `sum_taps mean((paraphraser(f_t) - f_t)^2)`,
    weight 1, through which the paraphrasers learn to reconstruct the teacher's map.

    `FT` makes one (named as itself, so the stage logs the term under FT's name)
    holding the very paraphraser layers FT then reads frozen. It reads the
    teacher's maps alone.
    """

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        total, training = 0.0, is_training(context)
        for name, p in zip(self.tap_names()[0], self.paraphrasers):
            t = as_float32(teacher[name])
            total = total + ops.mean(ops.square(as_float32(p(t, training=training)) - t))
        return total


@register_method("ft")
class FT(ParaphrasedMethod):
    """Kim et al. (2018), factor transfer on the last stage.

    The paraphraser (a conv autoencoder of the teacher's map, bottleneck
    `factor_rate` of its channels) encodes the teacher's factor and the
    translator the student's; with `phi(F) = l2_normalize(flatten(mean_c(F^2)))`
    the term is `mean(abs(phi(F_s) - phi(F_t)))`, the larger factor pooled.

    The paraphraser is first trained alone to reconstruct the teacher's map:
    FT's init stage trains `paraphraser_term` (an `FTParaphraser` holding the
    same paraphraser layers; the student frozen). FT itself reads the
    paraphraser frozen and trains the translator with the student.
    """

    default_weight = 200.0
    paraphraser_stage = "ft_paraphraser"

    def __init__(self, factor_rate: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self._init_paraphraser(factor_rate, FTParaphraser)
        self.translators = []

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)
        self.build_paraphrasers(teacher_shapes, student_shapes)
        self.translators = self.build_per_pair(
            teacher_shapes, student_shapes,
            translator=lambda t, name: Translator(factor_channels(t[-1], self.factor_rate), name=name))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        training = is_training(context)
        total = 0.0
        parts = zip(self.tap_pairs(teacher, student), self.paraphrasers, self.translators)
        for (t, s), p, tr in parts:
            factor_t = as_float32(p.encode(t, training=False))
            factor_s = as_float32(tr(s, training=training))
            factor_t, factor_s = match_spatial(factor_t, factor_s)
            total = total + ops.mean(
                ops.abs(spatial_attention(factor_s) - spatial_attention(factor_t))
            )
        return total

    def get_config(self):
        return {**super().get_config(), "factor_rate": self.factor_rate}


@register_method("ab")
class AB(_InitStageTerm):
    """Heo et al. (2019), activation boundaries on pre-ReLU stage outputs.

    With `s = connector(f_s)` (1x1 conv + BN to the teacher's channels) and
    margin `m`, each tap gives
    `sum((s + m)^2 [s > -m, f_t <= 0] + (s - m)^2 [s <= m, f_t > 0])`,
    weighted `2^(i - n + 1)` (deepest tap 1), divided by the batch size and
    multiplied by 3/1000. The paper trains with this term (and the
    connectors) in an initialisation stage, then with CE (+KD) alone.
    Maps of different sizes are average-pooled to the smaller.
    """

    default_weight = 1.0

    def __init__(self, margin: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.margin = float(margin)
        self.connectors = []

    def default_taps(self, model, role):
        return tap_detection.preact_stage_outputs(model)

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)
        self.connectors = self.build_per_pair(
            teacher_shapes, student_shapes, pool=True, connector=lambda t, name: Connector1x1(t[-1], name=name))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        m, training = self.margin, is_training(context)
        pairs = self.tap_pairs(teacher, student)
        n = len(pairs)
        total = 0.0
        for i, ((t, s), c) in enumerate(zip(pairs, self.connectors)):
            t, s = match_spatial(t, s)
            s = as_float32(c(s, training=training))
            on = ops.cast(ops.logical_and(s > -m, t <= 0), "float32")
            off = ops.cast(ops.logical_and(s <= m, t > 0), "float32")
            loss = ops.sum(ops.square(s + m) * on + ops.square(s - m) * off)
            total = total + (2.0 ** (i - n + 1)) * loss
        batch = ops.cast(ops.shape(pairs[0][1])[0], "float32")
        return total / batch * (3.0 / 1000.0)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}

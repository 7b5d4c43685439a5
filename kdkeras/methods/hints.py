"""Feature-map (hint) methods: the student matches the teacher's inner maps.

FitNet, AT, NST, FSP, VID, FT and AB, each exactly as the reference sheet
states it (see docs/methods.md in this repository). Taps default to the detected stage outputs
(`kdkeras.tap_detection`); teacher and student lists of different lengths are
paired deepest-first (`pair_taps`), maps of different spatial sizes are
average-pooled to the smaller size where the sheet says so, and different
channel counts go through connectors built from the tapped shapes.
"""

from __future__ import annotations

from keras import ops

from kdkeras import tap_detection
from kdkeras.keys import INPUT_TAP, grad_key
from kdkeras.methods.base import StepContext, as_float32, is_training
from kdkeras.methods.connectors import (
    Connector1x1,
    ConvRegressor,
    Paraphraser,
    Translator,
    VIDRegressor,
    factor_channels,
)
from kdkeras.methods.features import (  # noqa: F401  (flatten, pool_to: re-exported)
    FeatureMethod,
    channel_vectors,
    common_size,
    flatten,
    l2_normalize,
    match_spatial,
    pool_to,
    spatial_attention,
)
from kdkeras.methods.registry import register_method
from kdkeras.stage import Stage

# -- methods --------------------------------------------------------------------------


@register_method("fitnet")
class FitNet(FeatureMethod):
    """Romero et al. (2015): `mean((r(f_s) - f_t)^2)` on one middle stage.

    `r` (conv + BN) maps the student's map to the teacher's channels and size.
    The default tap is the middle stage output, `stages[(n - 1) // 2]`
    (stage 2 of a 3-stage CIFAR ResNet, conv3 of ResNet50).
    """

    default_weight = 100.0

    def __init__(self, name: str | None = None, **kwargs):
        super().__init__(name=name or "fitnet", **kwargs)
        self.regressors = []

    def default_taps(self, model, role):
        stages = tap_detection.stage_outputs(model)
        return [stages[(len(stages) - 1) // 2]]

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)
        regressors = []
        for t_shape, s_shape in self.shape_pairs(teacher_shapes, student_shapes):
            r = ConvRegressor(t_shape[-1], t_shape[1:3], name=f"regressor_{len(regressors)}")
            r.build(s_shape)
            regressors.append(r)
        self.regressors = regressors

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        total, training = 0.0, is_training(context)
        for (t, s), r in zip(self.tap_pairs(teacher, student), self.regressors):
            total = total + ops.mean(ops.square(as_float32(r(s, training=training)) - t))
        return total


@register_method("at")
class AT(FeatureMethod):
    """Zagoruyko & Komodakis (2017), attention transfer on stage outputs.

    `mode="activation"`: per tap pair, `a(f) = l2_normalize(flatten(mean_c(f^2)))`
    and `mean((a(f_s) - a(f_t))^2)`, summed over taps; the larger map is
    average-pooled to the smaller.

    `mode="gradient"`: the attention is the gradient `g = dCE/dx` of each
    network's loss with respect to its input (or to the tapped maps, which
    must then have equal shapes); the term is
    `mean((l2_normalize(flatten(g_s)) - l2_normalize(flatten(g_t)))^2)` per
    sample, averaged. The Distiller computes both gradients in the same pass
    (a backward pass, not a second forward), nested in the training tape so
    the student's term gets its second-order gradient; the teacher's gradient
    updates nothing.
    """

    default_weight = 1000.0
    #: the attention definitions this class computes
    modes = ("activation", "gradient")

    def __init__(self, mode: str = "activation", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.modes:
            raise ValueError(f"Unknown AT mode {mode!r}. Accepted modes: {list(self.modes)}.")
        self.mode = mode
        if mode == "gradient":
            if (self.teacher_layers is None) != (self.student_layers is None):
                raise ValueError(
                    "AT(mode='gradient') takes both teacher_layers and student_layers "
                    "(gradients w.r.t. those maps) or neither (w.r.t. the input)."
                )
            self.gradient_keys = tuple(
                dict.fromkeys((self.teacher_layers or []) + (self.student_layers or []))
            ) or (INPUT_TAP,)

    def default_taps(self, model, role):
        # gradient mode taps nothing unless told: its default is the input's gradient
        return [] if self.mode == "gradient" else tap_detection.stage_outputs(model)

    def match_taps(self, teacher_layers, student_layers):
        if self.mode == "gradient":  # the given maps (equal shapes), or none for the input
            return list(teacher_layers), list(student_layers)
        return super().match_taps(teacher_layers, student_layers)

    def build_parts(self, teacher_shapes, student_shapes):
        if self.mode == "gradient":
            for t, s in zip(*self.tap_names()):
                if tuple(teacher_shapes[t][1:]) != tuple(student_shapes[s][1:]):
                    raise ValueError(
                        f"AT(mode='gradient') compares gradients element-wise: teacher map "
                        f"{t!r} {teacher_shapes[t]} and student map {s!r} {student_shapes[s]} "
                        "must have equal shapes (or tap nothing to use the input)."
                    )
            return
        self.check_4d(teacher_shapes, student_shapes)

    def _gradient_pairs(self):
        """The (teacher, student) maps whose gradients are compared: those given, else the input."""
        if self.teacher_layers is None and self._built_taps is None:
            return [(INPUT_TAP, INPUT_TAP)]
        return list(zip(*self.tap_names())) or [(INPUT_TAP, INPUT_TAP)]

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        total = 0.0
        if self.mode == "gradient":
            for t, s in self._gradient_pairs():
                gt = _flat_unit(as_float32(teacher[grad_key(t)]))
                gs = _flat_unit(as_float32(student[grad_key(s)]))
                total = total + ops.mean(ops.square(gs - gt))
            return total
        for t, s in self.tap_pairs(teacher, student):
            t, s = match_spatial(t, s)
            total = total + ops.mean(ops.square(spatial_attention(s) - spatial_attention(t)))
        return total

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _flat_unit(g):
    """Per-sample L2-normalised flattening (`F.normalize` semantics, eps 1e-12)."""
    return l2_normalize(flatten(g), axis=-1)


def _poly_kernel_mean(a, b):
    """`mean((a_i . b_j)^2)` over the batch and all channel pairs (i, j)."""
    return ops.mean(ops.square(ops.matmul(ops.transpose(a, (0, 2, 1)), b)))


@register_method("nst")
class NST(FeatureMethod):
    """Huang & Wang (2017), neuron selectivity transfer (polynomial-kernel MMD).

    Per tap pair, each channel's spatial vector is L2-normalised and, with
    `k(a, b) = (a . b)^2` over all channel pairs, the term is
    `mean(k(t, t)) + mean(k(s, s)) - 2 mean(k(s, t))`, summed over taps.
    """

    default_weight = 50.0

    def default_taps(self, model, role):
        return tap_detection.stage_outputs(model)

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        total = 0.0
        for t, s in self.tap_pairs(teacher, student):
            t, s = match_spatial(t, s)
            t = l2_normalize(channel_vectors(t), axis=1)
            s = l2_normalize(channel_vectors(s), axis=1)
            total = total + (
                _poly_kernel_mean(t, t) + _poly_kernel_mean(s, s) - 2.0 * _poly_kernel_mean(s, t)
            )
        return total


class _InitStageTerm(FeatureMethod):
    """A method whose paper trains its term alone (no CE) in an initialisation
    stage, then leaves it out of the main stage (AB, FSP)."""

    in_main_stage = False

    def init_stages(self, init_epochs: int) -> list[Stage]:
        return [Stage("init", [self], init_epochs, student_loss_weight=0.0)]


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


@register_method("vid")
class VID(FeatureMethod):
    """Ahn et al. (2019), variational information distillation.

    Per tap pair (the larger map pooled to the smaller), a regressor `mu` of
    three 1x1 convs predicts the teacher's map from the student's, with a
    per-channel variance `softplus(log_scale) + 1e-5` starting at
    `init_variance`; the term is `mean(0.5 * ((mu - f_t)^2 / var + log var))`,
    summed over taps.
    """

    default_weight = 1.0

    def __init__(self, init_variance: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        self.init_variance = float(init_variance)
        self.regressors = []

    def default_taps(self, model, role):
        return tap_detection.stage_outputs(model)

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)
        regressors = []
        for t_shape, s_shape in self.shape_pairs(teacher_shapes, student_shapes):
            size = common_size(t_shape, s_shape)
            r = VIDRegressor(
                t_shape[-1],
                init_variance=self.init_variance,
                name=f"regressor_{len(regressors)}",
            )
            r.build((s_shape[0], *size, s_shape[-1]))
            regressors.append(r)
        self.regressors = regressors

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        total = 0.0
        for (t, s), r in zip(self.tap_pairs(teacher, student), self.regressors):
            t, s = match_spatial(t, s)
            mu = as_float32(r(s))
            var = r.variance()
            total = total + ops.mean(0.5 * (ops.square(mu - t) / var + ops.log(var)))
        return total

    def get_config(self):
        return {**super().get_config(), "init_variance": self.init_variance}


@register_method("ft")
class FT(FeatureMethod):
    """Kim et al. (2018), factor transfer on the last stage.

    The paraphraser (a conv autoencoder of the teacher's map, bottleneck
    `factor_rate` of its channels) encodes the teacher's factor and the
    translator the student's; with `phi(F) = l2_normalize(flatten(mean_c(F^2)))`
    the term is `mean(abs(phi(F_s) - phi(F_t)))`, the larger factor pooled.

    The paraphraser is first trained alone to reconstruct the teacher's map
    (`stage="paraphraser"`: the term is `paraphraser_reconstruction_loss`, only
    the paraphraser trains); the main stage (`stage="transfer"`, the default)
    freezes it and trains the translator with the student. Set `stage` on the
    same instance between stages (and compile again) to keep its weights.
    """

    default_weight = 200.0
    #: the values of `stage`: the paraphraser's init stage, then the main one
    stages = ("paraphraser", "transfer")

    def __init__(self, factor_rate: float = 0.5, stage: str = "transfer", **kwargs):
        super().__init__(**kwargs)
        if not 0 < factor_rate <= 1:
            raise ValueError(f"FT factor_rate must be in (0, 1], got {factor_rate!r}.")
        self.factor_rate = float(factor_rate)
        self.paraphrasers = []
        self.translators = []
        self._stage = None
        self.stage = stage

    @property
    def stage(self) -> str:
        return self._stage

    @stage.setter
    def stage(self, value: str) -> None:
        if value not in self.stages:
            raise ValueError(f"Unknown FT stage {value!r}. Accepted: {list(self.stages)}.")
        self._stage = value
        self._set_trainable()

    def _set_trainable(self) -> None:
        for p in self.paraphrasers:
            p.trainable = self._stage == "paraphraser"
        for t in self.translators:
            t.trainable = self._stage == "transfer"

    def init_stages(self, init_epochs: int) -> list[Stage]:
        """The paraphraser stage: it learns to reconstruct the teacher's map
        (term unweighted, no CE) while the student stays frozen."""
        return [
            Stage("ft_paraphraser", [self], init_epochs, student_loss_weight=0.0,
                  train_student=False, setup=self._to_paraphraser)
        ]

    def _to_paraphraser(self) -> None:
        self.stage = "paraphraser"

    def setup_main(self) -> None:
        """Back to the transfer term, through the frozen paraphraser."""
        self.stage = "transfer"

    def default_taps(self, model, role):
        return tap_detection.stage_outputs(model)[-1:]

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)
        paraphrasers, translators = [], []
        for i, (t_shape, s_shape) in enumerate(self.shape_pairs(teacher_shapes, student_shapes)):
            p = Paraphraser(t_shape[-1], self.factor_rate, name=f"paraphraser_{i}")
            p.build(t_shape)
            tr = Translator(factor_channels(t_shape[-1], self.factor_rate), name=f"translator_{i}")
            tr.build(s_shape)
            paraphrasers.append(p)
            translators.append(tr)
        self.paraphrasers, self.translators = paraphrasers, translators
        self._set_trainable()

    @property
    def current_weight(self) -> float:
        # The paraphraser learns its reconstruction as in the paper (weight 1);
        # `weight` (200) is the factor-transfer term's.
        return 1.0 if self._stage == "paraphraser" else self.weight

    def paraphraser_reconstruction_loss(self, teacher, training=False):
        """`mean((paraphraser(f_t) - f_t)^2)`, summed over taps: the init stage's term."""
        total = 0.0
        for name, p in zip(self.tap_names()[0], self.paraphrasers):
            t = as_float32(teacher[name])
            total = total + ops.mean(ops.square(as_float32(p(t, training=training)) - t))
        return total

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        training = is_training(context)
        if self._stage == "paraphraser":
            return self.paraphraser_reconstruction_loss(teacher, training=training)
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
        return {**super().get_config(), "factor_rate": self.factor_rate, "stage": self._stage}


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
        connectors = []
        for t_shape, s_shape in self.shape_pairs(teacher_shapes, student_shapes):
            size = common_size(t_shape, s_shape)
            c = Connector1x1(t_shape[-1], name=f"connector_{len(connectors)}")
            c.build((s_shape[0], *size, s_shape[-1]))
            connectors.append(c)
        self.connectors = connectors

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

"""Feature-map (hint) methods: the student matches the teacher's inner maps.

FitNet, AT, NST and VID, each exactly as the reference sheet states it (see
docs/methods.md in this repository). Taps default to the detected stage outputs
(`kdkeras.tap_detection`); teacher and student lists of different lengths are
paired deepest-first (`pair_taps`), maps of different spatial sizes are
average-pooled to the smaller size where the sheet says so, and different
channel counts go through connectors built from the tapped shapes. The hint
methods whose paper trains an initialisation stage (FSP, FT, AB) are in
`kdkeras.methods.staged`.
"""

from __future__ import annotations

from keras import ops

from kdkeras import tap_detection
from kdkeras.keys import INPUT_TAP, grad_key
from kdkeras.methods.base import StepContext, as_float32, is_training
from kdkeras.methods.connectors import ConvRegressor, VIDRegressor
from kdkeras.methods.features import (  # noqa: F401  (flatten, pool_to: re-exported)
    FeatureMethod,
    channel_vectors,
    flatten,
    l2_normalize,
    match_spatial,
    pool_to,
    spatial_attention,
)
from kdkeras.methods.registry import register_method

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
        self.regressors = self.build_per_pair(
            teacher_shapes, student_shapes, regressor=lambda t, name: ConvRegressor(t[-1], t[1:3], name=name))

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
        self.regressors = self.build_per_pair(
            teacher_shapes, student_shapes, pool=True,
            regressor=lambda t, name: VIDRegressor(t[-1], init_variance=self.init_variance, name=name))

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

"""Feature-regression methods beyond FitNet: the student regresses the teacher's
features through a trained connector, each with its own twist on the L2 term.

`OFD` regresses pre-ReLU stage outputs with a partial L2 that ignores what the
teacher's ReLU would drop (margins from the teacher's BN statistics, read once at
setup); `PADL2` weighs each embedding dimension by a learned variance, after a
first stage of plain L2 (`PADL2Regression`); `SRD` regresses the projected,
batch-normalised embedding with a log-sum loss next to a KD term on the logits.
Formulas as computed: docs/methods.md.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from kdkeras import tap_detection
from kdkeras.keys import LOGITS
from kdkeras.methods.base import InitStage, StepContext, as_float32, check_weight, is_training, kl_div
from kdkeras.methods.connectors import Connector1x1, LinearBN
from kdkeras.methods.features import FeatureMethod, flatten, pool_to
from kdkeras.methods.registry import register_method
from kdkeras.search_space import Float


def _positive(owner: str, name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ValueError(f"{owner} {name} must be a finite number > 0, got {value!r}.")
    return number


# -- OFD ------------------------------------------------------------------------------


def ofd_margin(gamma, beta) -> np.ndarray:
    """OFD's per-channel margin `E[x | x < 0]` for `x ~ N(beta, |gamma|^2)` (a BN's
    output before its ReLU): `beta - s * phi(beta / s) / Phi(-beta / s)` with
    `s = |gamma|`, or `-3 s` where `Phi(-beta / s) <= 0.001` (too few negatives)."""
    out = []
    for g, m in zip(np.asarray(gamma, "float64").ravel(), np.asarray(beta, "float64").ravel()):
        s = abs(float(g))
        if s == 0.0:  # a constant channel: its value, where it is negative
            out.append(min(float(m), 0.0))
            continue
        cdf = 0.5 * math.erfc(float(m) / s / math.sqrt(2.0))  # Phi(-m / s)
        if cdf > 0.001:
            out.append(-s * math.exp(-((m / s) ** 2) / 2.0) / math.sqrt(2.0 * math.pi) / cdf + m)
        else:
            out.append(-3.0 * s)
    return np.asarray(out, "float32")


def _parents(layer) -> list:
    return [n.operation for n in layer._inbound_nodes[0].parent_nodes] if layer._inbound_nodes else []


def _chain_length(layer, limit: int = 64) -> int:
    """How many layers lead to `layer` in a single chain from the last fork (the
    block input): a residual branch is longer than its projection shortcut."""
    n = 0
    while n < limit:
        parents = _parents(layer)
        if len(parents) != 1 or len(parents[0]._outbound_nodes) > 1:
            break
        layer, n = parents[0], n + 1
    return n


def bn_before(model: keras.Model, name: str) -> keras.layers.BatchNormalization:
    """The BatchNormalization layer whose output reaches pre-ReLU tap `name`: the
    tap itself, else (through activations) the BN input of the Add it is, that of
    the residual branch where the shortcut has one too (`stage1_block3_preact` -> `stage1_block3_bn2`, `conv2_block3_add` ->
    `conv2_block3_3_bn`); a ValueError naming the tap when there is none."""
    from kdkeras.taps import find_layer  # kdkeras.taps imports nothing of the methods

    layer = find_layer(model, name)[1]
    seen = 0
    while seen < 8:
        seen += 1
        if isinstance(layer, keras.layers.BatchNormalization):
            return layer
        parents = _parents(layer)
        bns = [p for p in parents if isinstance(p, keras.layers.BatchNormalization)]
        if bns:  # the residual branch's: it feeds only the Add (an identity shortcut feeds
            # the branch too) and is the longer chain (a projection shortcut is conv + BN)
            only = [b for b in bns if len(b._outbound_nodes) == 1] or bns
            return max(only, key=_chain_length)
        if len(parents) != 1:
            break
        layer = parents[0]
    raise ValueError(
        f"OFD reads the margin of teacher tap {name!r} from the BatchNormalization before it, "
        "but none feeds it (directly, through an Add or activations). Tap a pre-ReLU map "
        "that a BN layer produces (kdkeras.taps.preact_stage_outputs lists them)."
    )


@ops.custom_gradient
def _clipped_square_sum(s, t, floor):
    """`sum(max(s - t, floor)^2)` with its gradient `2 max(s - t, floor)` to `s` written
    out (none to the teacher's `t` and `floor`): one op backward instead of autodiff's four."""
    d = ops.maximum(s - t, floor)

    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        return 2.0 * upstream * d, None, None

    return ops.sum(ops.square(d)), grad


def ofd_partial_l2(s, t, margin):
    """Sum of OFD's partial L2 over every element: with the teacher's map clipped to
    the margin, `t' = max(t, m)`, each element adds `(s - t')^2` where `s > t'` or
    `t' > 0`, nothing elsewhere. Margins are <= 0 (`ofd_margin`), so this is
    `(s - m)^2` where `s > m >= t`, `(s - t)^2` where `s > t > m` and `t <= 0`, or
    where `t > 0`. A `maximum` against a floor made from the teacher alone (0 where
    `t' <= 0`, the lowest float elsewhere) keeps the student's side, and its
    gradient, to a few elementwise ops on the step's largest maps."""
    t = ops.maximum(ops.stop_gradient(t), margin)
    floor = ops.where(t > 0.0, np.finfo("float32").min, 0.0)
    return _clipped_square_sum(s, t, floor)


@register_method("ofd")
class OFD(FeatureMethod):
    """Heo et al. (ICCV 2019), a comprehensive overhaul of feature distillation.

    Per pre-ReLU stage pair `i` of `n` (deepest last), `r_i` (1x1 conv + BN) maps
    the student's map to the teacher's channels, the teacher's map is average-pooled
    to the student's size, and the term is
    `sum_i sum_{c,h,w} mean_b partial_l2(r_i(f_s), f_t, m) / 2^(n - 1 - i)`
    (`ofd_partial_l2` sums each pair's elements), with each channel's margin `m`
    from the BN feeding the teacher's tap (`ofd_margin`, read from the teacher once
    at setup, so no teacher cache can serve it).

    Example:

    >>> [round(float(v), 4) for v in ofd_margin([1.0, 2.0], [0.0, -1.0])]
    [-0.7979, -2.0183]
    """

    default_weight = 1e-3
    reads_teacher_weights = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.connectors = []
        self.margins = []

    def default_taps(self, model, role):
        return tap_detection.preact_stage_outputs(model)

    def build_parts(self, teacher_shapes, student_shapes):
        self.check_4d(teacher_shapes, student_shapes)
        self.connectors = self.build_per_pair(
            teacher_shapes, student_shapes, connector=lambda t, name: Connector1x1(t[-1], name=name))
        self.margins = [
            self.add_weight(shape=(c.channels,), initializer="zeros", trainable=False, name=f"margin_{i}")
            for i, c in enumerate(self.connectors)]

    def read_teacher(self, teacher):
        for name, margin in zip(self.tap_names()[0], self.margins):
            bn = bn_before(teacher, name)
            channels = int(margin.shape[0])
            gamma = bn.gamma.numpy() if bn.gamma is not None else np.ones(channels)
            beta = bn.beta.numpy() if bn.beta is not None else np.zeros(channels)
            if gamma.shape != (channels,):
                raise ValueError(f"OFD: the BN {bn.name!r} before teacher tap {name!r} has "
                                 f"{gamma.shape[0]} channels, the tap {channels}.")
            margin.assign(ofd_margin(gamma, beta))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        training, pairs = is_training(context), self.tap_pairs(teacher, student)
        total = 0.0
        for i, ((t, s), r, m) in enumerate(zip(pairs, self.connectors, self.margins)):
            s = as_float32(r(s, training=training))
            t = as_float32(pool_to(t, s.shape[1:3]))
            total = total + ofd_partial_l2(s, t, ops.cast(m, "float32")) / float(2 ** (len(pairs) - 1 - i))
        return total / ops.cast(ops.shape(s)[0], "float32")


# -- PAD-L2 ----------------------------------------------------------------------------

#: PAD-L2's first stage: plain L2 on the embeddings, with CE, training the student
PAD_REGRESSION_STAGE = "pad_l2_regression"


class _OnePair(FeatureMethod):
    """A method on one (teacher, student) pair: of longer tap lists, the deepest."""

    def match_taps(self, teacher_layers, student_layers):
        t, s = super().match_taps(teacher_layers, student_layers)
        return t[-1:], s[-1:]


def _regressed(s, connector):
    """The student's embedding flattened, through `connector` (to the teacher's width) if any."""
    s = flatten(s)
    return s if connector is None else as_float32(connector(s))


@register_method()
class PADL2Regression(_OnePair):
    """PAD-L2's first stage: plain L2 on the embeddings, `mean_b mean_d (f_t - f_s)^2`
    (PyTorch's `MSELoss`), trained with CE and the student; a student embedding of
    another width goes through a Dense `connector` first. `PADL2` makes one, named as
    itself, and its own term then starts from the student (and connector) it trained.
    """

    default_weight = 1.0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.connector = None

    def default_taps(self, model, role):
        return [tap_detection.embedding_layer(model)]

    def build_parts(self, teacher_shapes, student_shapes):
        t_shape, s_shape = self.shape_pairs(teacher_shapes, student_shapes)[-1]
        dim, s_dim = math.prod(t_shape[1:]), math.prod(s_shape[1:])
        if s_dim != dim:
            self.connector = keras.layers.Dense(dim, name="connector")
            self.connector.build((None, s_dim))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        t, s = self.tap_pairs(teacher, student)[-1]
        return ops.mean(ops.square(flatten(t) - _regressed(s, self.connector)))


@register_method("pad_l2", "pad")
class PADL2(_OnePair):
    """Zhang et al. (ECCV 2020), prime-aware adaptive distillation with L2.

    On the embeddings, a variance head `v` (Dense + BatchNorm1d, from the student's
    embedding) predicts a log-variance per dimension and the term is
    `mean_b mean_d ((f_t - f_s)^2 / (eps + exp(v(f_s))) + v(f_s))`: samples the head
    finds hard weigh less. A student embedding of another width goes through a
    Dense connector first (`f_s` then stands for its output).

    Two stages, as torchdistill's multi-stage PAD sample: the init stage
    `pad_l2_regression` trains the student (and the connector) on CE + plain L2
    (`regression_term`, weight `regression_weight`); then this term, with a new
    variance head, trains on from them (the connector is not frozen).
    """

    default_weight = 1.0

    def __init__(self, eps: float = 1e-6, regression_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.eps = _positive("PADL2", "eps", eps)
        self.regression_weight = check_weight(regression_weight, "PADL2 regression_weight")
        self.variance = None
        self.connector = None
        # Not a tracked sublayer: PADL2 tracks the connector they share once (`connector`),
        # and the variance head, which the first stage must not train, is PADL2's alone.
        term = PADL2Regression(weight=self.regression_weight, teacher_layers=self.teacher_layers,
                               student_layers=self.student_layers, name=self.name)
        object.__setattr__(self, "_regression_term", term)

    @property
    def regression_term(self) -> PADL2Regression:
        """The first stage's term, holding the connector PADL2 trains on."""
        return self._regression_term

    def init_stages(self) -> list[InitStage]:
        """Plain L2 with CE (weight 1) training the student, as the reference's first stage."""
        return [InitStage(PAD_REGRESSION_STAGE, (self._regression_term,), train_student=True,
                          student_loss_weight=1.0, frozen_after=False)]

    def default_taps(self, model, role):
        return [tap_detection.embedding_layer(model)]

    def build_parts(self, teacher_shapes, student_shapes):
        term, taps = self._regression_term, self.tap_names()
        if not term._parts_built:  # no first stage ran: the connector is built for PADL2's taps
            term.teacher_layers, term.student_layers = taps
            term.build_from_taps(teacher_shapes, student_shapes)
        elif term.tap_names() != taps:
            raise ValueError(f"PADL2 {self.name!r} reads taps {taps}, but its first stage trained on "
                             f"{term.tap_names()}: give PADL2 and its first stage the same taps.")
        t_shape, s_shape = self.shape_pairs(teacher_shapes, student_shapes)[-1]
        self.variance = LinearBN(math.prod(t_shape[1:]), name="variance")
        self.variance.build(s_shape)
        self.connector = term.connector

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        t, s = self.tap_pairs(teacher, student)[-1]
        log_var = as_float32(self.variance(s, training=is_training(context)))
        error = ops.square(flatten(t) - _regressed(s, self.connector))
        return ops.mean(error / (self.eps + ops.exp(log_var)) + log_var)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "regression_weight": self.regression_weight}


# -- SRD -------------------------------------------------------------------------------


def batch_standardize(x, epsilon: float = 1e-4):
    """Each column standardised over the batch (non-affine BatchNorm with batch
    statistics, biased variance): `(x - mean_b) / sqrt(var_b + epsilon)`."""
    mean = ops.mean(x, axis=0, keepdims=True)
    var = ops.mean(ops.square(x - mean), axis=0, keepdims=True)
    return (x - mean) * ops.rsqrt(var + epsilon)


def _pooled(x):
    """A 4-D map global-average-pooled to (B, C); vectors as they are."""
    return ops.mean(x, axis=(1, 2)) if len(x.shape) == 4 else flatten(x)


@register_method("srd")
class SRD(_OnePair):
    """Miles & Mikolajczyk (AAAI 2024), the role of the projector in KD (torchdistill's
    `SRDLoss`, "simple recipe distillation").

    The student's embedding goes through a projector `P` (Dense + BatchNorm1d without
    affine parameters, epsilon 1e-4); the teacher's is batch-normalised the same way
    without parameters (`batch_standardize`); 4-D taps are global-average-pooled
    first. The term is `feat + kd` with
    `feat = 2 * log(sum_{b,d} |P(f_s) - BN(f_t)|^exponent)` and
    `kd = sum_b KL(p_t^T || p_s^T) / B` (no `T^2`), returned as `{"feat", "kd"}`.
    """

    default_weight = 1.0
    uses_teacher_logits = True
    search_space = {"exponent": Float(1.0, 4.0), "temperature": Float(0.5, 8.0, log=True)}
    log_keys = ("feat", "kd")

    def __init__(self, exponent: float = 4.0, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.exponent = _positive("SRD", "exponent", exponent)
        self.temperature = _positive("SRD", "temperature", temperature)
        self.projector = None

    def default_taps(self, model, role):
        return [tap_detection.embedding_layer(model)]

    def build_parts(self, teacher_shapes, student_shapes):
        t_shape, s_shape = self.shape_pairs(teacher_shapes, student_shapes)[-1]
        dim = t_shape[-1] if len(t_shape) == 4 else math.prod(t_shape[1:])
        s_dim = s_shape[-1] if len(s_shape) == 4 else math.prod(s_shape[1:])
        self.projector = LinearBN(dim, affine=False, epsilon=1e-4, name="projector")
        self.projector.build((None, s_dim))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        t, s = self.tap_pairs(teacher, student)[-1]
        s = as_float32(self.projector(_pooled(s), training=is_training(context)))
        t = batch_standardize(_pooled(t))
        feat = 2.0 * ops.log(ops.sum(ops.power(ops.abs(s - t), self.exponent)))
        temp = self.temperature
        log_pt = ops.log_softmax(as_float32(teacher[LOGITS]) / temp, axis=-1)
        log_ps = ops.log_softmax(as_float32(student[LOGITS]) / temp, axis=-1)
        return {"feat": feat, "kd": ops.mean(kl_div(log_pt, log_ps))}

    def get_config(self):
        return {**super().get_config(), "exponent": self.exponent, "temperature": self.temperature}

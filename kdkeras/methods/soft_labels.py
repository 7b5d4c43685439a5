"""Soft labels as regularisation: LSR, the virtual teacher, WSL and DKD.

Two lines of work read a teacher's soft labels as a regulariser: Tf-KD
(Yuan et al. 2020) shows that label smoothing (`LSR`) and a hand-made
"virtual teacher" (`VirtualTeacher`) recover much of KD's gain without a
teacher; the bias-variance view (Zhou et al. 2021) weights each sample's soft
label by how much better the teacher is on it (`WSL`). `DKD` (Zhao et al.
2022) splits KD into its target and non-target parts and reweights them.

Every term is computed in float32 and reduced as the reference sheet says
(see docs/methods.md in this repository): a per-sample value, averaged over
the batch.
"""

from __future__ import annotations

from keras import ops

from kdkeras.keys import LOGITS
from kdkeras.methods.base import (
    Method,
    StepContext,
    as_float32,
    epoch_warmup,
    kl_div,
    log_softmax_t,
    sparse_labels,
)
from kdkeras.methods.registry import register_method
from kdkeras.methods.standardize import LogitMethod
from kdkeras.search_space import Float

# Added to masked logits: large enough that exp() is exactly 0 in float32,
# small enough that differences of masked log-probabilities stay finite.
_MASK_FILL = -1e9


def _check_positive(owner: str, name: str, value: float) -> float:
    if value <= 0:
        raise ValueError(f"{owner} {name} must be > 0, got {value!r}.")
    return float(value)


def _one_hot(y, num_classes: int):
    return ops.one_hot(sparse_labels(y), num_classes, dtype="float32")


def virtual_teacher_distribution(
    y, num_classes: int, correct_prob: float = 0.99, temperature: float = 20.0
):
    """The Tf-KD virtual teacher's soft labels, shape (B, K).

    `p_d(k) = a` for the label, `(1 - a) / (K - 1)` elsewhere; the target is
    `softmax(p_d / T)`: nearly uniform, with a small peak at the label.
    """
    return ops.exp(_virtual_teacher_log_probs(y, num_classes, correct_prob, temperature))


def _virtual_teacher_log_probs(y, num_classes, correct_prob, temperature):
    q = _one_hot(y, num_classes)
    other = (1.0 - correct_prob) / (num_classes - 1)
    p_d = q * correct_prob + (1.0 - q) * other
    return ops.log_softmax(p_d / temperature, axis=-1)


def wsl_sample_weights(teacher_logits, student_logits, y, eps: float = 1e-7):
    """WSL's per-sample weights `1 - exp(-CE(y, z_s) / CE(y, z_t))`, shape (B,).

    Computed at T=1 on gradient-free logits; the ratio is clamped at 0, so
    the weight lies in [0, 1): near 0 where the student already beats the
    teacher on the sample (a "regularisation sample"), near 1 where it lags.
    """
    z_t = ops.stop_gradient(as_float32(teacher_logits))
    z_s = ops.stop_gradient(as_float32(student_logits))
    q = _one_hot(y, z_s.shape[-1])
    ce_s = -ops.sum(q * ops.log_softmax(z_s, axis=-1), axis=-1)
    ce_t = -ops.sum(q * ops.log_softmax(z_t, axis=-1), axis=-1)
    ratio = ops.maximum(ce_s / (ce_t + eps), 0.0)
    return 1.0 - ops.exp(-ratio)


def dkd_per_sample(teacher_logits, student_logits, y, temperature: float = 4.0):
    """Per-sample (TCKD, NCKD), both times `T^2`, shapes (B,) each.

    TCKD is the binary KL between `[p_target, 1 - p_target]` of teacher and
    student at temperature T; NCKD the KL between their distributions over
    the non-target classes (target logit masked out, the rest renormalised).
    Plain KD per sample equals `TCKD + (1 - p_t_target) * NCKD`. `temperature`: a
    number, or a scalar tensor (CTKD's learned one).
    """
    t = float(temperature) if isinstance(temperature, (int, float)) else as_float32(temperature)
    z_t = as_float32(teacher_logits) / t
    z_s = as_float32(student_logits) / t
    mask = _one_hot(y, z_s.shape[-1])

    def binary_log_probs(z):
        log_all = ops.logsumexp(z, axis=-1)
        log_target = ops.sum(mask * z, axis=-1) - log_all
        log_other = ops.logsumexp(z + _MASK_FILL * mask, axis=-1) - log_all
        return ops.stack([log_target, log_other], axis=-1)

    tckd = kl_div(binary_log_probs(z_t), binary_log_probs(z_s))
    log_nt_t = ops.log_softmax(z_t + _MASK_FILL * mask, axis=-1)
    log_nt_s = ops.log_softmax(z_s + _MASK_FILL * mask, axis=-1)
    per_class = ops.exp(log_nt_t) * (log_nt_t - log_nt_s)
    nckd = ops.sum(ops.where(mask > 0, 0.0, per_class), axis=-1)
    return tckd * (t * t), nckd * (t * t)


@register_method("lsr")
class LSR(Method):
    """Label smoothing: `CE(q', z_s)` with `q' = (1 - eps) q + eps / K`.

    Teacher-free. It replaces the plain cross-entropy, so train it with
    `Distiller(None, student, [LSR()], student_loss_weight=0.0)` (its
    `default_student_loss_weight`).

    Example:

    >>> import numpy as np
    >>> z = np.zeros((2, 4), "float32")
    >>> round(float(LSR(epsilon=0.1).compute_loss(None, {"logits": z}, np.array([0, 1]))), 4)
    1.3863
    """

    default_weight = 1.0
    search_space = {"epsilon": Float(0.02, 0.4, log=True)}
    #: the smoothed CE replaces the plain one
    default_student_loss_weight = 0.0
    requires_teacher = False

    def __init__(self, epsilon: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"LSR epsilon must be in [0, 1], got {epsilon!r}.")
        self.epsilon = float(epsilon)

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        log_ps = log_softmax_t(student[LOGITS], 1.0)
        k = log_ps.shape[-1]
        target = (1.0 - self.epsilon) * _one_hot(y, k) + self.epsilon / k
        return ops.mean(-ops.sum(target * log_ps, axis=-1))

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@register_method("virtual_teacher", "tfkd_reg")
class VirtualTeacher(Method):
    """Tf-KD's virtual teacher: `KL(softmax(p_d / T) || softmax(z_s))`.

    `p_d` puts `correct_prob` on the label and spreads the rest evenly (see
    `virtual_teacher_distribution`); the student is taken at T=1, the KL is
    summed over classes and averaged over the batch. No teacher network.

    Weight: the reference code computes `(1 - alpha) * CE + alpha * m *
    KLDivLoss()`, where `KLDivLoss()` also averages over the K classes; the
    same objective here is `student_loss_weight = 1 - alpha` and
    `weight = alpha * m / K`. The default 0.1 is its ResNet18/CIFAR-100
    setting (alpha 0.1, m 100, K 100), to pair with `student_loss_weight=0.9`.
    """

    default_weight = 0.1
    search_space = {"correct_prob": Float(0.5, 0.999), "temperature": Float(2.0, 40.0, log=True)}
    #: `1 - alpha` of the same ResNet18/CIFAR-100 setting
    default_student_loss_weight = 0.9
    requires_teacher = False

    def __init__(self, correct_prob: float = 0.99, temperature: float = 20.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < correct_prob < 1.0:
            raise ValueError(
                f"VirtualTeacher correct_prob must be in (0, 1), got {correct_prob!r}."
            )
        self.correct_prob = float(correct_prob)
        self.temperature = _check_positive("VirtualTeacher", "temperature", temperature)

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        log_ps = log_softmax_t(student[LOGITS], 1.0)
        log_target = _virtual_teacher_log_probs(
            y, log_ps.shape[-1], self.correct_prob, self.temperature
        )
        return ops.mean(kl_div(log_target, log_ps))

    def get_config(self):
        return {
            **super().get_config(),
            "correct_prob": self.correct_prob,
            "temperature": self.temperature,
        }


@register_method("wsl")
class WSL(LogitMethod):
    """Weighted soft labels: `T^2 * mean(w * H(p_t^T, p_s^T))`.

    `w = 1 - exp(-CE(y, z_s) / CE(y, z_t))` per sample (`wsl_sample_weights`)
    turns down the soft labels where the student already beats the teacher,
    the samples that carry the bias soft labels add. `H` is the
    cross-entropy; the paper's `CE` part is the Distiller's student loss.
    `standardize=True` standardises the logits of the soft-label term only: the
    weights compare each network's CE on the label, from its own logits.
    """

    default_weight = 2.25
    search_space = {"temperature": Float(1.0, 10.0, log=True)}

    def __init__(self, temperature: float = 4.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = _check_positive("WSL", "temperature", temperature)

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        t = self.temperature
        w = wsl_sample_weights(teacher[LOGITS], student[LOGITS], y)
        z_t, z_s = self.logit_pair(teacher, student)
        log_pt = log_softmax_t(z_t, t)
        log_ps = log_softmax_t(z_s, t)
        soft_ce = -ops.sum(ops.exp(log_pt) * log_ps, axis=-1)
        return ops.mean(w * soft_ce) * (t * t)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@register_method("dkd")
class DKD(LogitMethod):
    """Decoupled KD: `warmup * (alpha * TCKD + beta * NCKD)`, both at T, times T^2.

    Returns `{"tckd": ..., "nckd": ...}`, each already scaled by its
    coefficient and the warm-up, logged as `dkd_tckd` and `dkd_nckd`.

    Warm-up: the factor is `min((epoch + 1) / warmup_epochs, 1)` with the
    0-based epoch of the step context (`StepContext.epoch`), i.e.
    mdistiller's `min(epoch / warmup, 1)` with epochs counted from 1: the
    first epoch trains at `1 / warmup_epochs` and epoch index
    `warmup_epochs - 1` reaches the full term. The Distiller keeps that epoch
    equal to Keras' epoch index, so a resume with `fit(initial_epoch=e)`
    continues the ramp. `warmup_epochs=0` turns it off, and so does using the
    method outside a Distiller (no epoch).

    `warmup_fraction` scales the warm-up with the run instead: it then lasts
    `max(1, ceil(warmup_fraction * epochs))` epochs of the `fit` (`epochs=`
    of the call; the published 20 of 240 epochs is `1 / 12`), so a short run
    still reaches the full term; `warmup_epochs` is then used only without
    a known run length.

    `alpha`, `beta` and `temperature` left as None are 1, 8 and 4, or with
    `standardize=True` the logit-standardisation reference's 9, 72 and 2 (its
    `alpha` and `beta` times its KD weight 9, at its base temperature).
    """

    default_weight = 1.0
    search_space = {"weight": None, "alpha": Float(0.25, 4.0, log=True), "beta": Float(1.0, 16.0, log=True),
                    "temperature": Float(1.0, 10.0, log=True), "warmup_fraction": Float(0.01, 0.5)}
    log_keys = ("tckd", "nckd")
    #: the recipes' warm-up: the published 20 of 240 epochs as a twelfth of any run (the
    #: class's own 20 epochs would leave a 5-epoch run at a quarter of the term), unless
    #: the user fixes warmup_epochs or warmup_fraction
    run_length_defaults = {"warmup_fraction": 20 / 240}
    run_length_unless = ("warmup_epochs", "warmup_fraction")
    standardized_defaults = {"alpha": 9.0, "beta": 72.0, "temperature": 2.0}

    def __init__(
        self,
        alpha: float | None = None,
        beta: float | None = None,
        temperature: float | None = None,
        warmup_epochs: int = 20,
        warmup_fraction: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if warmup_epochs < 0:
            raise ValueError(f"DKD warmup_epochs must be >= 0, got {warmup_epochs!r}.")
        if warmup_fraction is not None and not 0.0 < warmup_fraction <= 1.0:
            raise ValueError(f"DKD warmup_fraction must be in (0, 1], got {warmup_fraction!r}.")
        self.alpha = float(self.setting("alpha", alpha, 1.0))
        self.beta = float(self.setting("beta", beta, 8.0))
        self.temperature = _check_positive("DKD", "temperature", self.setting("temperature", temperature, 4.0))
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_fraction = None if warmup_fraction is None else float(warmup_fraction)

    def warmup_factor(self, context: StepContext | None = None):
        """The warm-up multiplier at `context`'s epoch, a float32 scalar in (0, 1]."""
        return epoch_warmup(context, self.warmup_epochs, self.warmup_fraction)

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        z_t, z_s = self.logit_pair(teacher, student)
        tckd, nckd = dkd_per_sample(z_t, z_s, y, self.temperature)
        factor = self.warmup_factor(context)
        return {
            "tckd": factor * self.alpha * ops.mean(tckd),
            "nckd": factor * self.beta * ops.mean(nckd),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "beta": self.beta,
            "temperature": self.temperature,
            "warmup_epochs": self.warmup_epochs,
            "warmup_fraction": self.warmup_fraction,
        }

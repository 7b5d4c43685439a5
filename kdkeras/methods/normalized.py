"""Normalised KD and its teacher-free form (Yang et al., ICCV 2023, "From Knowledge
Distillation to Self-Knowledge Distillation").

`NKD` splits KD into the target class, matched at T=1 by the teacher's target
probability, and the non-target classes, each network's renormalised over the
non-target classes alone (so their sums are equal). `USKD` makes both soft labels
without a teacher: the target one from the student's own target probability, the
non-target one as Zipf's law over a ranking of the classes, ranked by the final
logits and a weak head on a middle stage trained on smoothed labels.

Both follow the cls_KD reference code (its `nkd.py` and `uskd.py`) with integer
labels. That code's NKD once built its non-target mask wrongly (cls_KD issue 16:
`scatter_(1, label, 1)`, which keeps the target class in the "non-target" softmax);
here the target class is always left out, as the paper's formula and the fixed
reference do.
"""

from __future__ import annotations

import keras
from keras import ops

from kdkeras import tap_detection
from kdkeras.keys import LOGITS
from kdkeras.methods.base import Method, StepContext, as_float32, check_weight, sparse_labels
from kdkeras.methods.logits import _check_positive
from kdkeras.methods.registry import register_method
from kdkeras.methods.standardize import LogitMethod
from kdkeras.replicas import gather_batch
from kdkeras.search_space import Float

# Added to the target logit so that the non-target softmax gives it exactly 0.
_MASK_FILL = -1e9


def _target_mask(y, num_classes: int):
    return ops.one_hot(sparse_labels(y), num_classes, dtype="float32")


def non_target_log_softmax(logits, mask):
    """log-softmax over the non-target classes only (target's entry: about -1e9), (B, K)."""
    return ops.log_softmax(as_float32(logits) + _MASK_FILL * mask, axis=-1)


def non_target_cross_entropy(target_probs, log_probs, mask):
    """Per-sample `-sum_{k != y} p_k log q_k`, the target class left out, (B,)."""
    per_class = ops.where(mask > 0, 0.0, target_probs * log_probs)
    return -ops.sum(per_class, axis=-1)


@register_method("nkd")
class NKD(LogitMethod):
    """Normalised KD: `target + non_target`, both averaged over the batch.

    With `y` the label, `p^T = softmax(z / T)` and `p~^T` the softmax over the
    non-target classes alone (the target dropped, the rest renormalised):
    `target = -p_t[y] * log p_s[y]` at T=1 (the teacher's target probability as
    the soft label), and `non_target = -gamma * T^2 * sum_{k != y} p~_t^T[k] log
    p~_s^T[k]`. Returned as `{"target", "non_target"}`. The non-target part is a
    cross-entropy as the reference computes it (its value includes the teacher's
    non-target entropy, a constant: the gradient is the KL's). The reference's
    mask bug (cls_KD issue 16) is not reproduced: the target is always left out.

    Defaults: the reference's CIFAR-100 setting (`temperature=3`, `gamma=3.5`;
    its ImageNet one is 1 and 1.5), weight 1 beside the CE at 1.
    `standardize=True` z-scores both networks' logits first (no published setting).

    Example:

    >>> import numpy as np
    >>> z = np.array([[0.0, 0.0, 0.0, 0.0]], "float32")
    >>> parts = NKD(temperature=1.0, gamma=1.0).compute_loss({"logits": z}, {"logits": z}, np.array([0]))
    >>> round(float(parts["target"]), 4), round(float(parts["non_target"]), 4)
    (0.3466, 1.0986)
    """

    default_weight = 1.0
    default_student_loss_weight = 1.0
    search_space = {"temperature": Float(1.0, 8.0, log=True), "gamma": Float(0.5, 8.0, log=True)}
    log_keys = ("target", "non_target")

    def __init__(self, temperature: float = 3.0, gamma: float = 3.5, **kwargs):
        super().__init__(**kwargs)
        self.temperature = _check_positive("NKD", "temperature", temperature)
        self.gamma = check_weight(gamma, "NKD gamma")

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        z_t, z_s = self.logit_pair(teacher, student)
        mask = _target_mask(y, z_s.shape[-1])
        p_t = ops.softmax(z_t, axis=-1)
        log_ps = ops.log_softmax(z_s, axis=-1)
        target = -ops.mean(ops.sum(mask * ops.stop_gradient(p_t) * log_ps, axis=-1))
        t = self.temperature
        log_nt_t = non_target_log_softmax(z_t / t, mask)
        log_nt_s = non_target_log_softmax(z_s / t, mask)
        non_target = ops.mean(non_target_cross_entropy(ops.exp(log_nt_t), log_nt_s, mask))
        return {"target": target, "non_target": self.gamma * t * t * non_target}

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "gamma": self.gamma}


def zipf_non_target_labels(rank_score, mask):
    """USKD's non-target soft labels, (B, K): each class gets `1 / (its place + 1)` in
    the descending order of `rank_score` (every class ranked, the target included, as the
    reference ranks them), then the target is dropped and the rest sum to 1."""
    place = ops.argsort(ops.argsort(-rank_score, axis=-1), axis=-1)
    zipf = 1.0 / (ops.cast(place, "float32") + 1.0)
    zipf = zipf * (1.0 - mask)
    return zipf / ops.sum(zipf, axis=-1, keepdims=True)


@register_method("uskd")
class USKD(Method):
    """Teacher-free NKD: `alpha * target + beta * non_target + weak`, batch means.

    With `s = softmax(z_s)` at T=1 and the label `y`: the target soft label is
    `p = s[y]^2 + 1 - mean_batch(s[y]^2)` (gradient-free; under several replicas the
    global batch's mean), `target = -p * log s[y]`.
    A weak head (a Dense part from the pooled `student_layers` map, by default the
    stage before the last, to the classes) gives `w = softmax(fc(f))`, trained on
    smoothed labels `0.9 * onehot + 0.1 / K`: `weak = -mu * sum_k q_k log w_k`. The
    classes are ranked by `w / (1 - w[y] + 1e-6) + log s / (1 - log s[y] + 1e-6)`
    (the student's log-probabilities, as the reference code computes the rank), Zipf's
    law `1 / place` over that order gives the non-target soft labels
    (`zipf_non_target_labels`), and `non_target = -sum_{k != y} zipf_k * log s~[k]`
    with `s~` the student's softmax over the non-target classes. Returned as
    `{"target", "non_target", "weak"}`, each with its coefficient.

    Defaults: the reference's CIFAR-100 setting (`alpha=0.1`, `beta=0.1`, `mu=0.1`;
    its ImageNet one is 1, 0.1, 0.005), weight 1 beside the CE at 1. The weak head
    trains with the student and is never exported with it.
    """

    default_weight = 1.0
    default_student_loss_weight = 1.0
    requires_teacher = False
    uses_teacher_logits = False
    search_space = {"weight": None, "alpha": Float(0.02, 2.0, log=True), "beta": Float(0.02, 1.0, log=True),
                    "mu": Float(0.002, 0.5, log=True)}
    log_keys = ("target", "non_target", "weak")

    def __init__(self, alpha: float = 0.1, beta: float = 0.1, mu: float = 0.1, teacher_layers=None, **kwargs):
        if teacher_layers:
            raise ValueError(f"USKD reads no teacher: got teacher_layers={teacher_layers!r}.")
        super().__init__(teacher_layers=[], **kwargs)
        self.alpha = check_weight(alpha, "USKD alpha")
        self.beta = check_weight(beta, "USKD beta")
        self.mu = check_weight(mu, "USKD mu")

    def default_taps(self, model, role):
        if role != "student":
            return []
        stages = tap_detection.stage_outputs(model)
        return [stages[max(len(stages) - 2, 0)]]

    def build_parts(self, teacher_shapes, student_shapes):
        (tap,) = self._one_tap()
        shape = student_shapes[tap]
        if len(shape) not in (2, 4):
            raise ValueError(f"USKD reads a (B, C) or (B, H, W, C) map; student layer {tap!r} gives {shape}.")
        self.weak_head = keras.layers.Dense(student_shapes[LOGITS][-1], name="weak_head")
        self.weak_head.build((None, shape[-1]))

    def _one_tap(self):
        student = self.tap_names()[1]
        if len(student) != 1:
            raise ValueError(f"USKD reads exactly one student layer, got {student}.")
        return student

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        z_s = as_float32(student[LOGITS])
        (tap,) = self._one_tap()
        feature = as_float32(student[tap])
        if len(feature.shape) == 4:
            feature = ops.mean(feature, axis=(1, 2))
        k = z_s.shape[-1]
        mask = _target_mask(y, k)
        log_s = ops.log_softmax(z_s, axis=-1)
        log_s_y = ops.sum(mask * log_s, axis=-1)
        s_y_sq = ops.exp(2.0 * log_s_y)
        # the batch mean over the global batch: N replicas give one device's soft labels
        soft_target = ops.stop_gradient(s_y_sq + 1.0 - ops.mean(gather_batch(s_y_sq)))
        target = -ops.mean(soft_target * log_s_y)

        log_w = ops.log_softmax(as_float32(self.weak_head(feature)), axis=-1)
        smoothed = 0.9 * mask + 0.1 / k
        weak = -ops.mean(ops.sum(self.mu * smoothed * log_w, axis=-1))

        w = ops.exp(log_w)
        w_y = ops.sum(mask * w, axis=-1, keepdims=True)
        rank = w / (1.0 - w_y + 1e-6) + log_s / (1.0 - log_s_y[:, None] + 1e-6)
        zipf = ops.stop_gradient(zipf_non_target_labels(rank, mask))
        log_nt_s = non_target_log_softmax(z_s, mask)
        non_target = ops.mean(non_target_cross_entropy(zipf, log_nt_s, mask))
        return {"target": self.alpha * target, "non_target": self.beta * non_target, "weak": weak}

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "mu": self.mu}

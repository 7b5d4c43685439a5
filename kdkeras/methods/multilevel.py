"""Multi-level logit distillation (MLKD, Jin et al., CVPR 2023): the student's
probabilities match the teacher's at three levels, each at several temperatures,
over a weak and a strong augmented view of every batch.

* instance level: KD's `T^2 * KL(p_t || p_s)` per sample;
* batch level: the (B, B) Gram matrix `P P^T` of the batch's probabilities (how
  alike the samples are), squared differences summed and divided by B;
* class level: the (C, C) Gram matrix `P^T P` (how alike the classes are across
  the batch), squared differences summed and divided by C.

The teacher's weak-view confidence (its max probability at T = 1) masks the weak-view
terms against the batch median, and its per-class summed probability the class level.
The strong view (`kdkeras.data.load(..., strong_view=True)`) comes to the method as
`keys.strong_key(entry)` entries, which the Distiller fills from one pass of each
network over both views.
"""

from __future__ import annotations

import math
from typing import Sequence

from keras import ops

from kdkeras.keys import LOGITS, strong_key
from kdkeras.methods.base import Method, StepContext, as_float32, kl_div
from kdkeras.methods.registry import register_method
from kdkeras.search_space import Choice

#: the reference's temperatures: its base T = 4, then 3, 5, 2, 6
TEMPERATURES = (4.0, 3.0, 5.0, 2.0, 6.0)
#: how the confidence masks weigh the weak-view terms (see `MLKD`)
MASKS = ("reference", "sample", "none")


def median(values):
    """The median of a 1-D tensor as NumPy's `percentile(values, 50)` gives it (the
    mean of the two middle values for an even count)."""
    ordered = ops.sort(values)
    n = ops.shape(ordered)[0]
    return (ops.take(ordered, (n - 1) // 2) + ops.take(ordered, n // 2)) / 2.0


def confidence_masks(teacher_logits):
    """(sample mask (B,), class mask (C,)) as float32 0/1: samples whose teacher max
    probability is <= the batch median, classes whose summed teacher probability over
    the batch is <= the median over classes (the reference's `le` tests, at T = 1)."""
    probs = ops.softmax(as_float32(teacher_logits), axis=-1)
    confidence = ops.max(probs, axis=-1)
    per_class = ops.sum(probs, axis=0)
    sample = ops.cast(confidence <= median(confidence), "float32")
    return sample, ops.cast(per_class <= median(per_class), "float32")


def _gram_gap(p_t, p_s, row_weight, transpose: bool):
    """Row-weighted sum of squared differences of two Gram matrices, divided by their size:
    `P P^T` (batch level, B x B) or, with `transpose`, `P^T P` (class level, C x C)."""
    if transpose:
        p_t, p_s = ops.transpose(p_t), ops.transpose(p_s)
    gap = (ops.matmul(p_t, ops.transpose(p_t)) - ops.matmul(p_s, ops.transpose(p_s))) ** 2
    size = ops.cast(ops.shape(gap)[0], "float32")
    return ops.sum(ops.sum(gap, axis=1) * row_weight) / size


@register_method("mlkd")
class MLKD(Method):
    """MLKD: instance-, batch- and class-level alignment at several temperatures.

    With `p = softmax(z / T)` of each network for every T in `temperatures`, the
    weak view's logits z and the strong view's z', the teacher's sample mask m (B,)
    and class mask c (C,) (`confidence_masks`):

        instance = sum_T [ w(m, T^2 KL_b) + mean_b T^2 KL(p'_t || p'_s) ]
        batch    = sum_T w(m, rows of (P_t P_t^T - P_s P_s^T)^2) / B
        class    = sum_T w(c, rows of (P_t^T P_t - P_s^T P_s)^2) / C

    returned as `{"instance", "batch", "class"}`. `mask` says what w is:
    "reference" (the released code's numbers) multiplies the unmasked term by the
    mask's mean (its masks meet terms already reduced to scalars, so they scale them
    by the fraction kept, about 1/2); "sample" weighs each sample's KL and each
    Gram row by its mask (the per-sample reading; the mean over samples for KL);
    "none" weighs nothing. Without a strong view (evaluation, a lone call) the
    strong-view instance term is left out.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]], "float32")
    >>> parts = MLKD().compute_loss({"logits": z}, {"logits": z}, None)
    >>> sorted(parts), [round(float(v), 6) for v in parts.values()]
    (['batch', 'class', 'instance'], [0.0, 0.0, 0.0])
    """

    #: the reference's KD weight 0.9, on every sub-term
    default_weight = 0.9
    #: the reference's CE weight 0.1, on each view (the Distiller sums the CE of both)
    default_student_loss_weight = 0.1
    requires_strong_view = True
    log_keys = ("instance", "batch", "class")
    search_space = {"mask": Choice(MASKS)}

    def __init__(self, temperatures: Sequence[float] = TEMPERATURES, mask: str = "reference", **kwargs):
        super().__init__(**kwargs)
        self.temperatures = _check_temperatures(temperatures)
        if mask not in MASKS:
            raise ValueError(f"MLKD mask must be one of {list(MASKS)}, got {mask!r}.")
        self.mask = mask

    def _weigh(self, rows, mask):
        """A (B,)/(C,) vector of per-row values reduced as `mask` says (see the class)."""
        if self.mask == "sample":
            return rows * mask
        if self.mask == "reference":
            return rows * ops.mean(mask)
        return rows

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        strong = strong_key(LOGITS)
        if (strong in teacher) != (strong in student):
            has = "teacher" if strong in teacher else "student"
            raise ValueError(
                f"MLKD got the strong view's {strong!r} from the {has} only: the teacher cache (or the "
                "outputs given) must hold both views, e.g. a cache built from strong_view=True data.")
        z_t, z_s = as_float32(teacher[LOGITS]), as_float32(student[LOGITS])
        sample_mask, class_mask = confidence_masks(z_t)
        instance = batch = classes = ops.zeros(())
        for t in self.temperatures:
            log_pt = ops.log_softmax(z_t / t, axis=-1)
            log_ps = ops.log_softmax(z_s / t, axis=-1)
            p_t, p_s = ops.exp(log_pt), ops.exp(log_ps)
            instance += ops.mean(self._weigh(kl_div(log_pt, log_ps), sample_mask)) * (t * t)
            batch += _gram_gap(p_t, p_s, self._weigh(ops.ones_like(sample_mask), sample_mask), False)
            classes += _gram_gap(p_t, p_s, self._weigh(ops.ones_like(class_mask), class_mask), True)
            if strong in student:
                log_qt = ops.log_softmax(as_float32(teacher[strong]) / t, axis=-1)
                log_qs = ops.log_softmax(as_float32(student[strong]) / t, axis=-1)
                instance += ops.mean(kl_div(log_qt, log_qs)) * (t * t)
        return {"instance": instance, "batch": batch, "class": classes}

    def get_config(self):
        return {**super().get_config(), "temperatures": list(self.temperatures), "mask": self.mask}


def _check_temperatures(values) -> tuple[float, ...]:
    """`values` as a tuple of floats when it is a non-empty sequence of finite numbers > 0."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    try:
        temps = tuple(float(v) for v in values)
        bad = isinstance(values, str) or any(isinstance(v, bool) for v in values)
    except (TypeError, ValueError):
        temps, bad = (), True
    if bad or not temps or not all(math.isfinite(t) and t > 0 for t in temps):
        raise ValueError(f"MLKD temperatures must be a non-empty list of finite numbers > 0, got {values!r}.")
    return temps

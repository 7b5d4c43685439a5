"""Token distillation: DeiT's distillation token on a vision-transformer student.

The student (a zoo `deit_*` model, or any functional model with a class head and
a distillation head) has two heads on two tokens. `DeiT` trains the class head
on the labels and the distillation head on the teacher, hard (its argmax) or
soft (its tempered distribution); the model's output, their average, is what
`predict`, evaluation and export see.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from kdkeras import taps as taps_lib
from kdkeras.keys import CLS_HEAD, DIST_HEAD, LOGITS
from kdkeras.methods.base import Method, StepContext, as_float32, sparse_labels
from kdkeras.methods.registry import register_method
from kdkeras.search_space import Choice, Float

VARIANTS = ("hard", "soft")


def _ce(labels, logits):
    """Mean sparse cross-entropy of float32 logits."""
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, as_float32(logits), from_logits=True))


@register_method("deit")
class DeiT(Method):
    """DeiT (Touvron et al., ICML 2021): a class head on the labels, a
    distillation head on the teacher.

    With `z_cls`, `z_dist` the student's two heads and `z_t` the teacher's logits:
    `cls = (1 - alpha) * mean_b CE(y, z_cls)` and `dist = alpha * D`, where
    `hard`: `D = mean_b CE(argmax z_t, z_dist)`, and `soft`:
    `D = tau^2 * sum_{b,k} p_t^tau (log p_t^tau - log p_dist^tau) / (B * K)` (the
    reference's KL, summed and divided by the element count, not the batch).
    Returned as `{"cls", "dist"}`; the student's own CE (on the averaged output)
    defaults to 0, since the class head's CE is inside the term.

    Example:

    >>> import numpy as np
    >>> z = np.array([[2.0, 0.0, 0.0]], "float32")
    >>> parts = DeiT(variant="soft").compute_loss(
    ...     {"logits": z}, {"cls_logits": z, "dist_logits": z}, np.array([0]))
    >>> round(float(parts["dist"]), 6)
    0.0
    """

    default_weight = 1.0
    #: the class head's CE is part of the term; CE on the averaged output is not in the recipe
    default_student_loss_weight = 0.0
    search_space = {"weight": None, "alpha": Float(0.1, 0.9), "tau": Float(0.5, 8.0, log=True),
                    "variant": Choice(VARIANTS)}
    log_keys = ("cls", "dist")
    #: the student must have a distillation token and head (benchmarks pick a ViT for it)
    requires_distillation_token = True

    def __init__(self, variant: str = "hard", alpha: float = 0.5, tau: float = 1.0, **kwargs):
        teacher_layers = kwargs.pop("teacher_layers", None)
        if teacher_layers:
            raise ValueError(f"DeiT reads the teacher's logits only; got teacher_layers={teacher_layers!r}.")
        super().__init__(teacher_layers=[], **kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"DeiT variant must be one of {list(VARIANTS)}, got {variant!r}.")
        self.variant = variant
        self.alpha = _number_in("alpha", alpha, 0.0, 1.0, closed=True)
        self.tau = _number_in("tau", tau, 0.0, math.inf, closed=False)
        if self.student_layers is not None and len(self.student_layers) != 2:
            raise ValueError(
                f"DeiT student_layers must name two layers, [class head, distillation head], "
                f"got {self.student_layers!r}.")

    def default_taps(self, model, role):
        if role != "student":
            return []
        names = set(taps_lib.all_layer_names(model))
        missing = [n for n in (CLS_HEAD, DIST_HEAD) if n not in names]
        if missing:
            raise ValueError(
                f"DeiT reads the student's class and distillation heads, layers {CLS_HEAD!r} and "
                f"{DIST_HEAD!r}, but model {model.name!r} lacks {missing}: use a student with a "
                "distillation token (zoo deit_micro or deit_tiny, kdkeras.models.build_vit("
                "distillation_token=True), or a keras-hub ViT through kdkeras.models.deit_from_keras_hub) "
                "or give student_layers=[class head, distillation head].")
        return [CLS_HEAD, DIST_HEAD]

    def match_taps(self, teacher_layers, student_layers):
        return [], list(student_layers)

    def heads(self) -> tuple[str, str]:
        """The student layers of the (class, distillation) heads: the plan's, else
        the declared ones, else `cls_logits` and `dist_logits`."""
        if self._built_taps is not None:
            return tuple(self._built_taps[1])
        return tuple(self.student_layers or (CLS_HEAD, DIST_HEAD))

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        cls_name, dist_name = self.heads()
        z_cls, z_dist = as_float32(student[cls_name]), as_float32(student[dist_name])
        z_t = ops.stop_gradient(as_float32(teacher[LOGITS]))
        base = _ce(sparse_labels(y), z_cls)
        if self.variant == "hard":
            distill = _ce(ops.cast(ops.argmax(z_t, axis=-1), "int32"), z_dist)
        else:
            log_pt = ops.log_softmax(z_t / self.tau, axis=-1)
            log_ps = ops.log_softmax(z_dist / self.tau, axis=-1)
            distill = ops.mean(ops.exp(log_pt) * (log_pt - log_ps)) * (self.tau * self.tau)
        return {"cls": (1.0 - self.alpha) * base, "dist": self.alpha * distill}

    def get_config(self):
        config = super().get_config()
        config.pop("teacher_layers", None)
        return {**config, "variant": self.variant, "alpha": self.alpha, "tau": self.tau}


def _number_in(name: str, value, low: float, high: float, closed: bool) -> float:
    """`value` as a float in [low, high] (`closed`) or (low, high), else a ValueError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    inside = low <= number <= high if closed else low < number < high
    if isinstance(value, bool) or not inside:
        bounds = f"[{low:g}, {high:g}]" if closed else f"> {low:g}"
        raise ValueError(f"DeiT {name} must be a finite number {'in ' if closed else ''}{bounds}, got {value!r}.")
    return number

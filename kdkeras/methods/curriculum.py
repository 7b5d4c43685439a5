"""Curriculum temperature KD (CTKD; Li et al., AAAI 2023): a learned temperature.

The temperature is a trainable part of the method, `T = t_min + t_range *
sigmoid(g)` from one scalar `g` (the reference's global temperature module), and is
trained adversarially: a gradient-reversal layer between `g` and `T` hands `g` the
distillation loss's gradient times `-lambda`, so the temperature moves to make the
term harder while the student makes it easier. `lambda` follows a cosine curriculum
from 0 to `lambda_max` over the first epochs (`reversal_strength`), then stays there.

`CTKD` is KD and `CTDKD` is DKD at that temperature: two registered methods rather
than a flag on `KD` and `DKD`, so each has its own defaults, search space and
run-length curriculum, and `kd`/`dkd` keep their arguments and configs unchanged.
The reference code is zhengli97/CTKD (its global temperature module, gradient
reversal and cosine decay of the reversal strength); its instance-wise temperature
is not built here.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from kdkeras.methods.base import StepContext
from kdkeras.methods.logits import _check_positive, kd_loss
from kdkeras.methods.registry import register_method
from kdkeras.methods.soft_labels import DKD, dkd_per_sample
from kdkeras.methods.standardize import LogitMethod
from kdkeras.search_space import Float


def gradient_reversal(x, strength):
    """`x` unchanged in the forward pass; its gradient times `-strength` in the backward one.

    Written as `sg(x) + (-strength) * (x - sg(x))` (`sg`: stop-gradient): the forward
    value is `x` exactly and the gradient reaching `x` is `-strength` times the one
    that reaches the output, on any backend.
    """
    x = ops.convert_to_tensor(x)
    held = ops.stop_gradient(x)
    return held + (-ops.stop_gradient(strength)) * (x - held)


def reversal_strength(epoch, length, lambda_max: float = 1.0):
    """The curriculum's `lambda` at 0-based `epoch` of a curriculum `length` epochs long:
    `lambda_max * (1 - cos(pi * min(epoch + 1, length) / length)) / 2`, float32.

    The reference's cosine decay of the reversal factor from 0 to `-lambda_max` over
    epochs 1..length (counted from 1, as it counts them), reaching `lambda_max` at
    epoch index `length - 1` and staying there.
    """
    length = ops.cast(length, "float32")
    step = ops.minimum(ops.cast(epoch, "float32") + 1.0, length)
    return lambda_max * 0.5 * (1.0 - ops.cos(math.pi * step / length))


class CurriculumTemperature(keras.layers.Layer):
    """The learned global temperature and its curriculum, a trainable part of a method.

    `self(strength)` is `t_min + t_range * sigmoid(gradient_reversal(g, strength))`;
    `strength(context)` the curriculum's `lambda` at the step context's epoch.

    Args:
        t_min, t_range: the temperature lies in (t_min, t_min + t_range) (the reference's
            `t_start` 1 and `t_end` 20).
        initial_logit: the initial `g` (the reference's 1: T starts at about 15.6).
        lambda_max: the strength the curriculum reaches (the reference's 1).
        curriculum_epochs: the curriculum's length in epochs (the reference's 10 of 240;
            0: full strength from the start).
        curriculum_fraction: the length as a fraction of the run instead,
            `max(1, ceil(fraction * epochs))`, when the run's length is known.
    """

    def __init__(self, t_min: float = 1.0, t_range: float = 20.0, initial_logit: float = 1.0,
                 lambda_max: float = 1.0, curriculum_epochs: int = 10,
                 curriculum_fraction: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.t_min = _check_positive("CTKD", "t_min", t_min)
        self.t_range = _check_positive("CTKD", "t_range", t_range)
        self.initial_logit = float(initial_logit)
        if not math.isfinite(self.initial_logit):
            raise ValueError(f"CTKD initial_logit must be a finite number, got {initial_logit!r}.")
        self.lambda_max = _check_positive("CTKD", "lambda_max", lambda_max)
        if isinstance(curriculum_epochs, bool) or int(curriculum_epochs) != curriculum_epochs or curriculum_epochs < 0:
            raise ValueError(f"CTKD curriculum_epochs must be an integer >= 0, got {curriculum_epochs!r}.")
        self.curriculum_epochs = int(curriculum_epochs)
        if curriculum_fraction is not None and not 0.0 < curriculum_fraction <= 1.0:
            raise ValueError(f"CTKD curriculum_fraction must be in (0, 1], got {curriculum_fraction!r}.")
        self.curriculum_fraction = None if curriculum_fraction is None else float(curriculum_fraction)

    def build(self, input_shape=None):
        """Create `g`: in the method's `build_parts`, so under the Distiller's strategy scope
        (or on the first call outside a Distiller)."""
        if self.built:
            return
        self.logit = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.initial_logit),
                                     name="logit", dtype="float32")
        self.built = True

    def strength(self, context: StepContext | None):
        """`lambda` at `context`'s epoch; `lambda_max` outside a Distiller (no epoch)."""
        epoch = None if context is None else context.epoch
        full = ops.convert_to_tensor(self.lambda_max, "float32")
        if epoch is None:
            return full
        if self.curriculum_fraction is not None and context.epochs is not None:
            run = ops.cast(context.epochs, "float32")
            length = ops.maximum(ops.ceil(self.curriculum_fraction * run), 1.0)
        elif self.curriculum_epochs == 0:
            return full
        else:
            length = float(self.curriculum_epochs)
        return reversal_strength(epoch, length, self.lambda_max)

    def call(self, strength):
        g = gradient_reversal(self.logit, strength)
        return self.t_min + self.t_range * ops.sigmoid(g)

    def value(self) -> float:
        """The current temperature, as a Python float (for logs and tests)."""
        self.build()
        return float(self.t_min + self.t_range * ops.sigmoid(self.logit))

    def get_config(self):
        return {**super().get_config(), **curriculum_args(self)}


_ARGS = ("t_min", "t_range", "initial_logit", "lambda_max", "curriculum_epochs", "curriculum_fraction")


def curriculum_args(obj) -> dict:
    """The curriculum temperature's arguments as `obj` holds them."""
    return {name: getattr(obj, name) for name in _ARGS}


def _mirror_args(method) -> None:
    """The temperature module's (checked) arguments as the method's own attributes, as each
    method holds its hyper-parameters."""
    for name, value in curriculum_args(method.temperature_module).items():
        setattr(method, name, value)


_CTKD_SPACE = {"t_range": Float(5.0, 40.0, log=True), "lambda_max": Float(0.25, 2.0, log=True),
               "curriculum_fraction": Float(0.01, 0.5)}


def _refuse_temperature(owner: str, temperature) -> None:
    if temperature is not None:
        raise ValueError(f"{owner} learns its temperature: got temperature={temperature!r}; set "
                         "t_min and t_range (the range it is learned in) instead.")


class LearnedTemperature:
    """What CTKD and CTDKD share: the `CurriculumTemperature` part they own and read."""

    def _learn_temperature(self, owner: str, temperature, t_min, t_range, initial_logit, lambda_max,
                           curriculum_epochs, curriculum_fraction) -> None:
        _refuse_temperature(owner, temperature)
        self.temperature_module = CurriculumTemperature(
            t_min, t_range, initial_logit, lambda_max, curriculum_epochs, curriculum_fraction,
            name="temperature")
        _mirror_args(self)

    def temperature_value(self) -> float:
        """The learned temperature now."""
        return self.temperature_module.value()

    def build_parts(self, teacher_shapes, student_shapes):
        self.temperature_module.build()

    def step_temperature(self, context):
        """This step's temperature, its gradient reversed at the curriculum's strength."""
        return self.temperature_module(self.temperature_module.strength(context))


@register_method("ctkd")
class CTKD(LearnedTemperature, LogitMethod):
    """KD at a learned, adversarial temperature: `T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`.

    `T = t_min + t_range * sigmoid(g)` (`CurriculumTemperature`, a trainable part
    saved with the Distiller); `g` receives the term's gradient times `-lambda`, with
    `lambda` rising as a cosine from 0 to `lambda_max` over the curriculum (the first
    `curriculum_epochs`, or `curriculum_fraction` of the run: the recipes set the
    reference's 10 of 240 epochs as a 24th of any run). Outside a Distiller the
    strength is `lambda_max`. Defaults: the reference's CIFAR run (KD 0.9, CE 0.1,
    T in (1, 21) from g = 1). `standardize=True` z-scores the logits first (no
    published setting: weights stay as given).

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, 2.0, 3.0]], "float32")
    >>> ctkd = CTKD()
    >>> float(ctkd.compute_loss({"logits": z}, {"logits": z}, None)), round(ctkd.temperature_value(), 2)
    (0.0, 15.62)
    """

    default_weight = 0.9
    default_student_loss_weight = 0.1
    search_space = _CTKD_SPACE
    run_length_defaults = {"curriculum_fraction": 10 / 240}
    run_length_unless = ("curriculum_epochs", "curriculum_fraction")

    def __init__(self, t_min: float = 1.0, t_range: float = 20.0, initial_logit: float = 1.0,
                 lambda_max: float = 1.0, curriculum_epochs: int = 10,
                 curriculum_fraction: float | None = None, temperature=None, **kwargs):
        super().__init__(**kwargs)
        self._learn_temperature("CTKD", temperature, t_min, t_range, initial_logit, lambda_max,
                                curriculum_epochs, curriculum_fraction)

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        z_t, z_s = self.logit_pair(teacher, student)
        return kd_loss(z_t, z_s, self.step_temperature(context))

    def get_config(self):
        return {**super().get_config(), **curriculum_args(self.temperature_module)}


@register_method("ctdkd")
class CTDKD(LearnedTemperature, DKD):
    """DKD at CTKD's learned temperature: `warmup * (alpha * TCKD + beta * NCKD)` at `T`.

    `T` as in `CTKD` (`CurriculumTemperature`, adversarial, cosine curriculum); the rest,
    warm-up included, as `DKD` (alpha 1, beta 8, weight 1, CE 1). The recipes scale
    both the warm-up (a 12th of the run) and the curriculum (a 24th) with the run
    unless one of `warmup_epochs`, `warmup_fraction`, `curriculum_epochs`,
    `curriculum_fraction` is given. `standardize=True` has no published setting here.
    """

    search_space = {"weight": None, "alpha": Float(0.25, 4.0, log=True), "beta": Float(1.0, 16.0, log=True),
                    "warmup_fraction": Float(0.01, 0.5), **_CTKD_SPACE}
    run_length_defaults = {**DKD.run_length_defaults, "curriculum_fraction": 10 / 240}
    run_length_unless = (*DKD.run_length_unless, "curriculum_epochs", "curriculum_fraction")
    standardized_defaults = {}

    def __init__(self, t_min: float = 1.0, t_range: float = 20.0, initial_logit: float = 1.0,
                 lambda_max: float = 1.0, curriculum_epochs: int = 10,
                 curriculum_fraction: float | None = None, temperature=None, **kwargs):
        super().__init__(**kwargs)
        self.temperature = None  # learned: see temperature_module
        self._learn_temperature("CTDKD", temperature, t_min, t_range, initial_logit, lambda_max,
                                curriculum_epochs, curriculum_fraction)

    def compute_loss(self, teacher, student, y, context: StepContext | None = None):
        z_t, z_s = self.logit_pair(teacher, student)
        tckd, nckd = dkd_per_sample(z_t, z_s, y, self.step_temperature(context))
        factor = self.warmup_factor(context)
        return {"tckd": factor * self.alpha * ops.mean(tckd), "nckd": factor * self.beta * ops.mean(nckd)}

    def get_config(self):
        config = {**super().get_config(), **curriculum_args(self.temperature_module)}
        config.pop("temperature", None)
        return config

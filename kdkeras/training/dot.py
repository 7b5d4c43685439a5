"""DOT, the Distillation-Oriented Trainer (Zhao et al., ICCV 2023): SGD with one
momentum buffer for the task gradient and another for the distillation gradient.

The distillation gradient's buffer decays with `momentum + delta` and the task
gradient's with `momentum - delta`, so the update leans on the distillation
direction; a variable that only one part reaches (a connector: distillation only)
keeps plain `momentum`. It is an optimiser, not a loss: it combines with any
method. A `Distiller` hands it the two gradients apart (`kdkeras.split_gradients`);
anywhere else it is SGD with momentum. Weight decay is decoupled by default, as
Keras' SGD applies it, so `--optimizer=dot` changes only the momenta of an SGD
run; `decay="l2"` adds it to the gradient inside the momentum, as the reference.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf
from keras import ops

from kdkeras.distillation_optimizers import DOT_DEFAULT_DELTA

__all__ = ["DOT", "DEFAULT_DELTA", "DECAY_MODES"]

#: the momentum gap of mdistiller's DOT configs (SOLVER.DOT.DELTA)
DEFAULT_DELTA = DOT_DEFAULT_DELTA
#: how weight decay is applied: "decoupled" (Keras SGD's `w -= lr wd w`, outside the
#: momenta) or "l2" (torch SGD's and the reference's: `wd w` added to the gradient)
DECAY_MODES = ("decoupled", "l2")


def _check(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"DOT {name} must be a number in [{low}, {high}], got {value!r}.")
    return float(value)


@keras.saving.register_keras_serializable(package="kdkeras")
class DOT(keras.optimizers.Optimizer):
    """Distillation-Oriented Trainer: SGD with separate task and distillation momenta.

    Per variable, with task gradient g_t, distillation gradient g_d, weight
    decay wd (with `decay="l2"`, added to the gradient as in torch's SGD and
    the reference; by default decoupled: `w -= lr wd w` first, as Keras' SGD,
    and no `wd w` term below), m = momentum and d = delta:

        reached by both:  b_t = (m - d) b_t + g_t + wd w;  b_d = (m + d) b_d + g_d
        task only:        b_t = m b_t + g_t + wd w
        distill only:     b_d = m b_d + g_d + wd w
        w = w - lr (b_t + b_d)

    Buffers start at zero (the reference's first-step copy of the gradient is
    the same thing without dampening). Outside a `Distiller`, or with an
    ordinary gradient, every gradient counts as the task's: SGD with momentum m.

    Args:
        learning_rate: a float or a `keras.optimizers.schedules` schedule.
        momentum: the base momentum m (0.9 in the paper).
        delta: the gap d; m - d and m + d must lie in [0, 1] (default 0.075).
        weight_decay: the weight-decay factor (None or 0: none).
        decay: "decoupled" (default: as Keras' SGD, so DOT differs from the
            SGD run it replaces in its momenta only) or "l2" (in the gradient
            and the momentum, as mdistiller's DOT and torch's SGD).

    >>> opt = DOT(0.1, momentum=0.9, delta=0.075)
    >>> round(opt.task_momentum, 3), round(opt.distill_momentum, 3)
    (0.825, 0.975)
    """

    def __init__(self, learning_rate: Any = 0.05, momentum: float = 0.9, delta: float = DEFAULT_DELTA,
                 weight_decay: float | None = None, decay: str = "decoupled", name: str = "dot",
                 **kwargs: Any):
        for key in ("clipnorm", "global_clipnorm", "gradient_accumulation_steps"):
            if kwargs.get(key) is not None:
                raise ValueError(f"DOT does not take {key}={kwargs[key]!r}: it would mix the task and "
                                 "distillation gradients it keeps apart; accepted: None.")
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs)
        self.momentum = _check("momentum", momentum, 0.0, 1.0)
        self.delta = _check("delta", delta, 0.0, min(self.momentum, 1.0 - self.momentum))
        if decay not in DECAY_MODES:
            raise ValueError(f"DOT decay must be one of {list(DECAY_MODES)}, got {decay!r}.")
        self.decay = decay

    @property
    def task_momentum(self) -> float:
        return self.momentum - self.delta

    @property
    def distill_momentum(self) -> float:
        return self.momentum + self.delta

    def build(self, variables: Sequence) -> None:
        if self.built:
            return
        super().build(variables)
        self.task_momentums = self.add_optimizer_variables(variables, "task_momentum")
        self.distill_momentums = self.add_optimizer_variables(variables, "distill_momentum")

    def pack_split_gradients(self, task_grads: Sequence, distill_grads: Sequence, variables: Sequence) -> list:
        """One gradient per variable carrying both parts (`kdkeras.split_gradients`):
        the task gradient alone where only it exists, both stacked on a new first
        axis where both do, the distillation gradient under a new axis of one
        where only it does; None where neither. Which case a variable is in is
        read from the static shape in `update_step`."""
        packed = []
        for task, distill in zip(task_grads, distill_grads):
            if distill is None:
                packed.append(task)
                continue
            distill = tf.convert_to_tensor(distill)
            packed.append(distill[None] if task is None else tf.stack([tf.convert_to_tensor(task), distill]))
        return packed

    def _apply_weight_decay(self, variables):
        """Decoupled decay as Keras' optimisers apply it; with `decay="l2"` it
        enters the gradient in `update_step` instead."""
        if self.decay == "decoupled":
            super()._apply_weight_decay(variables)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        grad = ops.cast(gradient, variable.dtype)
        index = self._get_variable_index(variable)
        task_buf, distill_buf = self.task_momentums[index], self.distill_momentums[index]
        decay = (self.decay == "l2" and self.weight_decay is not None and self.weight_decay != 0
                 and self._use_weight_decay(variable))
        wd = ops.cast(self.weight_decay, variable.dtype) if decay else None

        def with_decay(g):
            return g if wd is None else g + wd * variable

        if len(grad.shape) == len(variable.shape):  # the task's alone (or an ordinary gradient)
            self.assign(task_buf, self.momentum * task_buf + with_decay(grad))
            self.assign_sub(variable, lr * task_buf)
        elif grad.shape[0] == 2:  # both parts
            self.assign(task_buf, self.task_momentum * task_buf + with_decay(grad[0]))
            self.assign(distill_buf, self.distill_momentum * distill_buf + grad[1])
            self.assign_sub(variable, lr * (task_buf + distill_buf))
        else:  # the distillation's alone
            self.assign(distill_buf, self.momentum * distill_buf + with_decay(grad[0]))
            self.assign_sub(variable, lr * distill_buf)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"momentum": self.momentum, "delta": self.delta, "decay": self.decay})
        return config

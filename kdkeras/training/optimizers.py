"""Optimisers and learning-rate schedules: SGD with momentum and a cosine or step
schedule as the published tables train, Adam, AdamW, and DOT (`kdkeras.training.dot`:
separate task and distillation momenta)."""

from __future__ import annotations

import keras

from kdkeras.training.dot import DEFAULT_DELTA, DOT

OPTIMIZERS = ("sgd", "adam", "adamw", "dot")
SCHEDULES = ("cosine", "step", "constant")


def make_schedule(
    lr: float, schedule: str, total_steps: int, milestones: tuple[float, ...] = (0.625, 0.75, 0.875)
):
    """A learning-rate schedule over `total_steps`.

    `step` multiplies by 0.1 at the given fractions of training (150/180/210 of
    240 epochs in the published CIFAR recipe); `cosine` decays to zero.
    """
    total_steps = max(int(total_steps), 1)
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps)
    if schedule == "step":
        # Keras keeps the old rate at a boundary step itself: the last step before each milestone
        bounds = sorted({max(0, int(f * total_steps) - 1) for f in milestones})
        values = [lr * (0.1**i) for i in range(len(bounds) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)
    raise ValueError(f"Unknown schedule {schedule!r}; accepted: {list(SCHEDULES)}.")


def make_optimizer(
    name: str = "sgd",
    lr: float = 0.05,
    total_steps: int = 1,
    schedule: str = "cosine",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    dot_delta: float | None = None,
) -> keras.optimizers.Optimizer:
    """SGD (momentum, weight decay), Adam, AdamW or DOT (momentum -/+ `dot_delta`
    for the task/distillation gradients; None: `DEFAULT_DELTA`) with a schedule."""
    rate = make_schedule(lr, schedule, total_steps)
    wd = weight_decay or None
    if name == "sgd":
        return keras.optimizers.SGD(rate, momentum=momentum, nesterov=False, weight_decay=wd)
    if name == "adam":
        return keras.optimizers.Adam(rate, weight_decay=wd)
    if name == "dot":
        return DOT(rate, momentum=momentum, delta=DEFAULT_DELTA if dot_delta is None else dot_delta,
                   weight_decay=wd)
    if name == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer {name!r}; accepted: {list(OPTIMIZERS)}.")

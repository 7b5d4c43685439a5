"""Quantisation-aware distillation at the run layer: prepare the float student's
fake-quant twin and distil it through `kdkeras.experiment.distill`."""

from __future__ import annotations

from typing import Sequence

import keras

from kdkeras import methods as methods_lib
from kdkeras.experiment import DataSetup, RunConfig, distill

from .transform import calibrate_ranges, prepare_qat

#: `teacher` value that makes the float student teach its own QAT twin
SELF_TEACHER = "self"


def distill_qat(
    float_student: keras.Model,
    teacher: keras.Model | str | None,
    methods: str | Sequence[methods_lib.Method],
    data: DataSetup,
    config: RunConfig,
    epochs: int | None = None,
    *,
    lr: float | None = None,
    weights: str | dict | None = None,
    student_loss_weight: float | None = None,
    calibration_batches: int = 8,
    tag: str = "qat",
) -> dict:
    """Distil the int8 (fake-quant) twin of `float_student` from `teacher`.

    `teacher`: a Keras model, "self" (the float student, frozen, teaches its
    QAT twin) or None (teacher-free methods). `methods`: Method objects or a
    spec such as "kd+at". `epochs` (default `config.epochs`) and `lr` (default
    a tenth of `config.lr`: QAT fine-tunes a trained network) override the
    budget. `weights` is `prepare_qat`'s granularity. The activation ranges are
    calibrated on `calibration_batches` training batches first. Returns
    `distill`'s dict (`history`, `train_seconds`, `top1`, ...) plus `model`
    (the trained QAT model) and `epochs`, `lr` used.
    """
    if isinstance(teacher, str):
        if teacher != SELF_TEACHER:
            raise ValueError(f"teacher={teacher!r}: pass a Keras model, {SELF_TEACHER!r} or None")
        teacher = float_student
    if isinstance(methods, str):
        methods = methods_lib.from_spec(methods, num_examples=data.num_train)
    epochs = config.epochs if epochs is None else int(epochs)
    lr = config.lr / 10.0 if lr is None else float(lr)
    qat = prepare_qat(float_student, weights)
    if calibration_batches:
        calibrate_ranges(qat, data.train, calibration_batches)
    result = distill(teacher, qat, list(methods), data, config.replace(epochs=epochs, lr=lr),
                     student_loss_weight=student_loss_weight, tag=tag)
    return {**result, "model": qat, "epochs": epochs, "lr": lr}

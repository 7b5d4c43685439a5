"""Training within a run: `fit` (a logits model or a Distiller, its top-1 measured)
and `distill` (the methods' CE weight, their init stages when they have any). With a
validation split each fit watches it, and the test split is read once, at the end."""

from __future__ import annotations

from typing import Sequence

import keras

from kdkeras import cache as cache_lib
from kdkeras import methods as methods_lib
from kdkeras import training
from kdkeras.distiller import Distiller
from kdkeras.experiment.config import RunConfig
from kdkeras.experiment.data import DataSetup
from kdkeras.stages import default_stages, needs_init_stage, run_stages


def fit(model: keras.Model, train_ds, validation_ds, config: training.TrainConfig,
        output_dir: str | None = None, tag: str = "run", callbacks: Sequence = (),
        test_ds=None) -> dict:
    """Compile and fit a logits model or a Distiller, watching `validation_ds` each
    epoch; return the trained network's `history`, `train_seconds` and `top1` on
    `test_ds` (default: `validation_ds`); with a `test_ds`, also `val_top1` on
    `validation_ds`."""
    distiller = training.is_distiller(model)  # a Distiller reads the index; a plain model does not
    history, seconds = training.compile_and_fit(
        model, train_ds if distiller else training.drop_index(train_ds),
        validation_ds if distiller else training.drop_index(validation_ds),
        config, output_dir, tag=tag, callbacks=callbacks,
    )
    network = model.student if distiller else model
    return {"history": history, "train_seconds": seconds,
            **top1s(network, validation_ds, test_ds)}


def top1s(network: keras.Model, validation_ds, test_ds=None) -> dict:
    """`top1` on `test_ds` (default: `validation_ds`), and `val_top1` on `validation_ds`
    when a separate `test_ds` is given."""
    if test_ds is None:
        return {"top1": training.evaluate_top1(network, validation_ds)}
    return {"val_top1": training.evaluate_top1(network, validation_ds),
            "top1": training.evaluate_top1(network, test_ds)}


def fit_data(model: keras.Model, data: DataSetup, config: training.TrainConfig,
             output_dir: str | None = None, tag: str = "run", callbacks: Sequence = ()) -> dict:
    """`fit` on a run's data: trained on `data.train`, watching its validation split
    (else the test split), `top1` on the test split (and `val_top1` with a validation split)."""
    return fit(model, data.train, data.validation_data, config, output_dir, tag=tag,
               callbacks=data.callbacks() + list(callbacks), test_ds=None if data.validation is None else data.test)


def distill(
    teacher: keras.Model | None,
    student: keras.Model,
    methods: Sequence[methods_lib.Method],
    data: DataSetup,
    config: RunConfig,
    *,
    student_loss_weight: float | None = None,
    init_epochs: int | None = None,
    tag: str = "distill",
    strategy=None,
    teacher_cache: cache_lib.TeacherCache | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict:
    """Distil `student` from `teacher` through `methods` on `data`.

    `student_loss_weight=None` takes the methods' own default (KD 0.1, LSR 0,
    ...). Methods with an initialisation stage (FT, AB, FSP) get it first, for
    `init_epochs` (default a quarter of the epochs, at least 1), each stage
    saved under `output_dir/stages` and skipped when rerun. With a
    `teacher_cache` (and `data` read with it) `teacher` may be None; `callbacks` join
    every stage's `fit`. Returns `history`
    (with `stages` when staged), `train_seconds`, `top1` (test), `val_top1` (with a
    validation split, which each epoch's `val_*` numbers then are) and the
    `student_loss_weight` used.
    """
    strategy = strategy or training.get_strategy("default")
    methods = list(methods)
    weight = (methods_lib.default_student_loss_weight(methods)
              if student_loss_weight is None else float(student_loss_weight))
    train_config = config.train_config()
    if init_epochs is not None and (isinstance(init_epochs, bool) or not isinstance(init_epochs, int)
                                    or init_epochs < 1):
        raise ValueError(f"init_epochs must be None (a quarter of the epochs) or an int >= 1, "
                         f"got {init_epochs!r}.")
    if not needs_init_stage(methods):
        with strategy.scope():
            distiller = Distiller(teacher, student, methods, student_loss_weight=weight,
                                  teacher_cache=teacher_cache)
            out = fit_data(distiller, data, train_config, config.output_dir, tag=tag, callbacks=callbacks)
        return {**out, "student_loss_weight": weight}
    init_epochs = init_epochs or max(1, config.epochs // 4)
    stages = default_stages(methods, init_epochs, config.epochs, weight)
    steps = training.steps_in(data.train)

    def optimizer_fn(stage):
        return training.make_optimizer(
            train_config.optimizer, train_config.lr, steps * max(stage.epochs, 1),
            train_config.schedule, train_config.momentum, train_config.weight_decay, train_config.dot_delta,
        )

    with strategy.scope():
        histories = run_stages(
            teacher, student, stages, data.train, data.validation_data, optimizer_fn, config.output_dir,
            verbose=config.verbose, compile_kwargs={"run_eagerly": config.run_eagerly},
            callbacks=data.callbacks() + [training.StopOnNonFiniteLoss(), *callbacks], teacher_cache=teacher_cache,
            sync_batchnorm=train_config.sync_batchnorm,
        )
    seconds = histories.total_seconds  # every stage, over every process (a resumed run counts both)
    history = histories["main"]
    history["stages"] = {k: v for k, v in histories.items() if k != "main"}
    return {"history": history, "train_seconds": seconds, "student_loss_weight": weight,
            "init_epochs": init_epochs,
            **top1s(student, data.validation_data, None if data.validation is None else data.test)}

"""Multi-stage distillation: run stages in order, each with its own methods,
epochs and trainable parts, and resume at the right stage after a crash.

Some methods need a stage before the main one: FT pretrains its paraphraser on
the teacher's map, AB initialises the student through its connectors, FSP
matches flow matrices first. Each says so through `Method.init_stages`, so
`default_stages` asks the methods and names none. A `Stage` names what
trains; `run_stages` runs them with one `Distiller` each (sharing the student
and the method objects, so parts trained in one stage carry over), saves each
finished stage's weights, and skips finished stages when it is run again.

    stages = [
        kdkeras.Stage("init", [ab], epochs=5, student_loss_weight=0.0),
        kdkeras.Stage("main", [kdkeras.methods.KD()], epochs=30, student_loss_weight=0.1),
    ]
    kdkeras.run_stages(teacher, student, stages, train_ds, test_ds, optimizer_fn, "runs/ab")
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Sequence

import keras

from kdkeras.distiller import Distiller
from kdkeras.methods.base import Method
from kdkeras.stage import Stage
from kdkeras.training import HistoryKeeper, SafeBackupAndRestore, batchnorm_synced

__all__ = ["Stage", "StageHistories", "run_stages", "needs_init_stage", "default_stages"]


class StageHistories(dict):
    """Each stage's Keras history by stage name, and in `seconds` each stage's
    training time over every process that worked on it (a stage resumed after a
    crash counts the crashed process's epochs too)."""

    def __init__(self):
        super().__init__()
        self.seconds: dict[str, float] = {}

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))


def _stage_dir(output_dir: str, index: int, stage: Stage) -> str:
    return os.path.join(output_dir, "stages", f"{index:02d}_{stage.name}")


def run_stages(
    teacher: keras.Model | None,
    student: keras.Model,
    stages: Sequence[Stage],
    train_ds,
    val_ds=None,
    optimizer_fn: Callable[[Stage], keras.optimizers.Optimizer] | None = None,
    output_dir: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose="auto",
    compile_kwargs: dict | None = None,
    teacher_cache=None,
    sync_batchnorm: bool = False,
) -> StageHistories:
    """Run `stages` in order; returns each stage's Keras history by name
    (with each stage's train seconds in `.seconds`).

    With `output_dir`, each finished stage leaves `stages/NN_name/done.json` and
    its Distiller's weights; a rerun loads those weights and goes on with the
    first unfinished stage, which itself resumes mid-stage from its last epoch's
    backup (`SafeBackupAndRestore`) and reports the whole stage's history, the
    epochs of the crashed process included (`HistoryKeeper`).
    `teacher_cache` goes to each stage's Distiller (batches carrying cached
    teacher outputs, `teacher` may then be None). `sync_batchnorm` normalises every
    BatchNorm (student, connectors) with the global batch's statistics under
    several replicas (`kdkeras.training.sync_batchnorm`).
    """
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"Stage names must be unique, got {names}.")
    histories = StageHistories()
    for index, stage in enumerate(stages):
        distiller = Distiller(
            teacher, student, list(stage.methods), student_loss_weight=stage.student_loss_weight,
            name=f"stage_{stage.name}", teacher_cache=teacher_cache,
        )
        student.trainable = stage.train_student
        for method in stage.methods:
            method.trainable = method not in stage.frozen
        for method in stage.frozen:
            method.trainable = False
        # After the flags: setting a layer's `trainable` resets its sublayers',
        # so a setup that freezes part of a method (FT's paraphraser) runs last.
        if stage.setup is not None:
            stage.setup()
        if not distiller.trainable_variables:
            raise ValueError(
                f"Stage {stage.name!r} has nothing to train: the student is frozen and its "
                "methods have no trainable parts."
            )
        folder = _stage_dir(output_dir, index, stage) if output_dir else None
        weights_path = os.path.join(folder, "stage.weights.h5") if folder else None
        if folder and os.path.exists(os.path.join(folder, "done.json")):
            distiller.load_weights(weights_path)
            with open(os.path.join(folder, "done.json")) as f:
                done = json.load(f)
            histories[stage.name] = done.get("history", {})
            histories.seconds[stage.name] = float(done.get("seconds", 0.0))
            print(f"[stages] {stage.name}: already done, weights loaded from {weights_path}")
            continue
        optimizer = optimizer_fn(stage) if optimizer_fn else keras.optimizers.Adam(1e-3)
        distiller.compile(optimizer=optimizer, metrics=["accuracy"], **(compile_kwargs or {}))
        cbs, keeper = list(callbacks), None
        if folder:
            os.makedirs(folder, exist_ok=True)
            # the epoch's history is recorded before its backup: a crash between the two
            # redoes that epoch and replaces its record, never leaves a hole in the history
            keeper = HistoryKeeper(os.path.join(folder, "history.json"))
            cbs += [keeper, SafeBackupAndRestore(os.path.join(folder, "backup"))]
        print(f"[stages] {stage.name}: {stage.epochs} epochs, methods "
              f"{[m.name for m in stage.methods]}, student {'trained' if stage.train_student else 'frozen'}")
        history, seconds = {}, 0.0
        if stage.epochs:
            start = time.perf_counter()
            with batchnorm_synced(distiller, sync_batchnorm):  # the saved student keeps Keras' default
                history = distiller.fit(
                    train_ds, validation_data=val_ds, epochs=stage.epochs, callbacks=cbs, verbose=verbose
                ).history
            seconds = time.perf_counter() - start
            if keeper is not None:  # resumed mid-stage: the earlier process's epochs and time go in front
                history, seconds = keeper.merged(history, seconds)
        histories[stage.name], histories.seconds[stage.name] = history, seconds
        if folder:
            distiller.save_weights(weights_path)
            with open(os.path.join(folder, "done.json"), "w") as f:
                json.dump({"stage": stage.name, "epochs": stage.epochs, "history": history,
                           "seconds": seconds}, f, default=float)
    student.trainable = True
    for stage in stages:
        for method in stage.methods:
            method.trainable = True
    return histories


def needs_init_stage(methods: Sequence[Method]) -> bool:
    """True when a method's paper trains something in a stage before the main one."""
    return any(m.init_stages(0) for m in methods)


def default_stages(
    methods: Sequence[Method], init_epochs: int, epochs: int, student_loss_weight: float
) -> list[Stage]:
    """The methods' own init stages (`Method.init_stages`), then the main stage.

    Init stages that train only the methods' parts (the student frozen, e.g.
    FT's paraphraser) come first, then those that train the student (AB and
    FSP alone, no CE); init stages of one name from several methods merge into
    one. The main stage holds the methods that stay in it (`in_main_stage`),
    with CE at `student_loss_weight`, and calls each one's `setup_main` first.
    """
    merged: dict[str, Stage] = {}
    for method in methods:
        for stage in method.init_stages(init_epochs):
            merged[stage.name] = _merge(merged[stage.name], stage) if stage.name in merged else stage
    inits = sorted(merged.values(), key=lambda stage: stage.train_student)
    main = [m for m in methods if m.in_main_stage]

    def setup_main():
        for method in main:
            method.setup_main()

    return [*inits, Stage("main", main, epochs, student_loss_weight=student_loss_weight,
                          setup=setup_main)]


def _merge(a: Stage, b: Stage) -> Stage:
    """One stage training the methods of two init stages of the same name."""
    settings = ("epochs", "student_loss_weight", "train_student")
    if any(getattr(a, k) != getattr(b, k) for k in settings):
        raise ValueError(
            f"Two init stages named {a.name!r} differ in {settings}: "
            f"{[getattr(a, k) for k in settings]} vs {[getattr(b, k) for k in settings]}."
        )
    setups = [f for f in (a.setup, b.setup) if f is not None]

    def setup():
        for f in setups:
            f()

    return Stage(a.name, [*a.methods, *b.methods], a.epochs, a.student_loss_weight,
                 a.train_student, frozen=[*a.frozen, *b.frozen],
                 setup=setup if setups else None)

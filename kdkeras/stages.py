"""Multi-stage distillation: run stages in order, each with its own methods,
epochs and trainable parts, and resume at the right stage after a crash.

Some methods need a stage before the main one: FT pretrains its paraphraser on
the teacher's map, AB initialises the student through its connectors, FSP
matches flow matrices first, PAD-L2 regresses the embedding with plain L2.
Each declares it as data (`Method.init_stages`: `InitStage`s holding the
method objects to train, `in_main_stage`), so
`default_stages` reads the declarations and names no method. A `Stage` names
what trains; `run_stages` runs them with one `Distiller` each (sharing the
student and the method objects, so parts trained in one stage carry over),
saves each finished stage's weights, and skips finished stages when it is run
again. The Distiller knows nothing of stages.

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
from dataclasses import dataclass, field
from typing import Callable, Sequence

import keras

from kdkeras.distiller import Distiller
from kdkeras.methods.base import InitStage, Method
from kdkeras.training import HistoryKeeper, SafeBackupAndRestore, batchnorm_synced

__all__ = ["Stage", "StageHistories", "run_stages", "needs_init_stage", "default_stages"]


@dataclass
class Stage:
    """One training stage.

    Args:
        name: folder name of the stage's checkpoint (unique within a run).
        methods: the methods whose terms are trained in this stage.
        epochs: epochs of this stage.
        student_loss_weight: weight of the student's own CE in this stage
            (0 for a pure initialisation stage).
        train_student: False to train only the methods' parts (e.g. FT's
            paraphraser, which learns from the teacher alone).
        frozen: layers (methods, or layers holding parts they share) whose
            weights this stage reads but does not train, e.g. FT's paraphraser
            term in the main stage, where FT reads its paraphrasers.
    """

    name: str
    methods: Sequence[Method]
    epochs: int
    student_loss_weight: float = 1.0
    train_student: bool = True
    frozen: Sequence[keras.layers.Layer] = field(default_factory=tuple)

    def __post_init__(self):
        if self.epochs < 0:
            raise ValueError(f"Stage {self.name!r}: epochs must be >= 0, got {self.epochs}.")


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
        _set_trainable(student, stage)
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
        for layer in [*stage.methods, *stage.frozen]:
            _trainable(layer, True)
    return histories


def _set_trainable(student: keras.Model, stage: Stage) -> None:
    """The student and the stage's methods trainable as the stage says, then its
    frozen layers frozen (last: setting a layer's `trainable` resets its
    sublayers', and a frozen layer may share parts with a method)."""
    student.trainable = stage.train_student
    frozen = {id(layer) for layer in stage.frozen}
    for method in stage.methods:
        _trainable(method, id(method) not in frozen)
    for layer in stage.frozen:
        _trainable(layer, False)


def _trainable(layer: keras.layers.Layer, value: bool) -> None:
    """`layer.trainable = value`, sublayers included, even when the layer's own
    flag already holds `value` (TensorFlow's attribute tracking skips such an
    assignment, which would leave a part it shares with a layer an earlier
    stage froze frozen)."""
    keras.layers.Layer.trainable.fset(layer, value)


def needs_init_stage(methods: Sequence[Method]) -> bool:
    """True when a method's paper trains something in a stage before the main one."""
    return any(m.init_stages() for m in methods)


def default_stages(
    methods: Sequence[Method], init_epochs: int, epochs: int, student_loss_weight: float
) -> list[Stage]:
    """The methods' own init stages (`Method.init_stages`), then the main stage.

    Each init stage runs `init_epochs`. Init stages that train only the
    methods' parts (the student frozen, e.g. FT's paraphraser) come first, then
    those that train the student (AB and FSP alone, no CE); init stages of one
    name from several methods merge into one. The main stage holds the methods
    that stay in it (`in_main_stage`), with CE at `student_loss_weight`, and
    keeps what the init stages' methods trained frozen (FT reads the
    paraphrasers its init stage trained) unless their stage says otherwise
    (`InitStage.frozen_after=False`: PAD-L2 goes on training its connector).
    """
    merged: dict[str, Stage] = {}
    trained_on: set[int] = set()
    for method in methods:
        for declared in method.init_stages():
            stage = _init_stage(declared, init_epochs)
            merged[stage.name] = _merge(merged[stage.name], stage) if stage.name in merged else stage
            if not declared.frozen_after:
                trained_on |= {id(m) for m in declared.methods}
    inits = sorted(merged.values(), key=lambda stage: stage.train_student)
    pretrained = list({id(m): m for stage in inits for m in stage.methods
                       if id(m) not in trained_on}.values())
    main = [m for m in methods if m.in_main_stage]
    return [*inits, Stage("main", main, epochs, student_loss_weight=student_loss_weight,
                          frozen=pretrained)]


def _init_stage(declared: InitStage, epochs: int) -> Stage:
    """The stage a method's `InitStage` declaration asks for, `epochs` long."""
    if not isinstance(declared, InitStage):
        raise TypeError(f"Method.init_stages must return InitStage objects, got {declared!r}.")
    return Stage(declared.name, list(declared.methods), epochs, declared.student_loss_weight,
                 declared.train_student)


def _merge(a: Stage, b: Stage) -> Stage:
    """One stage training the methods of two init stages of the same name."""
    settings = ("epochs", "student_loss_weight", "train_student")
    if any(getattr(a, k) != getattr(b, k) for k in settings):
        raise ValueError(
            f"Two init stages named {a.name!r} differ in {settings}: "
            f"{[getattr(a, k) for k in settings]} vs {[getattr(b, k) for k in settings]}."
        )
    return Stage(a.name, [*a.methods, *b.methods], a.epochs, a.student_loss_weight, a.train_student)

"""Multi-stage distillation: run stages in order, each with its own methods,
epochs and trainable parts, and resume at the right stage after a crash.

Some methods need a stage before the main one: FT pretrains its paraphraser on
the teacher's map, AB initialises the student through its connectors, FSP
matches flow matrices first. A `Stage` names what trains; `run_stages` runs
them with one `Distiller` each (sharing the student and the method objects, so
parts trained in one stage carry over), saves each finished stage's weights,
and skips finished stages when it is run again.

    stages = [
        kdkeras.Stage("init", [ab], epochs=5, student_loss_weight=0.0),
        kdkeras.Stage("main", [kdkeras.methods.KD()], epochs=30, student_loss_weight=0.1),
    ]
    kdkeras.run_stages(teacher, student, stages, train_ds, test_ds, optimizer_fn, "runs/ab")
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import keras

from kdkeras.distiller import Distiller
from kdkeras.methods.base import Method


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
        frozen: methods whose parts are used but not trained in this stage.
        setup: called before the stage starts (or is restored), e.g. to switch
            FT between its paraphraser and transfer stages.
    """

    name: str
    methods: Sequence[Method]
    epochs: int
    student_loss_weight: float = 1.0
    train_student: bool = True
    frozen: Sequence[Method] = field(default_factory=tuple)
    setup: Callable[[], None] | None = None

    def __post_init__(self):
        if self.epochs < 0:
            raise ValueError(f"Stage {self.name!r}: epochs must be >= 0, got {self.epochs}.")


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
) -> dict[str, dict]:
    """Run `stages` in order; returns each stage's Keras history by name.

    With `output_dir`, each finished stage leaves `stages/NN_name/done.json` and
    its Distiller's weights; a rerun loads those weights and goes on with the
    first unfinished stage (which itself resumes mid-stage via BackupAndRestore).
    """
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"Stage names must be unique, got {names}.")
    histories: dict[str, dict] = {}
    for index, stage in enumerate(stages):
        if stage.setup is not None:
            stage.setup()
        distiller = Distiller(
            teacher, student, list(stage.methods), student_loss_weight=stage.student_loss_weight,
            name=f"stage_{stage.name}",
        )
        student.trainable = stage.train_student
        for method in stage.methods:
            method.trainable = method not in stage.frozen
        for method in stage.frozen:
            method.trainable = False
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
                histories[stage.name] = json.load(f).get("history", {})
            print(f"[stages] {stage.name}: already done, weights loaded from {weights_path}")
            continue
        optimizer = optimizer_fn(stage) if optimizer_fn else keras.optimizers.Adam(1e-3)
        distiller.compile(optimizer=optimizer, metrics=["accuracy"], **(compile_kwargs or {}))
        cbs = list(callbacks)
        if folder:
            os.makedirs(folder, exist_ok=True)
            cbs.append(keras.callbacks.BackupAndRestore(os.path.join(folder, "backup")))
        print(f"[stages] {stage.name}: {stage.epochs} epochs, methods "
              f"{[m.name for m in stage.methods]}, student {'trained' if stage.train_student else 'frozen'}")
        if stage.epochs:
            history = distiller.fit(
                train_ds, validation_data=val_ds, epochs=stage.epochs, callbacks=cbs, verbose=verbose
            ).history
        else:
            history = {}
        histories[stage.name] = history
        if folder:
            distiller.save_weights(weights_path)
            with open(os.path.join(folder, "done.json"), "w") as f:
                json.dump({"stage": stage.name, "epochs": stage.epochs, "history": history}, f,
                          default=float)
    student.trainable = True
    for stage in stages:
        for method in stage.methods:
            method.trainable = True
    return histories


def needs_init_stage(methods: Sequence[Method]) -> bool:
    """True when a method's paper trains something in a stage before the main one."""
    return any(getattr(m, "has_init_stage", False) for m in methods)


def default_stages(
    methods: Sequence[Method], init_epochs: int, epochs: int, student_loss_weight: float
) -> list[Stage]:
    """The published staging for FT, AB and FSP, with the other methods in the main stage.

    - FT: its paraphraser first learns to reconstruct the teacher's map (student
      frozen), then FT transfers through the frozen paraphraser in the main stage.
    - AB and FSP: an initialisation stage of their term alone (no CE), then the
      main stage without them (CE plus the other methods, e.g. KD).
    """
    fts = [m for m in methods if getattr(m, "stages", None) == ("paraphraser", "transfer")]
    inits = [m for m in methods if getattr(m, "has_init_stage", False) and m not in fts]
    main = [m for m in methods if m not in inits]
    stages = []

    def set_ft(stage_name):
        def apply():
            for ft in fts:
                ft.stage = stage_name
        return apply

    if fts:
        stages.append(Stage("ft_paraphraser", fts, init_epochs, student_loss_weight=0.0,
                            train_student=False, setup=set_ft("paraphraser")))
    if inits:
        stages.append(Stage("init", inits, init_epochs, student_loss_weight=0.0))
    stages.append(Stage("main", main, epochs, student_loss_weight=student_loss_weight,
                        setup=set_ft("transfer")))
    return stages

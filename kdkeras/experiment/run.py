"""`run_distillation`: one distillation run as a list of named steps (start, data,
teacher, student and methods, teacher cache, distil or reuse, metrics, baseline,
finish), each a function of this module."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import keras

from kdkeras import methods as methods_lib
from kdkeras import training
from kdkeras.experiment.cache import CachedRun, with_teacher_cache
from kdkeras.experiment.config import DistillSpec, RunConfig
from kdkeras.experiment.data import DataSetup, setup_data, validation_keys
from kdkeras.experiment.fitting import distill, fit
from kdkeras.experiment.output import (
    check_output_dir, command_line, finish_worker, run_settings, start, worker_config,
)
from kdkeras.experiment.run_length import run_length_args, run_length_note
from kdkeras.experiment.teacher import Teacher, build_model, get_teacher, is_model_path, model_input_shape
from kdkeras.tap_plan import plan_taps
from kdkeras.weak_teacher import teacher_margin, weak_teacher_warning


@dataclass
class DistillRun:
    """What `run_distillation` made: its metrics (as in metrics.json) and models."""

    metrics: dict
    data: DataSetup
    teacher: Teacher | None
    student: keras.Model
    baseline: keras.Model | None
    methods: list


@dataclass
class Student:
    """The student before distillation, and how it is taught."""

    model: keras.Model
    #: its initial weights (the baseline starts from them too)
    initial: list
    methods: list
    student_loss_weight: float
    #: the run-length defaults added to the methods' arguments, by method name
    run_length_defaults: dict


def run_distillation(config: RunConfig, spec: DistillSpec, command: str | None = None,
                     callbacks: Sequence[keras.callbacks.Callback] = ()) -> DistillRun:
    """Teacher, student, distillation, optional baseline; writes student.keras,
    baseline.keras and metrics.json into `config.output_dir`. metrics.json records
    `command` (default: this process's command line) so a results table can cite it;
    `callbacks` join the distillation's `fit` (a tuner's pruning callback)."""
    config, strategy = start_run(config, spec)
    data = load_data(config, spec)
    teacher = load_teacher(spec, data, strategy)
    student = build_student(spec, config, data, strategy)
    cached = cache_teacher(spec, config, teacher, student.methods, data)
    result = distill_or_reuse(spec, config, teacher, student, cached.data if cached else data, cached, strategy,
                              callbacks)
    metrics = run_metrics(spec, config, teacher, student, result, cached, command, data)
    baseline = train_baseline(spec, config, data, student, strategy, metrics) if spec.baseline else None
    finish_run(config, strategy, metrics)
    return DistillRun(metrics, cached.data if cached else data, teacher, student.model, baseline,
                      student.methods)


def start_run(config: RunConfig, spec: DistillSpec) -> tuple[RunConfig, object]:
    """Seed, take this worker's output folder, refuse to resume a run of other
    settings; returns (this worker's config, the strategy)."""
    strategy = start(config)
    config = worker_config(config, strategy)
    check_output_dir(config.output_dir, run_settings(config, spec), config.overwrite)
    return config, strategy


def load_data(config: RunConfig, spec: DistillSpec) -> DataSetup:
    """The run's data, at a saved teacher's input unless `spec.input_shape` fixes it,
    with each example's index when a method reads it (CRD), and a strong view of each
    training batch when one trains on two views (MLKD)."""
    probe = methods_lib.from_spec(spec.method, spec.method_args, num_examples=1)
    shape = spec.input_shape
    if shape is None and spec.teacher and is_model_path(spec.teacher):
        shape = model_input_shape(spec.teacher)
    return setup_data(config, shape, with_index=any(m.requires_index for m in probe),
                      strong_view=any(m.requires_strong_view for m in probe))


def load_teacher(spec: DistillSpec, data: DataSetup, strategy) -> Teacher | None:
    """The teacher loaded or trained (None for "none"); a cached run reads its top-1
    from the cache instead of evaluating it."""
    return get_teacher(spec.teacher, data, epochs=spec.teacher_epochs, build_kwargs=spec.teacher_args,
                       bn_momentum=spec.bn_momentum, saved_dir=spec.saved_dir, strategy=strategy,
                       evaluate=not spec.teacher_cache)


def build_student(spec: DistillSpec, config: RunConfig, data: DataSetup, strategy) -> Student:
    """The seeded student and its methods (run-length defaults added and said), with
    the CE weight: `spec.student_loss_weight`, else the methods' own."""
    with strategy.scope():
        model = build_model(spec.student, data, seed=config.seed, bn_momentum=spec.bn_momentum,
                            **spec.student_args)
        initial = model.get_weights()
        method_args, scaled = run_length_args(spec.method, spec.method_args)
        methods = methods_lib.from_spec(spec.method, method_args, num_examples=data.num_train)
    for name, args in scaled.items():
        print(run_length_note(name, args, config.epochs))
    weight = (methods_lib.default_student_loss_weight(methods)
              if spec.student_loss_weight is None else spec.student_loss_weight)
    return Student(model, initial, methods, weight, scaled)


def cache_teacher(spec: DistillSpec, config: RunConfig, teacher: Teacher | None, methods: list,
                  data: DataSetup) -> CachedRun | None:
    """With `spec.teacher_cache`, the caches built or reused and the data read with
    them (the teacher model then let go); None without."""
    if not spec.teacher_cache:
        return None
    if teacher is None:
        raise ValueError("teacher_cache needs a teacher (--teacher): there is nothing to cache.")
    return with_teacher_cache(spec, config, teacher, methods, data)


def distill_or_reuse(spec: DistillSpec, config: RunConfig, teacher: Teacher | None, student: Student,
                     data: DataSetup, cached: CachedRun | None, strategy, callbacks: Sequence = ()) -> dict:
    """Distil the student and save it, or, after a crash that came later (in the
    baseline), load the student that finished; returns `distill`'s result."""
    print(f"Distilling {spec.student} ({student.model.count_params():,} params) with "
          f"{[m.name for m in student.methods]}, student_loss_weight={student.student_loss_weight}, "
          f"{config.epochs} epochs")
    student_path = os.path.join(config.output_dir, "student.keras")
    done_path = os.path.join(config.output_dir, "distill_done.json")
    if os.path.exists(done_path) and os.path.exists(student_path):
        print(f"Distillation already finished in {config.output_dir}: reusing {student_path}")
        with open(done_path) as f:
            result = json.load(f)
        student.model.set_weights(training.load_model(student_path).get_weights())
    else:
        result = distill(teacher.model if teacher else None, student.model, student.methods, data, config,
                         student_loss_weight=student.student_loss_weight, init_epochs=spec.init_epochs,
                         strategy=strategy, teacher_cache=cached.train_cache if cached else None,
                         callbacks=callbacks)
        student.model.save(student_path)
        training.write_json(done_path, result, atomic=True)
    print(f"student top1={result['top1']:.4f} ({result['train_seconds']:.0f}s)")
    return result


def run_metrics(spec: DistillSpec, config: RunConfig, teacher: Teacher | None, student: Student,
                result: dict, cached: CachedRun | None, command: str | None,
                data: DataSetup | None = None) -> dict:
    """metrics.json of the distillation (the baseline adds its own); with a validation
    split in `data`, its keys too (`validation_keys`)."""
    metrics = {
        "method": spec.method,
        "method_args": spec.method_args,
        "dataset": config.dataset,
        "teacher": teacher.source if teacher else spec.teacher,
        "student": spec.student,
        "student_args": spec.student_args,
        "student_top1": result["top1"],
        "teacher_top1": teacher.top1 if teacher else None,
        "teacher_epochs": teacher.trained_epochs if teacher else None,
        "epochs": config.epochs,
        "train_limit": config.train_limit,
        "test_limit": config.test_limit,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "student_loss_weight": student.student_loss_weight,
        "method_settings": methods_lib.method_settings(student.methods, plan_taps(
            student.methods, teacher.model if teacher else None, student.model,
            cached.train_cache if cached else None)),
        "train_seconds": result["train_seconds"],
        "history": result["history"],
        "command": command or command_line(),
    }
    if student.run_length_defaults:
        metrics["run_length_defaults"] = student.run_length_defaults
    if "init_epochs" in result:
        metrics["init_epochs"] = result["init_epochs"]
    if data is not None:  # the validation split's keys (`validation_keys`: none without one)
        metrics.update(validation_keys(data, student_val_top1=result.get("val_top1"),
                                       teacher_val_top1=teacher.val_top1 if teacher else None))
    if cached is not None:
        metrics.update(teacher_cache=spec.teacher_cache, teacher_cache_views=cached.train_cache.views,
                       teacher_cache_storage=cached.train_cache.storage, teacher_cache_seconds=cached.seconds)
    return metrics


def train_baseline(spec: DistillSpec, config: RunConfig, data: DataSetup, student: Student, strategy,
                   metrics: dict) -> keras.Model:
    """The student trained alone from the same initial weights on the same (uncached)
    data and budget, saved as baseline.keras; adds its top-1, the teacher's margin
    over it and the weak-teacher warning to `metrics`. With a validation split the
    margin (and the warning) is measured on it, never on the test split."""
    baseline, out = train_student_alone(spec, config, data, strategy, "baseline", initial=student.initial,
                                        test_ds=None if data.validation is None else data.test)
    baseline.save(os.path.join(config.output_dir, "baseline.keras"))
    metrics.update(baseline_top1=out["top1"], baseline_train_seconds=out["train_seconds"],
                   baseline_history=out["history"],
                   # one loss: a distillation optimiser (DOT) gives way to its base (SGD)
                   baseline_optimizer=config.train_config().one_loss().optimizer)
    where, key = ("validation", "val_top1") if "val_top1" in out else ("test", "top1")
    if where == "validation":
        metrics["baseline_val_top1"] = out["val_top1"]
    teacher_top1 = metrics.get(f"teacher_{key}")
    margin = teacher_margin(teacher_top1, out[key])
    print(f"baseline top1={out['top1']:.4f}" + ("" if margin is None else
          f"; teacher margin over it {100 * margin:+.2f} points (on the {where} split)"))
    if margin is not None:
        metrics["teacher_margin"] = margin
        warning = weak_teacher_warning(teacher_top1, out[key], student.student_loss_weight,
                                       "validation" if where == "validation" else None)
        if warning:
            metrics["warnings"] = [warning]
            warnings.warn(warning, stacklevel=3)
    return baseline


def train_student_alone(spec: DistillSpec, config: RunConfig, data: DataSetup, strategy, tag: str, *,
                        initial: list | None = None, test_ds=None,
                        callbacks: Sequence[keras.callbacks.Callback] = ()) -> tuple[keras.Model, dict]:
    """`spec.student` built for `data` (seeded; from `initial` weights when given) and fit
    alone, CE only, on its training part while watching its validation split: the core of
    the `--baseline` run and of a sweep's student-alone reference. Returns (model, `fit`'s result)."""
    with strategy.scope():
        model = build_model(spec.student, data, seed=config.seed, bn_momentum=spec.bn_momentum, **spec.student_args)
        if initial is not None:
            model.set_weights(initial)
        out = fit(model, data.train, data.validation_data, config.train_config(), config.output_dir, tag=tag,
                  callbacks=data.callbacks() + list(callbacks), test_ds=test_ds)
    return model, out


def finish_run(config: RunConfig, strategy, metrics: dict) -> None:
    """Write metrics.json, forget the finished distillation (a rerun trains again,
    as it always did) and remove a non-chief worker's private folder."""
    training.write_json(os.path.join(config.output_dir, "metrics.json"), metrics)
    os.remove(os.path.join(config.output_dir, "distill_done.json"))
    finish_worker(config, strategy)

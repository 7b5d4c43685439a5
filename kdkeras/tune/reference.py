"""The sweep's reference: the student trained alone (no teacher, CE only) once, at the
trial fidelity on the trials' own data, so a sweep says whether its choice beats
training without a teacher at all, on the validation split.

It trains as `run_distillation`'s `--baseline` does (`fit` on the run's data, the
student built from the same spec and seed) on a trial's config (`trial_fidelity`:
the same training subset, validation split, epochs and seed), and is scored on the
validation split only: the test split is never evaluated. Its top-1 and seconds are
kept in the study's user attributes, so a resumed or joined study reuses them. It is
no Optuna trial: the sampler, the pruner and `--trials` never see it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from kdkeras.experiment.config import DistillSpec, RunConfig
from kdkeras.tune.objective import trial_fidelity, validation_score
from kdkeras.tune.options import TuneOptions

#: the study's user attributes holding the reference
VAL_TOP1_ATTR = "student_alone_val_top1"
SECONDS_ATTR = "student_alone_seconds"
FIDELITY_ATTR = "student_alone_fidelity"
#: the reference's folder under OUTPUT_DIR, and its record there (not a metrics.json: it
#: has no test top-1, and run collectors such as the results page read metrics.json)
FOLDER = "student_alone"
RECORD = "student_alone.json"
#: `DistillSpec.method` of the reference: no distillation method
NO_METHOD = "none"


@dataclass
class StudentAloneRun:
    """What `run_student_alone` made: its metrics (`student_val_top1`, as a trial's) and model."""

    metrics: dict
    student: Any


def input_shape_of(spec: DistillSpec) -> tuple | None:
    """The input the trials read their data at: the spec's, else a saved teacher's (as
    `run_distillation` reads it), else None (the data's own)."""
    from kdkeras.experiment.teacher import is_model_path, model_input_shape

    if spec.input_shape is not None:
        return tuple(spec.input_shape)
    teacher = spec.teacher or ""
    if teacher and is_model_path(teacher) and os.path.exists(teacher):
        return tuple(model_input_shape(teacher))
    return None


def reference_inputs(config: RunConfig, spec: DistillSpec, options: TuneOptions) -> tuple[RunConfig, DistillSpec]:
    """The (config, spec) of the reference: a trial's config in OUTPUT_DIR/student_alone;
    the spec's student (its arguments, BN momentum) at the trials' input shape, with no
    teacher, method, cache or baseline, CE weight 1."""
    ref_config = trial_fidelity(config, options, os.path.join(config.output_dir, FOLDER))
    ref_spec = dataclasses.replace(
        spec, teacher="none", method=NO_METHOD, method_args="", student_loss_weight=1.0, baseline=False,
        teacher_cache=None, teacher_cache_methods="", init_epochs=None, input_shape=input_shape_of(spec))
    return ref_config, ref_spec


def run_student_alone(config: RunConfig, spec: DistillSpec, callbacks: Sequence = ()) -> StudentAloneRun:
    """Train `spec.student` alone (CE only) on `config`'s data as the `--baseline` run does,
    scored on the validation split (never the test split); writes OUTPUT_DIR/student_alone.json."""
    from kdkeras import training
    from kdkeras.experiment.data import setup_data, validation_keys
    from kdkeras.experiment.output import finish_worker
    from kdkeras.experiment.run import start_run, train_student_alone

    config, strategy = start_run(config, spec)
    data = setup_data(config, spec.input_shape)
    if data.validation is None:  # `fit` would score the test split instead
        raise ValueError(f"The student-alone reference needs a validation split, got "
                         f"validation_split={config.validation_split!r}.")
    model, out = train_student_alone(spec, config, data, strategy, "student_alone", callbacks=callbacks)
    metrics = {"method": NO_METHOD, "teacher": None, "student": spec.student, "student_args": spec.student_args,
               "dataset": config.dataset, "epochs": config.epochs, "train_limit": config.train_limit,
               "batch_size": config.batch_size, "lr": config.lr, "seed": config.seed,
               "train_seconds": out["train_seconds"], "history": out["history"],
               **validation_keys(data, student_val_top1=out["top1"])}  # `top1` is on the validation split here
    training.write_json(os.path.join(config.output_dir, RECORD), metrics)
    finish_worker(config, strategy)
    return StudentAloneRun(metrics, model)


def fidelity_of(config: RunConfig, spec: DistillSpec) -> dict:
    """What the reference was trained on, kept beside it in the study."""
    return {"epochs": config.epochs, "train_limit": config.train_limit, "train_part_limit": config.train_part_limit,
            "validation_split": config.validation_split, "seed": config.seed, "student": spec.student,
            "student_args": dict(spec.student_args or {})}


def stored_reference(study) -> dict | None:
    """The study's reference ({"val_top1", "seconds", "fidelity"}), or None when it has none yet."""
    attrs = study.user_attrs
    if VAL_TOP1_ATTR not in attrs:
        return None
    return {"val_top1": float(attrs[VAL_TOP1_ATTR]), "seconds": attrs.get(SECONDS_ATTR),
            "fidelity": attrs.get(FIDELITY_ATTR)}


def ensure_reference(study, config: RunConfig, spec: DistillSpec, options: TuneOptions,
                     runner: Callable | None = None) -> dict:
    """The study's reference, trained through `runner` (default `run_student_alone`) and
    stored in its user attributes first when it has none; returns it as `stored_reference`.
    Two processes starting one new study at once may both train it (same seed and data:
    the same number)."""
    ref_config, ref_spec = reference_inputs(config, spec, options)
    fidelity = fidelity_of(ref_config, ref_spec)
    stored = stored_reference(study)
    if stored is not None:
        print(f"[tune] student alone (kept in the study, not rerun): validation top-1 {stored['val_top1']:.4f}",
              flush=True)
        if stored["fidelity"] not in (None, fidelity):
            print(f"[tune] note: the study's student-alone reference was trained on {stored['fidelity']}, "
                  f"this sweep's trials on {fidelity}", flush=True)
        return stored
    print(f"[tune] student alone (no teacher, CE only; the trials' data, {ref_config.epochs} epochs, seed "
          f"{ref_config.seed}): the reference the choice must beat", flush=True)
    start = time.perf_counter()
    run = (runner or run_student_alone)(ref_config, ref_spec)
    seconds = time.perf_counter() - start
    value = validation_score(run.metrics)
    for key, attr in ((VAL_TOP1_ATTR, value), (SECONDS_ATTR, seconds), (FIDELITY_ATTR, fidelity)):
        study.set_user_attr(key, attr)
    print(f"[tune] student alone: validation top-1 {value:.4f} ({seconds:.0f}s)", flush=True)
    return {"val_top1": value, "seconds": seconds, "fidelity": fidelity}


def compare(method: str, settings_text: str, val_top1: float,
            reference: dict | None) -> tuple[dict, str | None]:
    """tune.json's keys comparing the choice with the reference (none without one), and
    the warning to print and record when the choice does not beat it. Both are at the
    trials' fidelity, which can under-rate distillation (its gain grows with the
    budget): the warning says so and points to the full-budget check (`final_check`)."""
    if reference is None:
        return {}, None
    alone = float(reference["val_top1"])
    margin = 100.0 * (val_top1 - alone)
    keys = {"student_alone_val_top1": alone, "student_alone_seconds": reference.get("seconds"),
            "beats_student_alone": bool(val_top1 > alone), "margin_over_student_alone_points": margin}
    if keys["beats_student_alone"]:
        return keys, None
    fidelity = reference.get("fidelity") or {}
    at = (f" at the trials' fidelity ({fidelity['epochs']} epochs)" if fidelity.get("epochs") else
          " at the trials' fidelity")
    warning = (f"The chosen {method} ({settings_text or 'its defaults'}) reaches validation top-1 {val_top1:.4f}, "
               f"the student alone {alone:.4f} ({margin:+.2f} points){at}: distillation at the tried settings did "
               f"not beat the student alone on the validation split there. Short trials can under-rate "
               f"distillation, whose gain grows with the budget: the retrain with --final_data=training (and its "
               f"student alone, --final_baseline) compares both at the full budget on the validation split. "
               f"Otherwise run more trials (--trials) or try other candidates (--method=auto --candidates=...).")
    return keys, warning


def final_check(metrics: dict) -> tuple[dict, str | None]:
    """The full-budget comparison on the validation split, from a retrain that kept the
    split and trained the student alone beside (`student_val_top1`, `baseline_val_top1`):
    tune.json's `final_beats_student_alone` and its margin, and a warning when the
    distilled student does not beat the student alone there; nothing without both."""
    distilled, alone = metrics.get("student_val_top1"), metrics.get("baseline_val_top1")
    if distilled is None or alone is None:
        return {}, None
    margin = 100.0 * (float(distilled) - float(alone))
    keys = {"final_beats_student_alone": bool(distilled > alone), "final_margin_over_student_alone_points": margin}
    if keys["final_beats_student_alone"]:
        return keys, None
    return keys, (f"At the full budget the distilled student reaches validation top-1 {float(distilled):.4f}, the "
                  f"student alone {float(alone):.4f} ({margin:+.2f} points): on this data the student alone "
                  f"(final/, saved beside the distilled one) is the better choice.")

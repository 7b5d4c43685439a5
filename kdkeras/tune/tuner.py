"""`tune_distillation`: a sweep of one method's settings, or of several candidate methods
(`method="auto"`), on the validation split, then the winner retrained at the full
budget and its test top-1 reported beside the student alone's. `recipes/tune.py` and
`recipes/distill.py --method=auto` both call it."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Callable

from kdkeras.experiment.config import NO_TEACHER, DistillSpec, RunConfig
from kdkeras.experiment.teacher import shared_teachers
from kdkeras.files import write_json
from kdkeras.tune import report, spaces
from kdkeras.tune.final import best_choice, retrain
from kdkeras.tune.objective import (
    distillation_objective, fixed_args, require_validation, subset_warning, trial_train_part,
)
from kdkeras.tune.options import TuneOptions
from kdkeras.tune.reference import compare, ensure_reference, final_check
from kdkeras.tune.study import make_pruner, open_study, progress_line, run_sweep, storage_url

#: the `DistillSpec.method` that chooses among `TuneOptions.candidates`
AUTO = "auto"


@dataclass
class TuneResult:
    """What a sweep chose and measured (also written as OUTPUT_DIR/tune.json)."""

    method: str
    settings: dict
    val_top1: float
    report: dict
    #: the winner's full-budget run (None with `retrain=False`)
    final: object | None


def candidates_of(spec: DistillSpec, options: TuneOptions) -> list[str]:
    """The methods a sweep chooses among: the candidates for "auto", else the spec's one."""
    chosen = list(options.candidates) if str(spec.method).strip().lower() == AUTO else [spec.method]
    if not chosen:
        raise ValueError(f"No candidate methods for --method={spec.method}: give --candidates, e.g. kd,dkd.")
    for candidate in chosen:
        spaces.candidate_space(candidate)  # an unknown name fails here, naming the accepted ones
    return chosen


def trained_teacher(config: RunConfig, spec: DistillSpec) -> DistillSpec:
    """`spec` with a zoo-name teacher trained once, into OUTPUT_DIR/teacher (kept there for
    a resumed sweep), so every trial and the final run load it instead of training it."""
    from kdkeras.experiment.data import setup_data
    from kdkeras.experiment.teacher import get_teacher, is_model_path

    if not spec.teacher or spec.teacher.strip().lower() in NO_TEACHER or is_model_path(spec.teacher):
        return spec
    folder = os.path.join(config.output_dir, "teacher")
    saved = os.path.join(folder, "teacher.keras")
    if not os.path.exists(saved):
        data = setup_data(dataclasses.replace(config, output_dir=folder), spec.input_shape)
        saved = get_teacher(spec.teacher, data, epochs=spec.teacher_epochs, build_kwargs=spec.teacher_args,
                            bn_momentum=spec.bn_momentum, saved_dir=spec.saved_dir, evaluate=False).source
    return dataclasses.replace(spec, teacher=saved)


def enqueue_defaults(study, candidates: list[str], tune_ce_weight: bool, fixed=()) -> int:
    """Queue each candidate's published defaults as the first trials of a study that has
    none yet (a resumed or joined study is left alone); returns how many were queued."""
    if study.get_trials(deepcopy=False):
        return 0
    for candidate in candidates:
        params = {f"{candidate}/{k}": v for k, v in spaces.default_settings(candidate, tune_ce_weight).items()
                  if k not in fixed}
        if len(candidates) > 1:
            params[spaces.METHOD_PARAM] = candidate
        study.enqueue_trial(params, skip_if_exists=True)
    return len(candidates)


def tune_distillation(config: RunConfig, spec: DistillSpec, options: TuneOptions | None = None,
                      runner: Callable | None = None, reference_runner: Callable | None = None) -> TuneResult:
    """Tune `spec` on `config`'s validation split; writes trials.md/json, trials.png and
    tune.json into `config.output_dir` (and the retrained winner under final/). `runner`
    runs a trial (default `run_distillation`), `reference_runner` the student alone
    before the trials (default `reference.run_student_alone`; `options.reference`)."""
    options = options or TuneOptions()
    require_validation(config)
    candidates = candidates_of(spec, options)
    os.makedirs(config.output_dir, exist_ok=True)
    spec = trained_teacher(config, spec)
    url = storage_url(options.storage, config.output_dir)
    trial_epochs = options.trial_epochs or config.epochs
    study = open_study(options.study_name, url, pruner=make_pruner(options.pruner, trial_epochs), seed=config.seed)
    print(f"[tune] study {options.study_name!r} at {url}: {options.trials} trials of {trial_epochs} epochs "
          f"among {candidates}, pruner {options.pruner}", flush=True)
    subset = subset_warning(config, options, candidates)
    if subset:
        print(f"[tune] WARNING: {subset}", flush=True)
    reference = ensure_reference(study, config, spec, options, reference_runner) if options.reference else None
    if options.start_from_defaults:
        enqueue_defaults(study, candidates, options.tune_ce_weight and spec.student_loss_weight is None,
                         fixed=list(fixed_args(spec)))
    start = time.perf_counter()
    objective = distillation_objective(config, spec, options, candidates, runner=runner)
    with shared_teachers():  # the teacher loaded once for every trial, not once a trial
        run_sweep(study, objective, options.trials, options.timeout_minutes, progress_line(options.trials))
    sweep_seconds = time.perf_counter() - start
    rows = report.trial_rows(study.get_trials(deepcopy=False), candidates)
    report.write_trials(config.output_dir, rows, reference)
    report.plot_trials(os.path.join(config.output_dir, "trials.png"), rows, reference)
    method, settings, val_top1 = best_choice(study, candidates)
    against, warning = compare(method, spaces.method_args_text(settings), val_top1, reference)
    print(f"[tune] chose {method} {spaces.method_args_text(settings)} (validation top-1 {val_top1:.4f}"
          + ("" if reference is None else f"; student alone {against['student_alone_val_top1']:.4f}, "
             f"{against['margin_over_student_alone_points']:+.2f} points") + ")", flush=True)
    if warning:
        print(f"[tune] WARNING: {warning}", flush=True)
    summary = {"method": method, "settings": settings, "val_top1": val_top1, "candidates": candidates,
               "trials": len(rows), "trial_epochs": trial_epochs,
               "trial_train_limit": trial_train_part(config, options),
               "trials_scored_on": "the run's whole validation split",
               "validation_split": config.validation_split, "final_data": options.final_data,
               "start_from_defaults": options.start_from_defaults,
               "sweep_seconds": sweep_seconds, "storage": url, "study_name": options.study_name,
               "states": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
               **against, **({"warnings": [w for w in (subset, warning) if w]} if subset or warning else {})}
    final = None
    if options.retrain:
        final = retrain(config, spec, method, settings, options)
        m = final.metrics
        summary.update({k: m.get(k) for k in ("student_top1", "baseline_top1", "teacher_top1", "student_val_top1",
                                              "baseline_val_top1", "validation_examples", "epochs")})
        checked, final_warning = final_check(m)
        summary.update(checked)
        if checked:
            print(f"[tune] full budget, validation split: distilled {m['student_val_top1']:.4f}, student alone "
                  f"{m['baseline_val_top1']:.4f}", flush=True)
        if final_warning:
            print(f"[tune] WARNING: {final_warning}", flush=True)
            summary["warnings"] = summary.get("warnings", []) + [final_warning]
        if m.get("student_top1") is not None and m.get("baseline_top1") is not None:
            summary["gain_over_baseline"] = m["student_top1"] - m["baseline_top1"]
            print(f"[tune] test top-1 {m['student_top1']:.4f} (student alone {m['baseline_top1']:.4f})",
                  flush=True)
    write_json(os.path.join(config.output_dir, "tune.json"), summary)
    return TuneResult(method, settings, val_top1, summary, final)

"""The trial objective: one distillation run at the trial fidelity (fewer epochs and/or
training examples), its validation top-1 reported each epoch so the pruner can stop it,
scored on the run's whole validation split only (the same examples for every trial).

`trial_inputs` builds everything a trial trains from out of the config and the sampled
settings; `validation_score` reads the one number a trial returns. Neither passes the
test split's labels on: `score` never sees `student_top1` (the test top-1 a run always
measures last), so no test result can steer the choice.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import keras
import optuna

from kdkeras.experiment.config import DistillSpec, RunConfig
from kdkeras.methods.registry import from_spec, parse_method_args
from kdkeras.tap_plan import uncacheable_reason
from kdkeras.tune import spaces
from kdkeras.tune.options import TuneOptions

#: the metrics.json key a trial is scored by
SCORE_KEY = "student_val_top1"
#: the per-epoch log the pruner reads (Keras' `val_` logs: the validation split)
MONITOR = "val_accuracy"


def require_validation(config: RunConfig) -> None:
    """Refuse a config without a validation split: choosing on the test split would report
    a test top-1 that was itself chosen on."""
    split = getattr(config, "validation_split", 0) or 0
    if not split:
        raise ValueError(
            f"Tuning needs a validation split (RunConfig.validation_split / --validation_split=0.1 or a count "
            f"of examples), got validation_split={split!r}: settings are chosen on it, never on the test split.")


class PruningCallback(keras.callbacks.Callback):
    """Report each epoch's validation top-1 to an Optuna trial; stop the run (raise
    `optuna.TrialPruned`) when the pruner says so. Steps count epochs over every stage."""

    def __init__(self, trial: optuna.Trial, monitor: str = MONITOR):
        super().__init__()
        self.trial, self.monitor, self.step = trial, monitor, 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"No {self.monitor!r} in the epoch's logs {sorted(logs or {})}: a trial needs "
                           "validation data.")
        self.trial.report(float(value), self.step)
        self.step += 1
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.monitor}={float(value):.4f} at epoch {self.step}")


def cache_folder(config: RunConfig, spec: DistillSpec) -> str | None:
    """The teacher-output cache every trial reads (None without a teacher): the spec's,
    else OUTPUT_DIR/teacher_cache."""
    if not spec.teacher or str(spec.teacher).lower() == "none":
        return None
    return spec.teacher_cache or os.path.join(config.output_dir, "teacher_cache")


def cacheable(candidates: list[str], spec: DistillSpec) -> bool:
    """Whether every candidate trains from a teacher cache, with the user's own method
    arguments: not one whose methods read the teacher on copies of the batch (SSKD) or
    its CE gradients; otherwise the trials run the teacher."""
    nested = parse_method_args(spec.method_args)
    for candidate in candidates:
        members = spaces.member_names(candidate)
        methods = from_spec(candidate, {m: args for m, args in nested.items() if m in members})
        if any(uncacheable_reason(m) for m in methods):
            return False
    return True


def fixed_args(spec: DistillSpec) -> dict[str, Any]:
    """The user's own `method_args` as flat `{"kd.temperature": 2}`: fixed, never tuned."""
    nested = parse_method_args(spec.method_args)
    return {f"{m}.{arg}": v for m, args in nested.items() for arg, v in args.items()}


def trial_test_limit(config: RunConfig) -> int:
    """The test examples a trial reads: one batch. A run always ends on a test evaluation;
    a trial's is never read (`validation_score`), so it is kept as small as it can be."""
    return min(config.batch_size, config.test_limit or config.batch_size)


def trial_train_part(config: RunConfig, options: TuneOptions) -> int | None:
    """The training examples of one trial (`RunConfig.train_part_limit`): a stratified
    subset of the run's training part, `options.trial_train_limit` of them (the run's
    own cap when smaller); None: the whole training part. The validation split is never
    cut: `train_limit` stays the run's, so every trial is scored on its examples."""
    caps = [c for c in (options.trial_train_limit, config.train_part_limit) if c is not None]
    return min(caps) if caps else None


def subset_warning(config: RunConfig, options: TuneOptions, candidates: list[str]) -> str | None:
    """A warning when trials train on a subset (`trial_train_part`) and a candidate keeps a
    slot per training example (`requires_index`: CRD's memory bank), whose size and draws
    of negatives then differ in kind from the full run's; None otherwise."""
    from kdkeras.methods.registry import method_class

    part = trial_train_part(config, options)
    if part is None or (config.train_part_limit is not None and part >= config.train_part_limit):
        return None
    banked = sorted({name for c in candidates for name in spaces.member_names(c)
                     if method_class(name).requires_index})
    if not banked:
        return None
    return (f"Candidate method(s) {', '.join(banked)} keep a slot per training example (a memory bank) and "
            f"draw negatives from it: trials on {part:,} examples train on a bank of another size than the full "
            f"run's and can rank settings that lose at the full budget first. Leave --trial_train_limit "
            f"(TuneOptions.trial_train_limit) unset when tuning them: trials on the whole training part, with "
            f"fewer --trial_epochs if they cost too much.")


def trial_fidelity(config: RunConfig, options: TuneOptions, output_dir: str) -> RunConfig:
    """`config` at the trial fidelity, writing into `output_dir`: `trial_epochs`, the
    trial's training subset (`trial_train_part`), one test batch, the run's whole
    validation split. Every trial and the student-alone reference train on it, so
    they stay comparable."""
    return dataclasses.replace(
        config, epochs=options.trial_epochs or config.epochs,
        train_part_limit=trial_train_part(config, options), test_limit=trial_test_limit(config),
        output_dir=output_dir, overwrite=True, verbose=0,
        backup=False)  # a trial is never resumed (a killed one is failed and replaced): no per-epoch backups


def trial_inputs(config: RunConfig, spec: DistillSpec, options: TuneOptions, candidates: list[str],
                 candidate: str, settings: dict, number: int) -> tuple[RunConfig, DistillSpec]:
    """The (config, spec) of trial `number`: the trial fidelity, its own folder, one
    batch of the test split, the shared teacher cache (holding every candidate's taps;
    none when a candidate cannot be cached), no baseline. The trial trains on
    `trial_train_limit` examples of the run's training part (`trial_train_part`) and is
    scored on the run's whole validation split, the same for every trial."""
    args, ce_weight = spaces.split_settings(settings)
    members = spaces.member_names(candidate)
    args.update({k: v for k, v in fixed_args(spec).items() if k.split(".")[0] in members})
    trial_config = trial_fidelity(config, options, os.path.join(config.output_dir, "trials", f"trial_{number:04d}"))
    cache = cache_folder(config, spec) if cacheable(candidates, spec) else None
    trial_spec = dataclasses.replace(
        spec, method=candidate, method_args=spaces.method_args_text(args),
        student_loss_weight=spec.student_loss_weight if ce_weight is None else ce_weight, baseline=False,
        teacher_cache=cache, teacher_cache_methods=",".join(candidates) if cache else spec.teacher_cache_methods)
    return trial_config, trial_spec


def validation_score(metrics: dict) -> float:
    """A finished trial's score: its validation top-1 (never the test split's)."""
    if SCORE_KEY not in metrics:
        raise KeyError(f"The run's metrics have no {SCORE_KEY!r} (keys: {sorted(metrics)}): "
                       "a trial needs a validation split.")
    return float(metrics[SCORE_KEY])


def distillation_objective(config: RunConfig, spec: DistillSpec, options: TuneOptions, candidates: list[str],
                           runner: Callable | None = None) -> Callable[[optuna.Trial], float]:
    """The objective of a sweep: sample a candidate and its settings, run the trial through
    `runner` (default `run_distillation`) with the pruning callback, return validation top-1."""
    require_validation(config)
    if runner is None:
        from kdkeras.experiment.run import run_distillation as runner

    def objective(trial: optuna.Trial) -> float:
        candidate, settings = spaces.sample(trial, candidates, options.tune_ce_weight
                                            and spec.student_loss_weight is None, fixed=list(fixed_args(spec)))
        trial.set_user_attr("method", candidate)
        trial.set_user_attr("settings", settings)
        trial_config, trial_spec = trial_inputs(config, spec, options, candidates, candidate, settings,
                                                trial.number)
        # the last trial's models and graphs go, so a long sweep stays flat; Optuna's gc_after_trial
        # has collected them already (a second gc.collect here cost half a second a trial)
        keras.backend.clear_session(free_memory=False)
        print(f"[tune] trial {trial.number} starts: {candidate} {spaces.method_args_text(settings)}", flush=True)
        start = time.perf_counter()
        try:
            run = runner(trial_config, trial_spec, callbacks=[PruningCallback(trial)])
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - start)
        return validation_score(run.metrics)

    return objective

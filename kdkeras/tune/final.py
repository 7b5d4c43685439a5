"""The last step of a sweep: the best trial's method and settings retrained at the full
budget (with the student alone beside it), the test split evaluated once."""

from __future__ import annotations

import dataclasses
import os

from kdkeras.experiment.config import DistillSpec, RunConfig
from kdkeras.tune import spaces
from kdkeras.tune.objective import fixed_args
from kdkeras.tune.options import FINAL_DATA, TuneOptions


def best_choice(study, candidates: list[str]) -> tuple[str, dict, float]:
    """(method, settings, validation top-1) of the study's best complete trial."""
    try:
        best = study.best_trial
    except ValueError as err:
        raise ValueError(f"Study {study.study_name!r} has no complete trial to choose from "
                         f"({len(study.trials)} trials; all pruned or failed?).") from err
    method = best.user_attrs.get("method")
    settings = best.user_attrs.get("settings")
    if method is None:
        method, settings = spaces.settings_of(best.params, candidates)
    return method, dict(settings or {}), float(best.value)


def final_inputs(config: RunConfig, spec: DistillSpec, method: str, settings: dict,
                 options: TuneOptions | None = None) -> tuple[RunConfig, DistillSpec]:
    """The full-budget run of the chosen method: OUTPUT_DIR/final, the baseline on unless
    `options.final_baseline` is off, the validation part trained on too with
    `options.final_data="all"`, the teacher online (one run gains nothing from a cache of
    another fidelity)."""
    options = options or TuneOptions()
    args, ce_weight = spaces.split_settings(settings)
    members = spaces.member_names(method)
    args.update({k: v for k, v in fixed_args(spec).items() if k.split(".")[0] in members})
    final_config = dataclasses.replace(config, output_dir=os.path.join(config.output_dir, "final"))
    if options.final_data == "all":
        final_config = dataclasses.replace(final_config, validation_split=0, train_part_limit=None)
    elif options.final_data != "training":
        raise ValueError(f"final_data={options.final_data!r}; accepted: {', '.join(FINAL_DATA)}.")
    final_spec = dataclasses.replace(
        spec, method=method, method_args=spaces.method_args_text(args), baseline=options.final_baseline,
        teacher_cache=None,
        student_loss_weight=spec.student_loss_weight if ce_weight is None else ce_weight)
    return final_config, final_spec


def retrain(config: RunConfig, spec: DistillSpec, method: str, settings: dict, options: TuneOptions | None = None):
    """Run the chosen method at the full budget; returns its `DistillRun`."""
    from kdkeras.experiment.run import run_distillation

    final_config, final_spec = final_inputs(config, spec, method, settings, options)
    print(f"[tune] retraining {method} ({spaces.method_args_text(settings)}) for {config.epochs} epochs",
          flush=True)
    return run_distillation(final_config, final_spec)

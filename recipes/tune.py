"""Tune a distillation's settings on a validation split (Optuna), or choose the method
too with `--method=auto`, then retrain the winner at the full budget.

    python recipes/tune.py --teacher=saved_models/fashion_mnist_resnet20/model.keras \
        --student=resnet8 --method=auto --candidates=kd,dkd,crd --validation_split=0.1 \
        --epochs=5 --trial_epochs=2 --trial_train_limit=5000 --trials=20 --output_dir=runs/tune

Trials run at the trial fidelity (`--trial_epochs`, `--trial_train_limit`), read one
teacher-output cache, and are pruned early (`--pruner`); the study lives in
`--storage` (default OUTPUT_DIR/study.db: rerun the command to resume it, or start the
same command in more processes to share it). Before the trials the student alone is
trained once at the trial fidelity (`--noreference` to skip): the sweep warns when its
choice does not beat it on the validation split. Writes OUTPUT_DIR/trials.md,
trials.json, trials.png, tune.json (the choice, its validation top-1 against the
student alone's, the retrained student's test top-1 and the student alone's),
student_alone/ (the reference run) and final/ (the retrained run).
"""

from __future__ import annotations

from absl import flags

from kdkeras import recipe_utils


def define_flags(fv: flags.FlagValues) -> None:
    recipe_utils.define_distill_flags(fv)
    recipe_utils.define_run_flags(fv, epochs=10, lr=0.05)
    recipe_utils.define_tune_flags(fv)


def run(fv: flags.FlagValues):
    """Run the recipe on parsed flags; returns the `TuneResult` (tests read it)."""
    from kdkeras.tune import tune_distillation

    return tune_distillation(recipe_utils.run_config(fv), recipe_utils.distill_spec(fv),
                             recipe_utils.tune_options(fv))


if __name__ == "__main__":
    recipe_utils.run_main(define_flags, run)

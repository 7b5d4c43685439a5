"""Distil a zoo student from a teacher with any kdkeras method (or a `+` mix).

    python recipes/distill.py --teacher=saved_models/fashion_mnist_resnet20/model.keras \
        --student=resnet8 --method=kd --dataset=fashion_mnist --epochs=3 --baseline \
        --output_dir=runs/kd

`--teacher` is a saved `.keras` model, a zoo name (trained here first for
`--teacher_epochs`), or `none` for teacher-free methods. Methods with an
initialisation stage (FT, AB, FSP, KTA, SSKD, PAD-L2) get it first (`--init_epochs`). Writes
DIR/student.keras and DIR/metrics.json (`student_top1`, `teacher_top1`,
`method`, `epochs`, `train_seconds`, `command`, and with `--baseline`
`baseline_top1`, the same student trained alone on the same data, budget and
initial weights, trained with `baseline_optimizer`: under `--optimizer=dot`
plain SGD at the same momentum and weight decay, since one loss has no
distillation gradient for DOT to keep apart; and `teacher_margin` =
teacher_top1 - baseline_top1, with a warning when a teacher under a point
better is given most of the loss).
DKD's warm-up lasts a twelfth of the run (its published 20 of 240 epochs)
unless `--method_args=dkd.warmup_epochs=N` fixes it. `--method=auto` chooses the
method and its settings on the validation split (`recipes/tune.py`, same flags).
"""

from __future__ import annotations

from absl import flags

from kdkeras import experiment, recipe_utils


def define_flags(fv: flags.FlagValues) -> None:
    recipe_utils.define_distill_flags(fv)
    recipe_utils.define_run_flags(fv, epochs=10, lr=0.05)
    recipe_utils.define_tune_flags(fv)


def run(fv: flags.FlagValues):
    """Run the recipe on parsed flags; returns what it measured (tests read it): a
    `DistillRun`, or with --method=auto the `TuneResult` of `recipes/tune.py`."""
    if fv["method"].value.strip().lower() == "auto":
        from kdkeras.tune import tune_distillation

        return tune_distillation(recipe_utils.run_config(fv), recipe_utils.distill_spec(fv),
                                 recipe_utils.tune_options(fv))
    distilled = experiment.run_distillation(recipe_utils.run_config(fv), recipe_utils.distill_spec(fv))
    m = distilled.metrics
    print(experiment.result_line({k: m.get(k) for k in ("teacher_top1", "baseline_top1", "student_top1",
                                                         "teacher_margin", "teacher_val_top1",
                                                         "baseline_val_top1", "student_val_top1")}))
    for warning in m.get("warnings", []):  # after the training logs, where it is read
        print(f"WARNING: {warning}")
    return distilled


if __name__ == "__main__":
    recipe_utils.run_main(define_flags, run)

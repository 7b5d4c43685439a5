"""Teacher-free KD (Yuan et al. 2020): label smoothing, self-KD and a virtual teacher.

    python recipes/teacher_free.py --student=resnet8 --dataset=fashion_mnist \
        --epochs=5 --output_dir=runs/teacher_free [--teacher=resnet20]

Trains one student on one budget (data, epochs, schedule, initial weights)
five ways: plain cross-entropy (the baseline), label smoothing (LSR),
Tf-KD self (KD from a frozen, trained copy of the student itself: the
baseline), Tf-KD reg (the hand-made virtual teacher), and plain KD when
`--teacher` (a .keras path or a zoo name trained here) is given. Writes
DIR/teacher_free.md (table), DIR/teacher_free.png (bar plot) and
DIR/teacher_free.json.
"""

from __future__ import annotations

import os

import keras
from absl import flags

from kdkeras import experiment, recipe_utils, vis
from kdkeras.methods import KD, LSR, VirtualTeacher



def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("student", "resnet8", "Zoo name of the student.", flag_values=fv)
    flags.DEFINE_string("student_args", "", "Zoo kwargs for the student, e.g. 'width_multiplier=0.5'.",
                        flag_values=fv)
    flags.DEFINE_string("teacher", None, "Optional teacher for the normal-KD row: a .keras path or a zoo name.",
                        flag_values=fv)
    flags.DEFINE_integer("teacher_epochs", 10, "Epochs when --teacher is a zoo name trained here.",
                         lower_bound=1, flag_values=fv)
    for name, default, help_ in (
        ("lsr_epsilon", 0.1, "LSR smoothing epsilon."),
        ("self_temperature", 20.0, "Tf-KD self: KD temperature."),
        ("self_alpha", 0.95, "Tf-KD self: KD weight alpha (CE weight 1 - alpha)."),
        ("reg_temperature", 20.0, "Tf-KD reg: virtual teacher temperature."),
        ("reg_correct_prob", 0.99, "Tf-KD reg: virtual teacher's probability on the label."),
        ("reg_weight", 0.1, "Tf-KD reg: weight of the virtual-teacher term (the reference's alpha * m / K)."),
        ("reg_ce_weight", 0.9, "Tf-KD reg: CE weight (the reference's 1 - alpha)."),
        ("kd_temperature", 4.0, "Normal KD (with --teacher): temperature."),
        ("kd_alpha", 0.9, "Normal KD: weight alpha (CE weight 1 - alpha)."),
    ):
        flags.DEFINE_float(name, default, help_, lower_bound=0.0, flag_values=fv)
    recipe_utils.define_run_flags(fv, epochs=10, lr=0.05)


def frozen_copy(model: keras.Model, name: str) -> keras.Model:
    """An independent copy of a trained model (same weights) to serve as a teacher."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.name = name
    copy.trainable = False
    return copy


def run(fv: flags.FlagValues):
    """Run the recipe on parsed flags; returns what it measured (tests read it)."""
    config = recipe_utils.run_config(fv)
    strategy = experiment.start(config)
    shape = experiment.model_input_shape(fv.teacher) if fv.teacher and experiment.is_model_path(fv.teacher) else None
    data = experiment.setup_data(config, shape)
    teacher = experiment.get_teacher(fv.teacher, data, epochs=fv.teacher_epochs, strategy=strategy)
    kwargs = recipe_utils.parse_kwargs(fv.student_args)
    with strategy.scope():
        initial = experiment.build_model(fv.student, data, seed=config.seed, **kwargs).get_weights()
    runs = {
        "baseline": (None, [], 1.0, "cross-entropy"),
        "LSR": (None, [LSR(epsilon=fv.lsr_epsilon)], 0.0, f"epsilon={fv.lsr_epsilon}"),
        "Tf-KD self": ("self", [KD(temperature=fv.self_temperature, weight=fv.self_alpha)],
                       1.0 - fv.self_alpha,
                       f"T={fv.self_temperature}, alpha={fv.self_alpha}, teacher = the baseline"),
        "Tf-KD reg": (None, [VirtualTeacher(correct_prob=fv.reg_correct_prob,
                                            temperature=fv.reg_temperature, weight=fv.reg_weight)],
                      fv.reg_ce_weight, f"a={fv.reg_correct_prob}, T={fv.reg_temperature}, "
                      f"weight={fv.reg_weight}, CE {fv.reg_ce_weight}"),
    }
    if teacher is not None:
        runs["KD"] = (teacher.model, [KD(temperature=fv.kd_temperature, weight=fv.kd_alpha)],
                      1.0 - fv.kd_alpha, f"T={fv.kd_temperature}, alpha={fv.kd_alpha}, teacher "
                      f"{fv.teacher} (top-1 {vis.pct(teacher.top1)})")
    results: dict[str, dict] = {}
    for i, (run, (run_teacher, methods, ce_weight, _)) in enumerate(runs.items(), 1):
        print(f"[{i}/{len(runs)}] {run}: {fv.student}, {config.epochs} epochs")
        with strategy.scope():
            student = experiment.build_model(fv.student, data, seed=config.seed, **kwargs)
            student.set_weights(initial)
        if run == "baseline":
            with strategy.scope():  # watching the validation split when there is one, as the others do
                out = experiment.fit_data(student, data, config.train_config(), config.output_dir, tag="baseline")
            baseline_model = student
        else:
            if run_teacher == "self":
                run_teacher = frozen_copy(baseline_model, f"{baseline_model.name}_self_teacher")
            out = experiment.distill(run_teacher, student, methods, data, config,
                                     student_loss_weight=ce_weight, strategy=strategy,
                                     tag=run.lower().replace(" ", "_").replace("-", ""))
        results[run] = out
        print(f"    {run} top1={out['top1']:.4f}")

    baseline = results["baseline"]["top1"]
    rows = [[run, vis.pct(r["top1"]), f"{100 * (r['top1'] - baseline):+.2f}", runs[run][3]]
            for run, r in results.items()]
    table = vis.markdown_table(["method", "top-1 (%)", "vs baseline", "settings"], rows, align="lrrl")
    png = vis.accuracy_bars(list(results), [r["top1"] for r in results.values()],
                            os.path.join(config.output_dir, "teacher_free.png"),
                            f"Teacher-free KD: {fv.student} on {config.dataset}", reference=baseline,
                            highlight=[run != "baseline" for run in results])
    command = experiment.command_line()
    experiment.write_results(
        config.output_dir, "teacher_free", f"Teacher-free KD on {config.dataset}",
        [("Results", [table, f"{fv.student}, {data.num_train} training examples, "
                             f"{config.epochs} epochs, same initial weights for every row."]),
         ("Plot", png), ("Command", f"`{command}`")],
        {"dataset": config.dataset, "student": fv.student, "epochs": config.epochs,
         "train_limit": config.train_limit, "seed": config.seed, "teacher": fv.teacher,
         "teacher_top1": teacher.top1 if teacher else None, "baseline_top1": baseline,
         **experiment.validation_keys(data, baseline_val_top1=results["baseline"].get("val_top1"),
                                      teacher_val_top1=teacher.val_top1 if teacher else None),
         "command": command,
         "results": {run: {**{k: r[k] for k in ("top1", "val_top1", "train_seconds") if k in r},
                           "settings": runs[run][3], "history": r["history"]}
                     for run, r in results.items()}})
    print(table)
    print(experiment.result_line({run.replace(" ", "_"): r["top1"] for run, r in results.items()}))
    return results


if __name__ == "__main__":
    recipe_utils.run_main(define_flags, run)

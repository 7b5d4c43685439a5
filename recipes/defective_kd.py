"""Defective KD (De-KD, Yuan et al. 2020): poorly trained teachers still teach.

    python recipes/defective_kd.py --teacher=resnet20 --student=resnet8 \
        --dataset=fashion_mnist --epochs=5 --defect=steps --levels=0,10,40,160 \
        --output_dir=runs/defective_kd

Trains one teacher per level, each stopped at a low accuracy, and distils
the student from each with plain KD; the student alone is the baseline (same
budget, same initial weights). `--defect` picks how a teacher is crippled:

* `steps`: trained for only `level` optimiser steps (0 = untrained, ~chance);
* `noise`: trained `--teacher_epochs` on labels of which a fixed fraction
  `level` is replaced by uniformly random classes (1.0 = pure noise);
* `subset`: trained `--teacher_epochs` on only the first `level` examples.

`--full_teacher` adds a normally trained teacher as the right-most point.
Writes DIR/defective_kd.md (table), DIR/defective_kd.png (student top-1
against teacher top-1 with the baseline as a line, the Tf-KD paper's figure)
and DIR/defective_kd.json.
"""

from __future__ import annotations

import os

from absl import flags

from kdkeras import data as data_lib
from kdkeras import experiment, recipe_utils, training, vis
from kdkeras.methods import KD

DEFAULT_LEVELS = {"steps": "0,10,40,160", "noise": "1.0,0.95,0.9,0.8", "subset": "20,60,200"}



def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("teacher", "resnet20", "Zoo name of the teacher architecture.", flag_values=fv)
    flags.DEFINE_string("teacher_args", "", "Zoo kwargs of the teacher.", flag_values=fv)
    flags.DEFINE_string("student", "resnet8", "Zoo name of the student.", flag_values=fv)
    flags.DEFINE_string("student_args", "", "Zoo kwargs of the student.", flag_values=fv)
    flags.DEFINE_enum("defect", "steps", list(DEFAULT_LEVELS), "How the teachers are crippled.",
                      flag_values=fv)
    flags.DEFINE_string("levels", None,
                        "Comma list of levels (steps, noise fractions or example counts); default "
                        + "; ".join(f"{k}: {v}" for k, v in DEFAULT_LEVELS.items()) + ".",
                        flag_values=fv)
    flags.DEFINE_integer("teacher_epochs", 10,
                         "Teacher epochs for the noise/subset defects and --full_teacher.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("full_teacher", True, "Also distil from a normally trained teacher.",
                      flag_values=fv)
    flags.DEFINE_float("kd_temperature", 4.0, "KD temperature.", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_float("kd_alpha", 0.9, "KD weight alpha (CE weight 1 - alpha).", lower_bound=0.0,
                       upper_bound=1.0, flag_values=fv)
    recipe_utils.define_run_flags(fv, epochs=10, lr=0.05)


def parse_levels(defect: str, text: str | None) -> list:
    """The --levels of a --defect as numbers, checked (the bad value named)."""
    cast = float if defect == "noise" else int
    try:
        levels = [cast(v) for v in (text or DEFAULT_LEVELS[defect]).split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--levels={text!r}: {defect} levels are {cast.__name__}s ({err}).") from None
    if defect == "noise" and any(not 0.0 <= v <= 1.0 for v in levels):
        raise ValueError(f"noise levels must lie in [0, 1], got {levels}.")
    if defect != "noise" and any(v < 0 for v in levels):
        raise ValueError(f"{defect} levels must be >= 0, got {levels}.")
    if defect == "subset" and 0 in levels:
        raise ValueError("subset levels must be >= 1 example.")
    return levels


def defective_teacher(level, data, fv, strategy):
    """Build and train one teacher crippled as --defect says at `level`; return
    (model, what was done). level "full" is a normally trained teacher."""
    config = data.config
    with strategy.scope():
        teacher = experiment.build_model(fv.teacher, data, seed=config.seed + 1000,
                                         **recipe_utils.parse_kwargs(fv.teacher_args))
    epochs = fv.teacher_epochs
    if level == "full":
        train, note = data.train, f"{epochs} epochs, clean labels"
    elif fv.defect == "steps":
        if level == 0:
            return teacher, "untrained"
        train, epochs, note = data.train.repeat().take(level), 1, f"{level} steps"
    elif fv.defect == "noise":
        indexed = data.load(with_index=True, augment=None)
        train = data_lib.noisy_labels(indexed, data.num_train, data.num_classes, level, config.seed)
        note = f"{epochs} epochs, {100 * level:.0f}% random labels"
    else:
        train, note = data.load(limit=level, augment=None), f"{epochs} epochs on {level} examples"
    with strategy.scope():  # watching the validation split when there is one: the test split is read at the end
        experiment.fit(teacher, train, data.validation_data, config.train_config(epochs), config.output_dir,
                       tag=f"teacher_{fv.defect}_{level}")
    return teacher, note


def run(fv: flags.FlagValues):
    """Run the recipe on parsed flags; returns what it measured (tests read it)."""
    levels = parse_levels(fv.defect, fv.levels)
    config = recipe_utils.run_config(fv)
    strategy = experiment.start(config)
    data = experiment.setup_data(config)
    student_kwargs = recipe_utils.parse_kwargs(fv.student_args)

    def student():
        with strategy.scope():
            return experiment.build_model(fv.student, data, seed=config.seed, **student_kwargs)

    runs = list(levels) + (["full"] if fv.full_teacher else [])
    total = 1 + 2 * len(runs)
    print(f"[1/{total}] baseline: {fv.student} alone")
    with strategy.scope():  # watching the validation split when there is one, as the KD runs do
        alone = experiment.fit_data(student(), data, config.train_config(), config.output_dir, tag="baseline")
    baseline = alone["top1"]
    print(f"    baseline top1={baseline:.4f}")
    points = []
    for i, level in enumerate(runs):
        print(f"[{2 + 2 * i}/{total}] teacher {fv.teacher}, {fv.defect}={level}")
        teacher, note = defective_teacher(level, data, fv, strategy)
        teacher_top1 = training.evaluate_top1(teacher, data.test)
        teacher_val = None if data.validation is None else training.evaluate_top1(teacher, data.validation)
        print(f"    teacher top1={teacher_top1:.4f} ({note})")
        print(f"[{3 + 2 * i}/{total}] student {fv.student} with KD from it")
        distilled = experiment.distill(
            teacher, student(), [KD(temperature=fv.kd_temperature, weight=fv.kd_alpha)], data, config,
            student_loss_weight=1.0 - fv.kd_alpha, tag=f"student_{level}", strategy=strategy)
        student_top1 = distilled["top1"]
        print(f"    student top1={student_top1:.4f} (baseline {baseline:.4f})")
        points.append({"level": level, "teacher": note, "teacher_top1": teacher_top1,
                       "student_top1": student_top1, "gain": student_top1 - baseline,
                       **experiment.validation_top1s(data, teacher_val_top1=teacher_val,
                                                     student_val_top1=distilled.get("val_top1"))})

    rows = [[str(p["level"]), p["teacher"], vis.pct(p["teacher_top1"]), vis.pct(p["student_top1"]),
             f"{100 * p['gain']:+.2f}"] for p in points]
    rows.append(["-", "none (student alone)", "-", vis.pct(baseline), "+0.00"])
    table = vis.markdown_table([fv.defect, "teacher training", "teacher top-1 (%)",
                                "student top-1 (%)", "vs baseline"], rows, align="llrrr")
    png = vis.student_vs_teacher(
        points, baseline, os.path.join(config.output_dir, "defective_kd.png"),
        f"Defective KD ({fv.defect}): {fv.teacher} -> {fv.student}, {config.dataset}")
    command = experiment.command_line()
    experiment.write_results(
        config.output_dir, "defective_kd", f"Defective KD on {config.dataset}",
        [("Results", [table, f"{fv.student}, {data.num_train} training examples, "
                             f"{config.epochs} epochs, KD T={fv.kd_temperature}, "
                             f"alpha={fv.kd_alpha}; same initial student weights in every run."]),
         ("Plot", png), ("Command", f"`{command}`")],
        {"dataset": config.dataset, "teacher": fv.teacher, "student": fv.student,
         "defect": fv.defect, "epochs": config.epochs, "teacher_epochs": fv.teacher_epochs,
         "train_limit": config.train_limit, "seed": config.seed, "kd_temperature": fv.kd_temperature,
         "kd_alpha": fv.kd_alpha, "baseline_top1": baseline,
         **experiment.validation_keys(data, baseline_val_top1=alone.get("val_top1")),
         "points": points, "command": command})
    print(table)
    print(f"RESULT baseline={baseline:.4f} " + " ".join(
        f"{p['level']}:{p['teacher_top1']:.4f}->{p['student_top1']:.4f}" for p in points))
    return points


if __name__ == "__main__":
    recipe_utils.run_main(define_flags, run)

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
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import kdkeras  # noqa: E402
from kdkeras import data as data_lib  # noqa: E402
from kdkeras import recipe_utils, training  # noqa: E402
from kdkeras.vis.plots import new_figure, save_figure  # noqa: E402
from kdkeras.vis.report import write_report  # noqa: E402

DEFAULT_LEVELS = {"steps": "0,10,40,160", "noise": "1.0,0.95,0.9,0.8", "subset": "20,60,200"}

FLAGS = flags.FLAGS
flags.DEFINE_string("teacher", "resnet20", "Zoo name of the teacher architecture.")
flags.DEFINE_string("teacher_args", "", "Zoo kwargs of the teacher.")
flags.DEFINE_string("student", "resnet8", "Zoo name of the student.")
flags.DEFINE_string("student_args", "", "Zoo kwargs of the student.")
flags.DEFINE_enum("defect", "steps", list(DEFAULT_LEVELS), "How the teachers are crippled.")
flags.DEFINE_string("levels", None,
                    "Comma list of levels (steps, noise fractions or example counts); default "
                    + "; ".join(f"{k}: {v}" for k, v in DEFAULT_LEVELS.items()) + ".")
flags.DEFINE_integer("teacher_epochs", 10, "Teacher epochs for the noise/subset defects and --full_teacher.")
flags.DEFINE_bool("full_teacher", True, "Also distil from a normally trained teacher.")
flags.DEFINE_float("kd_temperature", 4.0, "KD temperature.")
flags.DEFINE_float("kd_alpha", 0.9, "KD weight alpha (CE weight 1 - alpha).")
recipe_utils.define_data_flags()
recipe_utils.define_train_flags(epochs=10, lr=0.05)


def parse_levels(defect: str, text: str | None) -> list:
    cast = float if defect == "noise" else int
    levels = [cast(v) for v in (text or DEFAULT_LEVELS[defect]).split(",") if v.strip()]
    if defect == "noise" and any(not 0.0 <= v <= 1.0 for v in levels):
        raise ValueError(f"noise levels must lie in [0, 1], got {levels}.")
    if defect != "noise" and any(v < 0 for v in levels):
        raise ValueError(f"{defect} levels must be >= 0, got {levels}.")
    if defect == "subset" and 0 in levels:
        raise ValueError("subset levels must be >= 1 example.")
    return levels


def noisy_labels(dataset, num_examples: int, num_classes: int, fraction: float, seed: int):
    """`(image, label)` batches where a fixed `fraction` of the examples (chosen
    once by index) carry a uniformly random class instead of their label."""
    rng = np.random.default_rng(seed)
    flip = tf.constant(rng.random(num_examples) < fraction)
    random_class = tf.constant(rng.integers(0, num_classes, num_examples), tf.int32)

    def relabel(x, y):
        index = x["index"]
        return x["image"], tf.where(tf.gather(flip, index), tf.gather(random_class, index), y)

    return dataset.map(relabel, num_parallel_calls=tf.data.AUTOTUNE)


def defective_teacher(level, data, strategy) -> tuple:
    """Build and train one crippled teacher; return (model, what was done)."""
    kwargs = recipe_utils.zoo_kwargs(FLAGS.teacher_args)
    with strategy.scope():
        teacher = recipe_utils.build_model(FLAGS.teacher, data, seed=FLAGS.seed + 1000, **kwargs)
    defect, tag = FLAGS.defect, f"teacher_{FLAGS.defect}_{level}"
    common = dict(batch_size=FLAGS.batch_size, image_size=data.input_shape[:2],
                  channels=data.input_shape[2], data_dir=FLAGS.data_dir, seed=FLAGS.seed)
    if defect == "steps":
        if level == 0:
            return teacher, "untrained"
        train = data.train.repeat().take(level)
        config = recipe_utils.train_config(epochs=1)
        note = f"{level} steps"
    elif defect == "noise":
        indexed = data_lib.load(FLAGS.dataset, data.info.train_split, limit=FLAGS.train_limit,
                                with_index=True, **common)
        train = noisy_labels(indexed, data.num_train, data.num_classes, level, FLAGS.seed)
        config = recipe_utils.train_config(FLAGS.teacher_epochs)
        note = f"{FLAGS.teacher_epochs} epochs, {100 * level:.0f}% random labels"
    else:
        train = data_lib.load(FLAGS.dataset, data.info.train_split, limit=level, **common)
        config = recipe_utils.train_config(FLAGS.teacher_epochs)
        note = f"{FLAGS.teacher_epochs} epochs on {level} examples"
    with strategy.scope():
        recipe_utils.fit(teacher, train, data.test, config, FLAGS.output_dir, tag=tag)
    return teacher, note


def plot(points: list[dict], baseline: float, path: str) -> str:
    fig, axes = new_figure(1, 1, 5.5, 4.0)
    ax = axes[0, 0]
    t = [100 * p["teacher_top1"] for p in points]
    s = [100 * p["student_top1"] for p in points]
    order = np.argsort(t)
    ax.plot(np.array(t)[order], np.array(s)[order], "o-", color="#4c72b0", label="student with KD")
    for p, x, y in zip(points, t, s):
        ax.annotate(str(p["level"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(100 * baseline, color="#c44e52", linestyle="--",
               label=f"student alone ({100 * baseline:.2f}%)")
    ax.margins(x=0.08, y=0.12)
    ax.set_xlabel("teacher top-1 (%)")
    ax.set_ylabel("student top-1 (%)")
    ax.set_title(f"Defective KD ({FLAGS.defect}): {FLAGS.teacher} -> {FLAGS.student}, {FLAGS.dataset}",
                 fontsize=10)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def main(argv):
    del argv
    strategy = recipe_utils.start_run()
    levels = parse_levels(FLAGS.defect, FLAGS.levels)
    data = recipe_utils.setup_data()
    config = recipe_utils.train_config()
    student_kwargs = recipe_utils.zoo_kwargs(FLAGS.student_args)

    def student():
        return recipe_utils.build_model(FLAGS.student, data, seed=FLAGS.seed, **student_kwargs)

    runs = list(levels) + (["full"] if FLAGS.full_teacher else [])
    total = 1 + 2 * len(runs)
    print(f"[1/{total}] baseline: {FLAGS.student} alone")
    with strategy.scope():
        baseline = recipe_utils.fit(student(), data.train, data.test, config,
                       FLAGS.output_dir, tag="baseline")["top1"]
    print(f"    baseline top1={baseline:.4f}")
    points = []
    for i, level in enumerate(runs):
        print(f"[{2 + 2 * i}/{total}] teacher {FLAGS.teacher}, {FLAGS.defect}={level}")
        if level == "full":
            with strategy.scope():
                teacher = recipe_utils.build_model(FLAGS.teacher, data, seed=FLAGS.seed + 1000,
                                                   **recipe_utils.zoo_kwargs(FLAGS.teacher_args))
                recipe_utils.fit(teacher, data.train, data.test,
                    recipe_utils.train_config(FLAGS.teacher_epochs),
                    FLAGS.output_dir, tag="teacher_full")
            note = f"{FLAGS.teacher_epochs} epochs, clean labels"
        else:
            teacher, note = defective_teacher(level, data, strategy)
        teacher_top1 = training.evaluate_top1(teacher, data.test)
        print(f"    teacher top1={teacher_top1:.4f} ({note})")
        print(f"[{3 + 2 * i}/{total}] student {FLAGS.student} with KD from it")
        with strategy.scope():
            kd = kdkeras.methods.KD(temperature=FLAGS.kd_temperature, weight=FLAGS.kd_alpha)
            s = student()
            distiller = kdkeras.Distiller(teacher, s, [kd], student_loss_weight=1.0 - FLAGS.kd_alpha)
            student_top1 = recipe_utils.fit(distiller, data.train, data.test, config, FLAGS.output_dir,
                               tag=f"student_{level}")["top1"]
        print(f"    student top1={student_top1:.4f} (baseline {baseline:.4f})")
        points.append({"level": level, "teacher": note, "teacher_top1": teacher_top1,
                       "student_top1": student_top1, "gain": student_top1 - baseline})

    rows = [[str(p["level"]), p["teacher"], recipe_utils.pct(p["teacher_top1"]), recipe_utils.pct(p["student_top1"]),
             f"{100 * p['gain']:+.2f}"] for p in points]
    rows.append(["-", "none (student alone)", "-", recipe_utils.pct(baseline), "+0.00"])
    table = recipe_utils.markdown_table([FLAGS.defect, "teacher training", "teacher top-1 (%)",
                            "student top-1 (%)", "vs baseline"], rows)
    png = plot(points, baseline, os.path.join(FLAGS.output_dir, "defective_kd.png"))
    command = "python " + " ".join(sys.argv)
    write_report(os.path.join(FLAGS.output_dir, "defective_kd.md"),
                 f"Defective KD on {FLAGS.dataset}",
                 [("Results", [table, f"{FLAGS.student}, {data.num_train} training examples, "
                               f"{FLAGS.epochs} epochs, KD T={FLAGS.kd_temperature}, "
                               f"alpha={FLAGS.kd_alpha}; same initial student weights in every run."]),
                  ("Plot", png), ("Command", f"`{command}`")])
    payload = {
        "dataset": FLAGS.dataset, "teacher": FLAGS.teacher, "student": FLAGS.student,
        "defect": FLAGS.defect, "epochs": FLAGS.epochs, "teacher_epochs": FLAGS.teacher_epochs,
        "train_limit": FLAGS.train_limit, "seed": FLAGS.seed, "kd_temperature": FLAGS.kd_temperature,
        "kd_alpha": FLAGS.kd_alpha, "baseline_top1": baseline, "points": points, "command": command,
    }
    training.write_json(os.path.join(FLAGS.output_dir, "defective_kd.json"), payload)
    print(table)
    print("RESULT baseline={:.4f} ".format(baseline) + " ".join(
        f"{p['level']}:{p['teacher_top1']:.4f}->{p['student_top1']:.4f}" for p in points))


if __name__ == "__main__":
    app.run(main)

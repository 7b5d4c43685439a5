"""Distil a zoo student from a teacher with any kdkeras method (or a `+` mix).

    python recipes/distill.py --teacher=saved_models/fashion_mnist_resnet20/model.keras \
        --student=resnet8 --method=kd --dataset=fashion_mnist --epochs=3 --baseline \
        --output_dir=runs/kd

`--teacher` is a saved `.keras` model, a zoo name (trained here first for
`--teacher_epochs`), or `none` for teacher-free methods. Writes
DIR/student.keras and DIR/metrics.json (`student_top1`, `teacher_top1`,
`method`, `epochs`, `train_seconds`, and `baseline_top1` with `--baseline`,
the same student trained alone on the same data, budget and initial weights).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

import kdkeras  # noqa: E402
import kdkeras.stages  # noqa: E402
from kdkeras import recipe_utils, training  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("teacher", None, "Path to a .keras teacher, a zoo name to train first, or 'none'.")
flags.DEFINE_string("student", "resnet8", "Zoo name of the student.")
flags.DEFINE_string("method", "kd", "Method name or '+' combination, e.g. kd, kd+at, crd.")
flags.DEFINE_string("method_args", "", "Per-method overrides: 'kd.temperature=2,at.weight=500'.")
flags.DEFINE_float("student_loss_weight", None,
                   "Weight of the student's cross-entropy; default 0.1 when KD is used (the CIFAR recipe), else 1.")
flags.DEFINE_integer("teacher_epochs", 10, "Epochs when --teacher is a zoo name trained here.")
flags.DEFINE_bool("baseline", False, "Also train the student alone on the same budget (baseline_top1).")
flags.DEFINE_integer("init_epochs", None,
                     "Epochs of the initialisation stage of FT/AB/FSP (default: a quarter of --epochs, at least 1).")
flags.DEFINE_string("student_args", "", "Zoo kwargs for the student, e.g. 'width_multiplier=0.5,dropout=0.1'.")
recipe_utils.define_data_flags()
recipe_utils.define_train_flags(epochs=10, lr=0.05)


def get_teacher(spec, data, strategy, output_dir):
    """Load, or train, the teacher; returns (model or None, top1 or None)."""
    if spec is None or spec.lower() == "none":
        return None, None
    with strategy.scope():
        if recipe_utils.is_model_path(spec):
            teacher = training.load_model(spec)
        else:
            teacher = recipe_utils.build_model(spec, data, seed=FLAGS.seed + 1000)
            print(f"Training teacher {spec} for {FLAGS.teacher_epochs} epochs")
            training.train_supervised(
                teacher, data.train, data.test,
                recipe_utils.train_config(FLAGS.teacher_epochs), output_dir, tag="teacher",
            )
            teacher.save(os.path.join(output_dir, "teacher.keras"))
    return teacher, training.evaluate_top1(teacher, data.test)


def main(argv):
    del argv
    strategy = recipe_utils.start_run()
    probe = kdkeras.methods.from_spec(FLAGS.method, FLAGS.method_args, num_examples=1)
    with_index = any(m.requires_index for m in probe)
    teacher_shape = None
    if FLAGS.teacher and recipe_utils.is_model_path(FLAGS.teacher):
        teacher_shape = recipe_utils.model_input_shape(FLAGS.teacher)
    data = recipe_utils.setup_data(teacher_shape, with_index=with_index)
    teacher, teacher_top1 = get_teacher(FLAGS.teacher, data, strategy, FLAGS.output_dir)
    if teacher_top1 is not None:
        print(f"teacher top1={teacher_top1:.4f}")

    student_kwargs = recipe_utils.zoo_kwargs(FLAGS.student_args)
    weight = FLAGS.student_loss_weight
    if weight is None:
        weight = 0.1 if any(m.name == "kd" for m in probe) else 1.0
    config = recipe_utils.train_config()
    with strategy.scope():
        student = recipe_utils.build_model(FLAGS.student, data, seed=FLAGS.seed, **student_kwargs)
        initial = student.get_weights()
        methods = kdkeras.methods.from_spec(FLAGS.method, FLAGS.method_args, num_examples=data.num_train)
        distiller = kdkeras.Distiller(teacher, student, methods, student_loss_weight=weight)
    print(f"Distilling {FLAGS.student} ({student.count_params():,} params) with "
          f"{[m.name for m in methods]}, student_loss_weight={weight}")
    if kdkeras.stages.needs_init_stage(methods):
        init_epochs = FLAGS.init_epochs or max(1, FLAGS.epochs // 4)
        stages = kdkeras.stages.default_stages(methods, init_epochs, FLAGS.epochs, weight)
        steps = training.steps_in(data.train)

        def optimizer_fn(stage):
            return training.make_optimizer(
                config.optimizer, config.lr, steps * max(stage.epochs, 1), config.schedule,
                config.momentum, config.weight_decay,
            )

        with strategy.scope():
            start = time.perf_counter()
            histories = kdkeras.run_stages(
                teacher, student, stages, data.train, data.test, optimizer_fn, FLAGS.output_dir
            )
            seconds = time.perf_counter() - start
        history = histories["main"]
        history["stages"] = {k: v for k, v in histories.items() if k != "main"}
    else:
        with strategy.scope():
            history, seconds = training.compile_and_fit(
                distiller, data.train, data.test, config, FLAGS.output_dir, tag="distill"
            )
    student_top1 = training.evaluate_top1(student, data.test)
    student.save(os.path.join(FLAGS.output_dir, "student.keras"))
    metrics = {
        "method": FLAGS.method,
        "method_args": FLAGS.method_args,
        "dataset": FLAGS.dataset,
        "teacher": FLAGS.teacher,
        "student": FLAGS.student,
        "student_top1": student_top1,
        "teacher_top1": teacher_top1,
        "epochs": FLAGS.epochs,
        "train_limit": FLAGS.train_limit,
        "batch_size": FLAGS.batch_size,
        "lr": FLAGS.lr,
        "seed": FLAGS.seed,
        "student_loss_weight": weight,
        "train_seconds": seconds,
        "history": history,
    }
    print(f"student top1={student_top1:.4f} ({seconds:.0f}s)")

    if FLAGS.baseline:
        with strategy.scope():
            baseline = recipe_utils.build_model(FLAGS.student, data, seed=FLAGS.seed, **student_kwargs)
            baseline.set_weights(initial)
            result = training.train_supervised(
                baseline, data.train, data.test, config, FLAGS.output_dir, tag="baseline"
            )
        baseline.save(os.path.join(FLAGS.output_dir, "baseline.keras"))
        metrics.update(
            baseline_top1=result["top1"],
            baseline_train_seconds=result["train_seconds"],
            baseline_history=result["history"],
        )
        print(f"baseline top1={result['top1']:.4f}")
    training.write_json(os.path.join(FLAGS.output_dir, "metrics.json"), metrics)
    summary = {k: metrics.get(k) for k in ("teacher_top1", "baseline_top1", "student_top1")}
    print("RESULT " + " ".join(f"{k}={v:.4f}" for k, v in summary.items() if v is not None))


if __name__ == "__main__":
    app.run(main)

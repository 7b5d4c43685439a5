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
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

import kdkeras  # noqa: E402
from kdkeras import recipe_utils, training  # noqa: E402
from kdkeras.methods.soft_labels import LSR, VirtualTeacher  # noqa: E402
from kdkeras.vis.plots import new_figure, save_figure  # noqa: E402
from kdkeras.vis.report import write_report  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("student", "resnet8", "Zoo name of the student.")
flags.DEFINE_string("student_args", "", "Zoo kwargs for the student, e.g. 'width_multiplier=0.5'.")
flags.DEFINE_string("teacher", None, "Optional teacher for the normal-KD row: a .keras path or a zoo name.")
flags.DEFINE_integer("teacher_epochs", 10, "Epochs when --teacher is a zoo name trained here.")
flags.DEFINE_float("lsr_epsilon", 0.1, "LSR smoothing epsilon.")
flags.DEFINE_float("self_temperature", 20.0, "Tf-KD self: KD temperature.")
flags.DEFINE_float("self_alpha", 0.95, "Tf-KD self: KD weight alpha (CE weight 1 - alpha).")
flags.DEFINE_float("reg_temperature", 20.0, "Tf-KD reg: virtual teacher temperature.")
flags.DEFINE_float("reg_correct_prob", 0.99, "Tf-KD reg: virtual teacher's probability on the label.")
flags.DEFINE_float("reg_weight", 0.1,
                   "Tf-KD reg: weight of the virtual-teacher term (the reference's alpha * m / K).")
flags.DEFINE_float("reg_ce_weight", 0.9, "Tf-KD reg: CE weight (the reference's 1 - alpha).")
flags.DEFINE_float("kd_temperature", 4.0, "Normal KD (with --teacher): temperature.")
flags.DEFINE_float("kd_alpha", 0.9, "Normal KD: weight alpha (CE weight 1 - alpha).")
recipe_utils.define_data_flags()
recipe_utils.define_train_flags(epochs=10, lr=0.05)


def frozen_copy(model: keras.Model, name: str) -> keras.Model:
    """An independent copy of a trained model (same weights) to serve as a teacher."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.name = name
    copy.trainable = False
    return copy


def distil(teacher, student, methods, ce_weight, data, config, tag) -> dict:
    """Train `student` through a Distiller; return its top-1, time and history."""
    distiller = kdkeras.Distiller(teacher, student, methods, student_loss_weight=ce_weight)
    return recipe_utils.fit(distiller, data.train, data.test, config, FLAGS.output_dir, tag=tag)


def train_self_kd(trained: keras.Model, student: keras.Model, data, config,
                  temperature: float, alpha: float, tag: str = "tfkd_self") -> dict:
    """Tf-KD self: KD into `student` from a frozen copy of the `trained` student."""
    teacher = frozen_copy(trained, name=f"{trained.name}_self_teacher")
    kd = kdkeras.methods.KD(temperature=temperature, weight=alpha)
    return distil(teacher, student, [kd], 1.0 - alpha, data, config, tag)


def get_teacher(spec, data):
    """(teacher, top-1) from a .keras path or a zoo name trained here; (None, None) if none."""
    if not spec or spec.lower() == "none":
        return None, None
    if recipe_utils.is_model_path(spec):
        teacher = training.load_model(spec)
    else:
        teacher = recipe_utils.build_model(spec, data, seed=FLAGS.seed + 1000)
        print(f"Training teacher {spec} for {FLAGS.teacher_epochs} epochs")
        recipe_utils.fit(teacher, data.train, data.test,
            recipe_utils.train_config(FLAGS.teacher_epochs),
            FLAGS.output_dir, tag="teacher")
        teacher.save(os.path.join(FLAGS.output_dir, "teacher.keras"))
    return teacher, training.evaluate_top1(teacher, data.test)


def plot(results: dict, baseline: float, path: str) -> str:
    names = list(results)
    values = [100 * results[n]["top1"] for n in names]
    fig, axes = new_figure(1, 1, max(4.0, 1.3 * len(names)), 3.6)
    ax = axes[0, 0]
    bars = ax.bar(names, values, color=["#888888"] + ["#4c72b0"] * (len(names) - 1))
    ax.axhline(100 * baseline, color="#c44e52", linestyle="--", label="baseline")
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                    fontsize=8)
    low = min(values)
    ax.set_ylim(max(0.0, low - 5.0), min(100.0, max(values) + 3.0))
    ax.set_ylabel("student top-1 (%)")
    ax.set_title(f"Teacher-free KD: {FLAGS.student} on {FLAGS.dataset}")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def main(argv):
    del argv
    strategy = recipe_utils.start_run()
    teacher_shape = None
    if FLAGS.teacher and recipe_utils.is_model_path(FLAGS.teacher):
        teacher_shape = recipe_utils.model_input_shape(FLAGS.teacher)
    data = recipe_utils.setup_data(teacher_shape)
    config = recipe_utils.train_config()
    kwargs = recipe_utils.zoo_kwargs(FLAGS.student_args)
    with strategy.scope():
        teacher, teacher_top1 = get_teacher(FLAGS.teacher, data)

    def fresh_student():
        model = recipe_utils.build_model(FLAGS.student, data, seed=FLAGS.seed, **kwargs)
        model.set_weights(initial)
        return model

    with strategy.scope():
        initial = recipe_utils.build_model(FLAGS.student, data, seed=FLAGS.seed, **kwargs).get_weights()
    runs = ["baseline", "LSR", "Tf-KD self", "Tf-KD reg"] + (["KD"] if teacher is not None else [])
    results: dict[str, dict] = {}
    for i, run in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {run}: {FLAGS.student}, {FLAGS.epochs} epochs")
        with strategy.scope():
            student = fresh_student()
            if run == "baseline":
                out = recipe_utils.fit(student, data.train, data.test, config,
                          FLAGS.output_dir, tag="baseline")
                baseline_model = student
            elif run == "LSR":
                out = distil(None, student, [LSR(epsilon=FLAGS.lsr_epsilon)], 0.0, data, config, "lsr")
            elif run == "Tf-KD self":
                out = train_self_kd(baseline_model, student, data, config,
                                    FLAGS.self_temperature, FLAGS.self_alpha)
            elif run == "Tf-KD reg":
                vt = VirtualTeacher(correct_prob=FLAGS.reg_correct_prob,
                                    temperature=FLAGS.reg_temperature, weight=FLAGS.reg_weight)
                out = distil(None, student, [vt], FLAGS.reg_ce_weight, data, config, "tfkd_reg")
            else:
                kd = kdkeras.methods.KD(temperature=FLAGS.kd_temperature, weight=FLAGS.kd_alpha)
                out = distil(teacher, student, [kd], 1.0 - FLAGS.kd_alpha, data, config, "kd")
        results[run] = out
        print(f"    {run} top1={out['top1']:.4f}")

    baseline = results["baseline"]["top1"]
    settings = {
        "baseline": "cross-entropy",
        "LSR": f"epsilon={FLAGS.lsr_epsilon}",
        "Tf-KD self": f"T={FLAGS.self_temperature}, alpha={FLAGS.self_alpha}, teacher = the baseline",
        "Tf-KD reg": (f"a={FLAGS.reg_correct_prob}, T={FLAGS.reg_temperature}, "
                      f"weight={FLAGS.reg_weight}, CE {FLAGS.reg_ce_weight}"),
        "KD": f"T={FLAGS.kd_temperature}, alpha={FLAGS.kd_alpha}, teacher {FLAGS.teacher} "
              f"(top-1 {teacher_top1 if teacher_top1 is None else round(100 * teacher_top1, 2)})",
    }
    rows = [[run, recipe_utils.pct(r["top1"]), f"{100 * (r['top1'] - baseline):+.2f}", settings[run]]
            for run, r in results.items()]
    table = recipe_utils.markdown_table(["method", "top-1 (%)", "vs baseline", "settings"], rows)
    png = plot(results, baseline, os.path.join(FLAGS.output_dir, "teacher_free.png"))
    command = "python " + " ".join(sys.argv)
    write_report(os.path.join(FLAGS.output_dir, "teacher_free.md"),
                 f"Teacher-free KD on {FLAGS.dataset}",
                 [("Results", [table, f"{FLAGS.student}, {data.num_train} training examples, "
                               f"{FLAGS.epochs} epochs, same initial weights for every row."]),
                  ("Plot", png), ("Command", f"`{command}`")])
    payload = {
        "dataset": FLAGS.dataset, "student": FLAGS.student, "epochs": FLAGS.epochs,
        "train_limit": FLAGS.train_limit, "seed": FLAGS.seed, "teacher": FLAGS.teacher,
        "teacher_top1": teacher_top1, "baseline_top1": baseline, "command": command,
        "results": {run: {"top1": r["top1"], "train_seconds": r["train_seconds"],
                          "settings": settings[run], "history": r["history"]}
                    for run, r in results.items()},
    }
    training.write_json(os.path.join(FLAGS.output_dir, "teacher_free.json"), payload)
    print(table)
    print("RESULT " + " ".join(f"{run.replace(' ', '_')}={r['top1']:.4f}" for run, r in results.items()))


if __name__ == "__main__":
    app.run(main)

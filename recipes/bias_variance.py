"""Bias-variance decomposition of the student's error, per distillation method.

    python recipes/bias_variance.py --teacher=resnet20 --student=resnet8 \
        --methods=ce,kd,wsl --num_models=5 --resample=bootstrap \
        --dataset=fashion_mnist --epochs=5 --output_dir=runs/bias_variance

For every method (`ce` is plain cross-entropy; any other name is a
kdkeras method), trains `--num_models` students, model i on resample i of
the training set (the same resamples for every method) from seed `seed + i`,
and decomposes their test cross-entropy as in the bias-variance view of soft
labels (Zhou et al. 2021), with `y_bar` the normalised geometric mean of the
M predictions:

    expected CE = noise + bias + variance,   noise = 0 for one-hot labels,
    bias = KL(y || y_bar) = -log y_bar[label],   variance = mean_m KL(y_bar || p_m).

It also counts the "regularisation samples", where the teacher's CE is above
the student's, and splits bias and variance between the samples where the
teacher is worse than the CE-trained students and the others. Writes
DIR/bias_variance.md (table), DIR/bias_variance.png and DIR/bias_variance.json.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import kdkeras  # noqa: E402
from kdkeras import analysis  # noqa: E402
from kdkeras import data as data_lib  # noqa: E402
from kdkeras import recipe_utils, training  # noqa: E402
from kdkeras.methods import base as methods_base  # noqa: E402
from kdkeras.methods import soft_labels  # noqa: E402,F401  (registers lsr, wsl, dkd, ...)
from kdkeras.vis.plots import new_figure, save_figure  # noqa: E402
from kdkeras.vis.report import write_report  # noqa: E402

#: the student's CE weight per method unless `--method_args` sets
#: `<name>.student_loss_weight`: KD's CIFAR recipe, LSR replacing the CE,
#: the virtual teacher's reference ResNet18 setting; 1.0 for the rest.
DEFAULT_CE_WEIGHT = {"kd": 0.1, "lsr": 0.0, "virtual_teacher": 0.9, "tfkd_reg": 0.9}
RESAMPLES = ("bootstrap", "half", "seed")

FLAGS = flags.FLAGS
flags.DEFINE_string("teacher", None,
                    "Teacher for KD-like methods and the regularisation samples: a .keras path or "
                    "a zoo name trained here (needed unless every method is teacher-free).")
flags.DEFINE_integer("teacher_epochs", 10, "Epochs when --teacher is a zoo name trained here.")
flags.DEFINE_string("student", "resnet8", "Zoo name of the students.")
flags.DEFINE_string("student_args", "", "Zoo kwargs of the students, e.g. 'width_multiplier=0.5'.")
flags.DEFINE_list("methods", ["ce", "kd", "wsl"], "Methods to compare: 'ce' and kdkeras method names.")
flags.DEFINE_string("method_args", "",
                    "Per-method arguments, e.g. 'kd.temperature=4,wsl.weight=2.5,kd.student_loss_weight=0.5'.")
flags.DEFINE_integer("num_models", 5, "Models (trainings) per method: M.")
flags.DEFINE_enum("resample", "bootstrap", list(RESAMPLES),
                  "Training set of model i: a bootstrap resample, a random half, or the full set "
                  "(then only the seed differs).")
recipe_utils.define_data_flags()
recipe_utils.define_train_flags(epochs=10, lr=0.05)


def resampled(indexed, num_examples: int, how: str, seed: int, batch_size: int):
    """`(image, label)` batches of one resample of the training set.

    `indexed` yields `{"image", "index"}` batches; bootstrap repeats example
    i `counts[i]` times (counts ~ Multinomial(N, 1/N)), half keeps a random
    half, seed keeps every example.
    """
    rng = np.random.default_rng(seed)
    ds = indexed.unbatch()
    size = (num_examples + 1) // 2 if how == "half" else num_examples
    if how == "bootstrap":
        counts = tf.constant(np.bincount(rng.integers(0, num_examples, num_examples),
                                         minlength=num_examples), tf.int64)

        def repeat(x, y):
            one = tf.data.Dataset.from_tensors((x["image"], y))
            return one.repeat(tf.gather(counts, x["index"]))

        ds = ds.flat_map(repeat).shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    elif how == "half":
        keep = tf.constant(rng.permutation(num_examples) < (num_examples + 1) // 2)
        ds = ds.filter(lambda x, y: tf.gather(keep, x["index"])).map(lambda x, y: (x["image"], y))
    else:
        ds = ds.map(lambda x, y: (x["image"], y))
    # Known length: clean progress bars and schedules from the first epoch.
    ds = ds.apply(tf.data.experimental.assert_cardinality(size))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def build_method(name: str, args: dict):
    """(method or None for 'ce', student CE weight)."""
    args = dict(args.get(name, {}))
    ce_weight = float(args.pop("student_loss_weight", DEFAULT_CE_WEIGHT.get(name, 1.0)))
    if name == "ce":
        return None, 1.0
    return methods_base.get(name, **args), ce_weight


def get_teacher(data, strategy):
    if not FLAGS.teacher:
        return None, None
    with strategy.scope():
        if recipe_utils.is_model_path(FLAGS.teacher):
            teacher = training.load_model(FLAGS.teacher)
        else:
            teacher = recipe_utils.build_model(FLAGS.teacher, data, seed=FLAGS.seed + 1000)
            print(f"Training teacher {FLAGS.teacher} for {FLAGS.teacher_epochs} epochs")
            recipe_utils.fit(teacher, data.train, data.test,
                recipe_utils.train_config(FLAGS.teacher_epochs),
                FLAGS.output_dir, tag="teacher")
            teacher.save(os.path.join(FLAGS.output_dir, "teacher.keras"))
    return teacher, training.evaluate_top1(teacher, data.test)


def plot(summaries: dict, path: str) -> str:
    names = list(summaries)
    x = np.arange(len(names))
    fig, axes = new_figure(1, 2, 4.2, 3.8)
    ax = axes[0, 0]
    bias = [summaries[n]["bias"] for n in names]
    var = [summaries[n]["variance"] for n in names]
    ce = [summaries[n]["expected_ce_measured"] for n in names]
    ax.bar(x, bias, color="#4c72b0", label="bias")
    ax.bar(x, var, bottom=bias, color="#dd8452", label="variance")
    ax.scatter(x, ce, color="black", marker="_", s=400, zorder=3, label="measured E[CE]")
    ax.set_xticks(x, names)
    ax.set_ylabel("nats")
    ax.set_title("test CE = bias + variance (noise 0)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    top1 = [100 * summaries[n]["top1"] for n in names]
    share = [summaries[n].get("regularization_share") for n in names]
    width = 0.4
    ax.bar(x - width / 2, top1, width, color="#55a868", label="top-1 (%)")
    if all(s is not None for s in share):
        ax.bar(x + width / 2, [100 * s for s in share], width, color="#c44e52",
               label="regularisation samples (%)")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 100)
    ax.set_title("accuracy and regularisation samples", fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv):
    del argv
    strategy = recipe_utils.start_run()
    names = [n.strip().lower() for n in FLAGS.methods if n.strip()]
    method_args = methods_base.parse_method_args(FLAGS.method_args)
    unknown = set(method_args) - set(names)
    if unknown:
        raise ValueError(f"--method_args names {sorted(unknown)}, not in --methods {names}.")
    needs_teacher = [n for n in names if n != "ce" and build_method(n, method_args)[0].requires_teacher]
    if needs_teacher and not FLAGS.teacher:
        raise ValueError(f"Methods {needs_teacher} need a teacher: pass --teacher.")
    if FLAGS.num_models < 2:
        raise ValueError("--num_models must be >= 2 for a variance.")
    teacher_shape = None
    if FLAGS.teacher and recipe_utils.is_model_path(FLAGS.teacher):
        teacher_shape = recipe_utils.model_input_shape(FLAGS.teacher)
    data = recipe_utils.setup_data(teacher_shape)
    config = recipe_utils.train_config()
    student_kwargs = recipe_utils.zoo_kwargs(FLAGS.student_args)
    teacher, teacher_top1 = get_teacher(data, strategy)
    teacher_logits = labels = None
    if teacher is not None:
        teacher_logits, labels = training.predict_logits(teacher, data.test)
        print(f"teacher top1={teacher_top1:.4f}")
    indexed = data_lib.load(
        FLAGS.dataset, data.info.train_split, batch_size=FLAGS.batch_size,
        image_size=data.input_shape[:2], channels=data.input_shape[2], data_dir=FLAGS.data_dir,
        seed=FLAGS.seed, limit=FLAGS.train_limit, with_index=True,
        augment={"auto": None, "on": True, "off": False}[FLAGS.augment],
    )

    logits: dict[str, list[np.ndarray]] = {n: [] for n in names}
    top1s: dict[str, list[float]] = {n: [] for n in names}
    total, step = len(names) * FLAGS.num_models, 0
    for i in range(FLAGS.num_models):
        train_i = resampled(indexed, data.num_train, FLAGS.resample, FLAGS.seed + i, FLAGS.batch_size)
        for name in names:
            step += 1
            print(f"[{step}/{total}] {name}: model {i + 1}/{FLAGS.num_models} ({FLAGS.resample})")
            with strategy.scope():
                student = recipe_utils.build_model(FLAGS.student, data, seed=FLAGS.seed + i,
                                                   **student_kwargs)
                method, ce_weight = build_method(name, method_args)
                if method is None:
                    recipe_utils.fit(student, train_i, data.test, config,
                        FLAGS.output_dir, tag=f"{name}_{i}")
                else:
                    t = teacher if method.requires_teacher else None
                    distiller = kdkeras.Distiller(t, student, [method], student_loss_weight=ce_weight)
                    recipe_utils.fit(distiller, train_i, data.test, config, FLAGS.output_dir, tag=f"{name}_{i}")
            z, y = training.predict_logits(student, data.test)
            if labels is None:
                labels = y
            if not np.array_equal(y, labels):
                raise RuntimeError("The test split changed order between evaluations.")
            logits[name].append(z)
            top1s[name].append(float(np.mean(z.argmax(-1) == y)))
            print(f"    top1={top1s[name][-1]:.4f}")

    summaries, splits = {}, {}
    teacher_worse = None
    if teacher_logits is not None and "ce" in names:
        ce_students = analysis.cross_entropy_per_sample(np.stack(logits["ce"]), labels, from_logits=True)
        ce_teacher = analysis.cross_entropy_per_sample(teacher_logits, labels, from_logits=True)
        teacher_worse = ce_teacher > ce_students.mean(0)
    for name in names:
        stacked = np.stack(logits[name])
        d = analysis.decompose(stacked, labels, from_logits=True)
        measured = float(analysis.cross_entropy_per_sample(stacked, labels, from_logits=True).mean())
        s = {**d.summary(), "expected_ce_measured": measured,
             "top1_std": float(np.std(top1s[name])), "top1_per_model": top1s[name]}
        if teacher_logits is not None:
            s["regularization_share"] = analysis.regularization_share(
                teacher_logits, stacked, labels, from_logits=True)
        if teacher_worse is not None:
            splits[name] = analysis.split_by_mask(d, teacher_worse)
            s["teacher_worse_split"] = splits[name]
        summaries[name] = s

    rows = []
    for name, s in summaries.items():
        share = s.get("regularization_share")
        split = splits.get(name)
        rows.append([
            name, s["num_models"], recipe_utils.pct(s["top1"]), recipe_utils.pct(s["top1_std"]), recipe_utils.pct(s["ensemble_top1"]),
            s["noise"], s["bias"], s["variance"], s["error"], s["expected_ce_measured"],
            "-" if share is None else recipe_utils.pct(share),
            "-" if split is None else f"{split['in']['bias']:.4f} / {split['out']['bias']:.4f}",
            "-" if split is None else f"{split['in']['variance']:.4f} / {split['out']['variance']:.4f}",
        ])
    table = recipe_utils.markdown_table(
        ["method", "M", "top-1 (%)", "± std", "ensemble top-1 (%)", "noise", "bias", "variance",
         "noise+bias+variance", "E[CE] measured", "reg. samples (%)",
         "bias: teacher-worse / other", "variance: teacher-worse / other"], rows)
    notes = (
        f"{FLAGS.student} students, {data.num_train} training examples ({FLAGS.resample} resamples), "
        f"{FLAGS.epochs} epochs, test set of {len(labels)} examples. Teacher: {FLAGS.teacher}"
        + ("" if teacher_top1 is None else f" (top-1 {100 * teacher_top1:.2f}%)") + ". "
        "y_bar = normalised geometric mean of the M predictions; bias = -log y_bar[label], "
        "variance = mean_m KL(y_bar || p_m); noise + bias + variance equals the measured "
        "expected CE exactly. Reg. samples: share of (model, sample) pairs where the teacher's CE "
        "is above the student's. Teacher-worse samples: the teacher's CE is above the mean CE of "
        "the CE-trained students"
        + ("" if teacher_worse is None else f" ({int(teacher_worse.sum())} of {len(labels)})") + "."
    )
    png = plot(summaries, os.path.join(FLAGS.output_dir, "bias_variance.png"))
    command = "python " + " ".join(sys.argv)
    write_report(os.path.join(FLAGS.output_dir, "bias_variance.md"),
                 f"Bias-variance decomposition on {FLAGS.dataset}",
                 [("Results", [table, notes]), ("Plot", png), ("Command", f"`{command}`")])
    payload = {
        "dataset": FLAGS.dataset, "student": FLAGS.student, "teacher": FLAGS.teacher,
        "teacher_top1": teacher_top1, "methods": names, "method_args": FLAGS.method_args,
        "num_models": FLAGS.num_models, "resample": FLAGS.resample, "epochs": FLAGS.epochs,
        "train_limit": FLAGS.train_limit, "test_examples": int(len(labels)), "seed": FLAGS.seed,
        "teacher_worse_samples": None if teacher_worse is None else int(teacher_worse.sum()),
        "command": command, "results": summaries,
    }
    training.write_json(os.path.join(FLAGS.output_dir, "bias_variance.json"), payload)
    print(table)
    print("RESULT " + " ".join(
        f"{n}:bias={s['bias']:.4f},variance={s['variance']:.4f},ce={s['expected_ce_measured']:.4f},"
        f"top1={s['top1']:.4f}" for n, s in summaries.items()))


if __name__ == "__main__":
    app.run(main)

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

import dataclasses
import os

import numpy as np
from absl import flags

from kdkeras import analysis, experiment, recipe_utils, training, vis
from kdkeras import data as data_lib
from kdkeras import methods as methods_lib



def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("teacher", None,
                        "Teacher for KD-like methods and the regularisation samples: a .keras path or "
                        "a zoo name trained here (needed unless every method is teacher-free).",
                        flag_values=fv)
    flags.DEFINE_integer("teacher_epochs", 10, "Epochs when --teacher is a zoo name trained here.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_string("student", "resnet8", "Zoo name of the students.", flag_values=fv)
    flags.DEFINE_string("student_args", "", "Zoo kwargs of the students, e.g. 'width_multiplier=0.5'.",
                        flag_values=fv)
    flags.DEFINE_list("methods", ["ce", "kd", "wsl"], "Methods to compare: 'ce' and kdkeras method names.",
                      flag_values=fv)
    flags.DEFINE_string("method_args", "",
                        "Per-method arguments, e.g. 'kd.temperature=4,wsl.weight=2.5,"
                        "kd.student_loss_weight=0.5' (default CE weight: the method's own).",
                        flag_values=fv)
    flags.DEFINE_integer("num_models", 5, "Models (trainings) per method: M (at least 2).",
                         lower_bound=2, flag_values=fv)
    flags.DEFINE_enum("resample", "bootstrap", list(data_lib.RESAMPLES),
                      "Training set of model i: a bootstrap resample, a random half, or the full set "
                      "(then only the seed differs).", flag_values=fv)
    recipe_utils.define_run_flags(fv, epochs=10, lr=0.05)


def build_method(name: str, args: dict):
    """(method or None for 'ce', student CE weight: `<name>.student_loss_weight`
    or the method's own default)."""
    if name == "ce":
        return None, 1.0
    args = dict(args.get(name, {}))
    ce_weight = args.pop("student_loss_weight", None)
    method = methods_lib.get(name, **args)
    if ce_weight is None:
        ce_weight = methods_lib.default_student_loss_weight([method])
    return method, float(ce_weight)


def run(fv: flags.FlagValues):
    """Run the recipe on parsed flags; returns what it measured (tests read it)."""
    names = [n.strip().lower() for n in fv.methods if n.strip()]
    method_args = methods_lib.parse_method_args(fv.method_args)
    unknown = set(method_args) - set(names)
    method_args = experiment.run_length_args("+".join(names), method_args)[0]  # DKD's warm-up: a 12th of the run
    if unknown:
        raise ValueError(f"--method_args names {sorted(unknown)}, not in --methods {names}.")
    needs_teacher = [n for n in names if n != "ce" and build_method(n, method_args)[0].requires_teacher]
    if needs_teacher and not fv.teacher:
        raise ValueError(f"Methods {needs_teacher} need a teacher: pass --teacher.")
    config = recipe_utils.run_config(fv)
    strategy = experiment.start(config)
    shape = experiment.model_input_shape(fv.teacher) if fv.teacher and experiment.is_model_path(fv.teacher) else None
    data = experiment.setup_data(config, shape)
    student_kwargs = recipe_utils.parse_kwargs(fv.student_args)
    teacher = experiment.get_teacher(fv.teacher, data, epochs=fv.teacher_epochs, strategy=strategy)
    teacher_logits = labels = None
    if teacher is not None:
        teacher_logits, labels = training.predict_logits(teacher.model, data.test)
    indexed = data.load(with_index=True)

    logits = {n: [] for n in names}
    top1s = {n: [] for n in names}
    val_top1s = {n: [] for n in names}  # on the validation split, with one
    total, step = len(names) * fv.num_models, 0
    for i in range(fv.num_models):
        train_i = data_lib.resampled(indexed, data.num_train, fv.resample, config.seed + i,
                                     config.batch_size)
        data_i = dataclasses.replace(data, train=train_i, clock=None)  # its validation split kept
        for name in names:
            step += 1
            print(f"[{step}/{total}] {name}: model {i + 1}/{fv.num_models} ({fv.resample})")
            with strategy.scope():
                student = experiment.build_model(fv.student, data, seed=config.seed + i, **student_kwargs)
            method, ce_weight = build_method(name, method_args)
            if method is None:  # watching the validation split when there is one, as distill does
                with strategy.scope():
                    out = experiment.fit_data(student, data_i, config.train_config(), config.output_dir,
                                              tag=f"{name}_{i}")
            else:
                out = experiment.distill(teacher.model if method.requires_teacher else None, student,
                                         [method], data_i, config, student_loss_weight=ce_weight,
                                         tag=f"{name}_{i}", strategy=strategy)
            if "val_top1" in out:
                val_top1s[name].append(out["val_top1"])
            z, y = training.predict_logits(student, data.test)
            labels = y if labels is None else labels
            if not np.array_equal(y, labels):
                raise RuntimeError("The test split changed order between evaluations.")
            logits[name].append(z)
            top1s[name].append(float(np.mean(z.argmax(-1) == y)))
            print(f"    top1={top1s[name][-1]:.4f}")

    summaries, teacher_worse = analysis.compare_methods(logits, labels, teacher_logits)
    for name in names:
        summaries[name].update(top1_std=float(np.std(top1s[name])), top1_per_model=top1s[name])
        if val_top1s[name]:
            summaries[name].update(val_top1=float(np.mean(val_top1s[name])), val_top1_per_model=val_top1s[name])
    text = analysis.summary_table(summaries)
    notes = (
        f"{fv.student} students, {data.num_train} training examples ({fv.resample} resamples), "
        f"{config.epochs} epochs, test set of {len(labels)} examples. Teacher: {fv.teacher}"
        + ("" if teacher is None else f" (top-1 {vis.pct(teacher.top1)}%)") + ". "
        "y_bar = normalised geometric mean of the M predictions; bias = -log y_bar[label], "
        "variance = mean_m KL(y_bar || p_m); noise + bias + variance equals the measured "
        "expected CE exactly. Reg. samples: share of (model, sample) pairs where the teacher's CE "
        "is above the student's. Teacher-worse samples: the teacher's CE is above the mean CE of "
        "the CE-trained students"
        + ("" if teacher_worse is None else f" ({int(teacher_worse.sum())} of {len(labels)})") + "."
    )
    png = vis.bias_variance_bars(summaries, os.path.join(config.output_dir, "bias_variance.png"))
    command = experiment.command_line()
    experiment.write_results(
        config.output_dir, "bias_variance", f"Bias-variance decomposition on {config.dataset}",
        [("Results", [text, notes]), ("Plot", png), ("Command", f"`{command}`")],
        {"dataset": config.dataset, "student": fv.student, "teacher": fv.teacher,
         "teacher_top1": teacher.top1 if teacher else None,
         **experiment.validation_keys(data, teacher_val_top1=teacher.val_top1 if teacher else None),
         "methods": names,
         "method_args": fv.method_args, "num_models": fv.num_models, "resample": fv.resample,
         "epochs": config.epochs, "train_limit": config.train_limit, "test_examples": int(len(labels)),
         "seed": config.seed,
         "teacher_worse_samples": None if teacher_worse is None else int(teacher_worse.sum()),
         "command": command, "results": summaries})
    print(text)
    print("RESULT " + " ".join(
        f"{n}:bias={s['bias']:.4f},variance={s['variance']:.4f},ce={s['expected_ce_measured']:.4f},"
        f"top1={s['top1']:.4f}" for n, s in summaries.items()))
    return summaries


if __name__ == "__main__":
    recipe_utils.run_main(define_flags, run)

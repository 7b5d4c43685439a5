"""Visual report of a distillation run: does the student look where the teacher looks?

    python recipes/visualize.py --teacher=runs/kd/teacher.keras \
        --student=runs/kd/student.keras --baseline=runs/kd/baseline.keras \
        --metrics=runs/kd/metrics.json --dataset=fashion_mnist --num_images=4 \
        --output_dir=runs/kd/visual

Takes the models distill.py writes (DIR/student.keras, DIR/baseline.keras and
the teacher) and writes into --output_dir: saliency.png (Grad-CAM,
Grad-CAM++, Score-CAM and SmoothGrad for every model on the chosen test
images, with true and predicted classes), attention_<i>.png (AT maps,
mean_c f^2, of stages matched by resolution), training_curves.png (from
--metrics' `history` and `baseline_history`), agreement.png,
reliability.png (with ECE), visual.json and report.md / report.html that
show them with a table of top-1, ECE and agreement with the teacher.
"""

from __future__ import annotations

import json

from absl import flags

from kdkeras import experiment, recipe_utils, training, vis



def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("teacher", None, "Path to the teacher .keras model.", required=True,
                        flag_values=fv)
    flags.DEFINE_string("student", None, "Path to the distilled student .keras model.",
                        required=True, flag_values=fv)
    flags.DEFINE_string("baseline", None, "Path to the baseline student .keras model (optional).",
                        flag_values=fv)
    flags.DEFINE_string("metrics", None, "A distill.py metrics.json (history, baseline_history).",
                        flag_values=fv)
    flags.DEFINE_integer("num_images", 4, "Test images shown in the saliency and attention figures.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_list("saliency_methods", list(vis.SALIENCY_METHODS),
                      f"Saliency methods, of {list(vis.METHODS)}.", flag_values=fv)
    flags.DEFINE_string("output_dir", "runs/visual", "Where the PNGs and the report are written.",
                        flag_values=fv)
    recipe_utils.define_data_flags(fv)


def run(fv: flags.FlagValues):
    """Run the recipe on parsed flags; returns what it measured (tests read it)."""
    models = {"teacher": training.load_model(fv.teacher)}
    if fv.baseline:
        models["baseline"] = training.load_model(fv.baseline)
    models["student"] = training.load_model(fv.student)
    config = recipe_utils.run_config(fv, train_limit=1)  # the data flags and --output_dir; no training
    h, w, c = models["student"].input_shape[1:]
    shape = (config.image_size or h, config.image_size or w, config.channels or c)
    data = experiment.setup_data(config, shape)
    histories = {}
    if fv.metrics:
        with open(fv.metrics) as f:
            metrics = json.load(f)
        for run, key in (("student", "history"), ("baseline", "baseline_history")):
            if metrics.get(key):
                histories[run] = metrics[key]
    return vis.write_visual_report(
        models, data.test, data.info.class_names, fv.output_dir, histories=histories or None,
        num_images=fv.num_images, methods=fv.saliency_methods, seed=fv.seed,
        command=experiment.command_line(),
    )


if __name__ == "__main__":
    recipe_utils.run_main(define_flags, run)

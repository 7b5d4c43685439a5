"""Quantisation-aware distillation of a saved float student: an int8 LiteRT file
trained against its teacher.

    python recipes/qat_distill.py --student=runs/edge/student.keras \
        --teacher=saved_models/fashion_mnist_resnet20/model.keras --method=kd \
        --epochs=1 --lr=0.005 --train_limit=10000 --output_dir=runs/qat

`--student` is a float `.keras` classifier (its input fixes the data's size
and channels); `--teacher` a `.keras` path (adapted to the student's input
inside the graph) or "self" (the float student teaches its own int8 twin).
The student's fake-quant twin (`kdkeras.quantize.prepare_qat`, weight scales
per `--weights`) is distilled with `--method` for `--epochs` at `--lr`, then
exported with its trained scales (`--io` int8 or float input/output) and
evaluated with LiteRT. Writes DIR/student_qat.keras,
DIR/student_qat_int8.tflite, DIR/qat_distill.md and DIR/qat_distill.json
(float and fake-quant top-1, the file's top-1, size, latency, agreement).
"""

from __future__ import annotations

import os

from absl import app, flags

from kdkeras import experiment, export, quantize, recipe_utils, training
from kdkeras import methods as methods_lib

FLAGS = flags.FLAGS
WEIGHTS = quantize.WEIGHT_PRESETS


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
    flags.DEFINE_string("student", None, "The float student, a saved .keras classifier.",
                        flag_values=fv)
    flags.DEFINE_string("teacher", "self", "A .keras teacher, or 'self' (the float student).",
                        flag_values=fv)
    recipe_utils.define_method_flags(fv)
    flags.DEFINE_enum("weights", "auto", list(WEIGHTS),
                      "Weight scales: per_channel, per_tensor, mixed (per tensor for 1x1 "
                      "convolutions and dense layers, per channel elsewhere) or auto (mixed, and a "
                      "3x3 or depthwise conv per tensor where one scale fits its folded kernel).",
                      flag_values=fv)
    flags.DEFINE_enum("io", "int8", list(quantize.IO_TYPES), "Input/output type of the .tflite file.",
                      flag_values=fv)
    flags.DEFINE_integer("latency_runs", 100, "Timed single-image runs of the file.", lower_bound=1,
                         flag_values=fv)
    flags.mark_flag_as_required("student", flag_values=fv)
    recipe_utils.define_run_flags(fv, epochs=1, lr=0.005)


def run(fv: flags.FlagValues) -> dict:
    """Run the recipe on parsed flags; returns what it measured (tests read it)."""
    config = recipe_utils.run_config(fv)
    experiment.start(config)
    student = training.load_model(fv.student)
    data = experiment.setup_data(config, tuple(student.input_shape[1:]))
    float_top1 = training.evaluate_top1(student, data.test)
    self_taught = fv.teacher.strip().lower() == quantize.SELF_TEACHER
    teacher = None if self_taught else experiment.get_teacher(fv.teacher, data)
    methods = methods_lib.from_spec(fv.method, experiment.run_length_args(fv.method, fv.method_args)[0],
                                    num_examples=data.num_train)
    qat = quantize.distill_qat(
        student, quantize.SELF_TEACHER if self_taught else teacher.model, methods, data, config,
        lr=config.lr, weights=WEIGHTS[fv.weights], student_loss_weight=fv.student_loss_weight)
    out = config.output_dir
    qat["model"].save(os.path.join(out, "student_qat.keras"))
    reference, _ = training.predict_logits(student, data.test)
    options = export.EdgeOptions(latency_runs=fv.latency_runs, warmup_runs=min(10, fv.latency_runs))
    entry = export.export_qat_variant(qat["model"], data.test, out, reference, options, io=fv.io)
    payload = {
        "command": experiment.command_line(), "dataset": config.dataset, "student": fv.student,
        "teacher": fv.teacher if self_taught else teacher.source,
        "teacher_top1": None if self_taught else teacher.top1, "method": fv.method,
        "method_args": fv.method_args, "weights": fv.weights, "epochs": qat["epochs"],
        "lr": qat["lr"], "train_limit": config.train_limit, "num_train": data.num_train,
        "train_seconds": qat["train_seconds"], "float_top1": float_top1,
        **experiment.validation_keys(data, student_val_top1=qat.get("val_top1"),
                                     teacher_val_top1=None if self_taught else teacher.val_top1),
        export.QAT_VARIANT: entry,
    }
    table = results_table(payload)
    experiment.write_results(
        out, "qat_distill", f"Quantisation-aware distillation on {config.dataset}",
        [("Results", [table, f"{data.num_train} training examples, {qat['epochs']} QAT epoch(s) "
                             f"at lr {qat['lr']}, weights {fv.weights}, io {fv.io}."]),
         ("Command", f"`{payload['command']}`")], payload)
    print(experiment.result_line({"float_top1": float_top1, "fake_quant_top1": entry["keras_top1"],
                                  "qat_int8_top1": entry["top1"],
                                  "agreement": entry["agreement_with_fake_quant"]}))
    return payload


def results_table(payload: dict) -> str:
    """The results table: float student, fake-quant model, int8 file."""
    from kdkeras.vis.report import markdown_table

    e = payload[export.QAT_VARIANT]
    rows = [["float student (Keras)", f"{100 * payload['float_top1']:.2f}", ""],
            ["fake-quant (Keras)", f"{100 * e['keras_top1']:.2f}", ""],
            [f"`{e['file']}` (LiteRT)", f"{100 * e['top1']:.2f}",
             f"{e['size_bytes'] / 1024:.1f} KB, {e['latency_ms']:.3f} ms, agreement with "
             f"fake-quant {100 * e['agreement_with_fake_quant']:.2f}%, int8 kernels: {e['int8_kernels']}"]]
    return markdown_table(["model", "top-1 (%)", "notes"], rows, align="lrl")


def main(argv):
    del argv
    run(FLAGS)


if __name__ == "__main__":
    define_flags()
    app.run(main)

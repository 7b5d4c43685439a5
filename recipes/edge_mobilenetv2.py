"""Distil a phone-sized MobileNetV2 from a ResNet50 teacher and ship it as LiteRT.

    python recipes/edge_mobilenetv2.py --dataset=fashion_mnist --input_size=32 \
        --alpha=0.35 --teacher_epochs=2 --epochs=3 --train_limit=10000 --baseline \
        --output_dir=runs/edge_fashion_mnist

The images are resized to `input_size` x `input_size` x 3 by the data pipeline
for both networks (`--input_size` wins over `--image_size`/`--channels`).
`--teacher` is a saved `.keras` model or a zoo name (default `resnet50`,
loaded from `saved_models/<dataset>_resnet50/model.keras` when it exists,
else trained here for `--teacher_epochs` and saved to DIR/teacher.keras).
The student (`--student`, MobileNetV2 at `--alpha` by default) is distilled
with `--method` (KD by default, any registry name or `+` combination), then exported to the four LiteRT variants (float32,
float16, dynamic-range, full-integer int8 calibrated on un-augmented training
images, weight scales per `--int8_weights`, all converted from one
SavedModel export, tensor names stripped unless `--nostrip_names`), each
evaluated on the test split with the LiteRT interpreter.
Networks built here use BatchNormalization momentum `--bn_momentum` (0.9):
keras.applications' 0.999 leaves MobileNetV2 at chance level in inference
mode after a few hundred steps. `--visualize` adds the visual report
(`kdkeras.vis.write_visual_report`) in DIR/visual.

Writes DIR/student.keras (and baseline.keras), DIR/metrics.json (as
distill.py), DIR/student_<variant>.tflite, DIR/report.json and DIR/report.md.
report.json holds per variant (`keras`, `float32`, `float16`, `dynamic`,
`int8`) `top1`, `size_bytes`, `latency_ms` (one image, one thread; the Keras
model through its compiled graph with TensorFlow's default threads), plus
`max_abs_logit_diff` for `float32`, and `checks`: the issue's targets with
their measured values and pass/fail.

A vision-transformer student ships the same way: `--student=deit_tiny
--method=deit` distils a ViT with a distillation token (its output, the mean of
its two heads, is what every variant exports and is checked on).

`--qat_epochs=N` (default 0, off) adds quantisation-aware distillation: the
distilled student's fake-quant twin (`kdkeras.quantize.prepare_qat`, weight
scales per `--qat_weights`, by default `auto`) is distilled from the same teacher with the same
method for N more epochs at `--qat_lr` (default a tenth of `--lr`), saved as
DIR/student_qat.keras and exported with its trained scales as the fifth
variant `qat_int8` (DIR/student_qat_int8.tflite), with its own checks.
"""

from __future__ import annotations

import os

from absl import flags

from kdkeras import experiment, export, quantize, recipe_utils, training, vis
from kdkeras import methods as methods_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: QAT weight granularity per --qat_weights ("same": as --int8_weights gives the PTQ file)
QAT_WEIGHTS = quantize.WEIGHT_PRESETS


def define_flags(fv: flags.FlagValues) -> None:
    recipe_utils.define_distill_flags(fv, teacher="resnet50", student="mobilenetv2")
    flags.DEFINE_float("alpha", 1.0, "MobileNetV2 width multiplier (0.35, 0.5, 0.75, 1.0, ...).",
                       lower_bound=0.01, flag_values=fv)
    flags.DEFINE_integer("input_size", 32, "Square input size for both networks (>= 32; 3 channels).",
                         lower_bound=32, flag_values=fv)
    flags.DEFINE_float("bn_momentum", 0.9,
                       "BatchNormalization momentum of the networks built here (keras.applications uses "
                       "0.999/0.99, whose moving statistics stay near their initial values on short "
                       "runs); -1 keeps what the network was built with (0.9 for kdkeras.models' zoo).",
                       upper_bound=0.999999, flag_values=fv)
    flags.DEFINE_enum("int8_weights", "mixed", list(export.WEIGHT_GRANULARITIES),
                      "int8 weight scales: 'mixed' = one per tensor for 1x1 convolutions and dense "
                      "layers, one per channel elsewhere (a smaller file); 'per_channel' = the "
                      "converter's, one per output channel everywhere.", flag_values=fv)
    flags.DEFINE_bool("strip_names", True,
                      "Drop tensor names from the .tflite files (the runtime never reads them; "
                      "--nostrip_names keeps them for Netron or the quantisation debugger).",
                      flag_values=fv)
    flags.DEFINE_integer("num_representative", 200, "Training images used to calibrate the int8 model.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("latency_runs", 100, "Timed single-image runs per variant (after warm-up).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("warmup_runs", 10, "Untimed warm-up runs before timing.", lower_bound=0,
                         flag_values=fv)
    flags.DEFINE_bool("visualize", False, "Also write the visual report to DIR/visual.", flag_values=fv)
    flags.DEFINE_integer("num_images", 4, "Test images in the visual report's saliency and attention figures.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("qat_epochs", 0, "Epochs of quantisation-aware distillation after the float "
                         "run (0 = off); adds the qat_int8 variant.", lower_bound=0, flag_values=fv)
    flags.DEFINE_enum("qat_weights", "auto", ["same", *QAT_WEIGHTS],
                      "QAT weight scales: auto (mixed, and a 3x3 or depthwise conv per tensor where "
                      "one scale fits its folded kernel: the smallest file that still trains), 'same' "
                      "as --int8_weights, mixed, per_channel, or per_tensor (one scale per tensor "
                      "everywhere: smallest, but a narrow MobileNetV2 may not recover).", flag_values=fv)
    flags.DEFINE_float("qat_lr", None, "Peak learning rate of the QAT epochs (default: --lr / 10).",
                       lower_bound=0.0, flag_values=fv)
    recipe_utils.define_run_flags(fv, epochs=10, lr=0.05)


def run(fv: flags.FlagValues):
    """Run the recipe on parsed flags; returns what it measured (tests read it)."""
    config = recipe_utils.run_config(fv)
    shape = (fv.input_size, fv.input_size, 3)
    student_args = {"alpha": fv.alpha} if fv.student == "mobilenetv2" else {}
    spec = recipe_utils.distill_spec(
        fv, input_shape=shape, saved_dir=os.path.join(ROOT, "saved_models"),
        bn_momentum=None if fv.bn_momentum < 0 else fv.bn_momentum,
        student_args={**student_args, **recipe_utils.parse_kwargs(fv.student_args)})
    distilled = experiment.run_distillation(config, spec)
    m, data, out = distilled.metrics, distilled.data, config.output_dir
    report = {
        "command": experiment.command_line(), "dataset": config.dataset, "input_shape": list(shape),
        "num_train": data.num_train, "teacher": m["teacher"],
        "teacher_params": distilled.teacher.params if distilled.teacher else None, "alpha": fv.alpha,
        "student": f"{fv.student}({', '.join(f'{k}={v}' for k, v in spec.student_args.items())})",
        "student_params": distilled.student.count_params(), "bn_momentum": fv.bn_momentum,
        **{k: m.get(k) for k in ("method", "method_args", "epochs", "teacher_epochs", "train_limit",
                                 "teacher_top1", "student_top1", "baseline_top1") if k in m},
        "test_limit": config.test_limit,
    }
    # Calibration images: the training pipeline's preprocessing, no augmentation.
    representative = data.load(augment=False, shuffle=True)
    options = export.EdgeOptions(int8_weights=fv.int8_weights, strip_names=fv.strip_names,
                                 num_representative=fv.num_representative,
                                 latency_runs=fv.latency_runs, warmup_runs=fv.warmup_runs)
    report.update(export.export_variants(distilled.student, os.path.join(out, "student.keras"), data.test,
                                         representative, out, options))
    if fv.qat_epochs:
        report.update(_qat_variant(fv, distilled, config, options))
    report["checks"] = export.edge_checks(report)
    training.write_json(os.path.join(out, "report.json"), report)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(export.edge_report_markdown(report))
    for name, c in report["checks"].items():
        print(f"CHECK {name}: {c['value']:.4g} ({c['target']}) {'pass' if c['pass'] else 'FAIL'}")
    print(f"Wrote {os.path.join(out, 'report.md')} and report.json")

    if fv.visualize:
        models = {"teacher": distilled.teacher and distilled.teacher.require_model(), "baseline": distilled.baseline, "student": distilled.student}
        histories = {"student": m["history"], "baseline": m.get("baseline_history")}
        page = vis.write_visual_report(
            {k: v for k, v in models.items() if v is not None}, data.test, data.info.class_names,
            os.path.join(out, "visual"), histories={k: v for k, v in histories.items() if v},
            num_images=fv.num_images, seed=config.seed, command=report["command"])["page"]
        print(f"Wrote the visual report {page}")
    return report


def _qat_variant(fv, distilled, config, options) -> dict:
    """Distil the student's fake-quant twin and export it as the qat_int8 variant."""
    data = distilled.data
    weights = QAT_WEIGHTS[fv.int8_weights if fv.qat_weights == "same" else fv.qat_weights]
    methods = methods_lib.from_spec(fv.method, experiment.run_length_args(fv.method, fv.method_args)[0],
                                    num_examples=data.num_train)
    teacher = distilled.teacher.require_model() if distilled.teacher else None
    print(f"QAT: distilling the int8 twin for {fv.qat_epochs} epoch(s), weights {weights}")
    qat = quantize.distill_qat(distilled.student, teacher, methods, data, config, fv.qat_epochs,
                               lr=fv.qat_lr, weights=weights,
                               student_loss_weight=fv.student_loss_weight)
    qat["model"].save(os.path.join(config.output_dir, "student_qat.keras"))
    reference, _ = training.predict_logits(distilled.student, data.test)
    entry = export.export_qat_variant(qat["model"], data.test, config.output_dir, reference, options)
    return {"qat": {"epochs": qat["epochs"], "lr": qat["lr"], "weights": weights,
                    "train_seconds": qat["train_seconds"], "file": "student_qat.keras"},
            export.QAT_VARIANT: entry}


if __name__ == "__main__":
    recipe_utils.run_main(define_flags, run)

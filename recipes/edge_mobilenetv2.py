"""Distil a phone-sized MobileNetV2 from a ResNet50 teacher and ship it as LiteRT.

    python recipes/edge_mobilenetv2.py --dataset=fashion_mnist --input_size=32 \
        --alpha=0.35 --teacher_epochs=2 --epochs=3 --train_limit=10000 --baseline \
        --output_dir=runs/edge_fashion_mnist

The images are resized to `input_size` x `input_size` x 3 by the data pipeline
for both networks (`--input_size` wins over `--image_size`/`--channels`).
`--teacher` is a saved `.keras` model or a zoo name (default `resnet50`,
loaded from `saved_models/<dataset>_resnet50/model.keras` when it exists,
else trained here for `--teacher_epochs` and saved to DIR/teacher.keras).
The student is distilled with `--method` (KD by default, any registry name or
`+` combination), then exported to the four LiteRT variants (float32,
float16, dynamic-range, full-integer int8 calibrated on un-augmented training
images, weight scales per `--int8_weights`, all converted from one
SavedModel export, tensor names stripped unless `--nostrip_names`), each
evaluated on the test split with the LiteRT interpreter.
Networks built here use BatchNormalization momentum `--bn_momentum` (0.9):
keras.applications' 0.999 leaves MobileNetV2 at chance level in inference
mode after a few hundred steps. `--visualize` adds recipes/visualize.py's
report in DIR/visual.

Writes DIR/student.keras (and baseline.keras), DIR/metrics.json (as
distill.py), DIR/student_<variant>.tflite, DIR/report.json and DIR/report.md.
report.json holds per variant (`keras`, `float32`, `float16`, `dynamic`,
`int8`) `top1`, `size_bytes`, `latency_ms` (one image, one thread; the Keras
model through its compiled graph with TensorFlow's default threads), plus
`max_abs_logit_diff` for `float32`, and `checks`: the issue's targets with
their measured values and pass/fail.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import kdkeras  # noqa: E402
from kdkeras import data as data_lib  # noqa: E402
from kdkeras import export, recipe_utils, training  # noqa: E402
from kdkeras import models as zoo  # noqa: E402

FLAGS = flags.FLAGS
DEFAULT_TEACHER = "resnet50"
VARIANTS = ("keras",) + tuple(export.QUANTIZATIONS)

flags.DEFINE_string("teacher", DEFAULT_TEACHER,
                    "Path to a .keras teacher, or a zoo name trained here first.")
flags.DEFINE_integer("teacher_epochs", 10, "Epochs when the teacher is trained here.")
flags.DEFINE_float("alpha", 1.0, "MobileNetV2 width multiplier (0.35, 0.5, 0.75, 1.0, ...).")
flags.DEFINE_integer("input_size", 32, "Square input size for both networks (>= 32; 3 channels).")
flags.DEFINE_string("method", "kd", "Method name or '+' combination, e.g. kd, kd+at, dkd.")
flags.DEFINE_string("method_args", "", "Per-method overrides: 'kd.temperature=2,at.weight=500'.")
flags.DEFINE_float("student_loss_weight", None,
                   "Weight of the student's cross-entropy; default 0.1 when KD is used, else 1.")
flags.DEFINE_bool("baseline", False, "Also train MobileNetV2 alone on the same budget and initial weights.")
flags.DEFINE_float("bn_momentum", 0.9,
                   "BatchNormalization momentum of the networks built here (keras.applications uses "
                   "0.999/0.99, whose moving statistics stay near their initial values on short runs); "
                   "-1 keeps what the network was built with (0.9 for kdkeras.models' zoo).")
flags.DEFINE_enum("int8_weights", "mixed", list(export.WEIGHT_GRANULARITIES),
                  "int8 weight scales: 'mixed' = one per tensor for 1x1 convolutions and dense "
                  "layers, one per channel elsewhere (a smaller file); 'per_channel' = the "
                  "converter's, one per output channel everywhere.")
flags.DEFINE_bool("strip_names", True,
                  "Drop tensor names from the .tflite files (the runtime never reads them; "
                  "--nostrip_names keeps them for Netron or the quantisation debugger).")
flags.DEFINE_integer("num_representative", 200, "Training images used to calibrate the int8 model.")
flags.DEFINE_integer("latency_runs", 100, "Timed single-image runs per variant (after warm-up).")
flags.DEFINE_integer("warmup_runs", 10, "Untimed warm-up runs before timing.")
flags.DEFINE_bool("visualize", False, "Also write the visual report (recipes/visualize.py) to DIR/visual.")
flags.DEFINE_integer("num_images", 4, "Test images in the visual report's saliency and attention figures.")
recipe_utils.define_data_flags()
recipe_utils.define_train_flags(epochs=10, lr=0.05)

# The targets: float32 parity with Keras, int8 size and accuracy.
FLOAT32_TOP1_POINTS = 0.1
FLOAT32_LOGIT_TOL = 1e-3
INT8_SIZE_RATIO = 0.30
INT8_TOP1_POINTS = 1.0


def adapt_input(model: keras.Model, shape: tuple) -> keras.Model:
    """`model` fed images of `shape` (H, W, C): resized and channel-converted
    to its own input inside the graph, so a saved teacher of another input
    size still reads the student's pipeline."""
    own = tuple(model.input_shape[1:])
    if own == tuple(shape):
        return model
    h, w, c = own

    def fit(x):
        x = tf.image.resize(x, (h, w)) if tuple(x.shape[1:3]) != (h, w) else x
        if x.shape[-1] != c:
            x = tf.reduce_mean(x, -1, keepdims=True) if c == 1 else tf.repeat(x[..., :1], c, -1)
        return x

    inputs = keras.Input(shape, name="image")
    outputs = model(keras.layers.Lambda(fit, name="fit_teacher_input")(inputs))
    print(f"Teacher input {own} adapted to the pipeline's {tuple(shape)}")
    return keras.Model(inputs, outputs, name=f"{model.name}_adapted")


def set_bn_momentum(model: keras.Model, momentum: float) -> keras.Model:
    """`--bn_momentum` on every BatchNormalization layer; a negative value keeps the built ones."""
    return model if momentum is None or momentum < 0 else zoo.set_bn_momentum(model, momentum)


def get_teacher(spec: str, data, strategy, output_dir: str):
    """Load or train the teacher; returns (model, top1, where it came from)."""
    saved = os.path.join(ROOT, "saved_models", f"{FLAGS.dataset}_{DEFAULT_TEACHER}", "model.keras")
    if spec == DEFAULT_TEACHER and os.path.exists(saved):
        spec = saved
    with strategy.scope():
        if recipe_utils.is_model_path(spec):
            print(f"Loading teacher {spec}")
            teacher = adapt_input(training.load_model(spec), data.input_shape)
            source = spec
        else:
            teacher = recipe_utils.build_model(spec, data, seed=FLAGS.seed + 1000)
            set_bn_momentum(teacher, FLAGS.bn_momentum)
            print(f"Training teacher {spec} ({teacher.count_params():,} params) for "
                  f"{FLAGS.teacher_epochs} epochs")
            training.train_supervised(
                teacher, data.train, data.test,
                recipe_utils.train_config(FLAGS.teacher_epochs), output_dir, tag="teacher",
            )
            source = os.path.join(output_dir, "teacher.keras")
            teacher.save(source)
    top1 = training.evaluate_top1(teacher, data.test)
    print(f"teacher top1={top1:.4f}")
    return teacher, top1, source


def keras_latency_ms(model: keras.Model, example: np.ndarray, runs: int, warmup: int) -> float:
    """Mean ms of one single-image call of the model's compiled graph, timed
    like `evaluate_tflite` (warm-up excluded, result fetched each time)."""
    serve = tf.function(lambda x: model(x, training=False))
    x = tf.constant(example[:1])
    for _ in range(max(warmup, 1)):  # at least one call to trace the graph
        serve(x).numpy()
    start = time.perf_counter()
    for _ in range(runs):
        serve(x).numpy()
    return (time.perf_counter() - start) * 1000.0 / max(runs, 1)


def first_image(dataset) -> np.ndarray:
    for x, _ in dataset.take(1):
        return np.asarray(training.images_of(x))[:1]
    raise ValueError("the test split is empty")


def _check(target: str, value: float, passed: bool) -> dict:
    return {"target": target, "value": float(value), "pass": bool(passed)}


def make_checks(report: dict) -> dict:
    """The issue's targets with their measured values (top-1 gaps in points)."""
    keras_top1 = report["keras"]["top1"]
    gap = lambda v: round(abs(report[v]["top1"] - keras_top1) * 100.0, 9)  # noqa: E731
    ratio = report["int8"]["size_bytes"] / report["float32"]["size_bytes"]
    diff = report["float32"]["max_abs_logit_diff"]
    return {
        "float32_top1_matches_keras": _check(
            f"|top1(float32) - top1(keras)| <= {FLOAT32_TOP1_POINTS} point",
            gap("float32"), gap("float32") <= FLOAT32_TOP1_POINTS),
        "float32_logits_match_keras": _check(
            f"max |logit(float32) - logit(keras)| <= {FLOAT32_LOGIT_TOL:g}",
            diff, diff <= FLOAT32_LOGIT_TOL),
        "int8_size_vs_float32": _check(
            f"size(int8) / size(float32) <= {INT8_SIZE_RATIO:.2f}", ratio, ratio <= INT8_SIZE_RATIO),
        "int8_top1_vs_keras": _check(
            f"|top1(int8) - top1(keras)| <= {INT8_TOP1_POINTS} point",
            gap("int8"), gap("int8") <= INT8_TOP1_POINTS),
    }


def export_and_evaluate(student, keras_path, data, representative, output_dir) -> dict:
    """Every variant's top-1, size and latency; float32's logit gap to Keras."""
    keras_logits, labels = training.predict_logits(student, data.test)
    example = first_image(data.test)
    report = {"keras": {
        "file": os.path.basename(keras_path),
        "top1": float(np.mean(keras_logits.argmax(-1) == labels)),
        "size_bytes": os.path.getsize(keras_path),
        "latency_ms": keras_latency_ms(student, example, FLAGS.latency_runs, FLAGS.warmup_runs),
        "num_examples": int(len(labels)),
    }}
    print(f"[keras] top1={report['keras']['top1']:.4f} size={report['keras']['size_bytes']:,}B "
          f"latency={report['keras']['latency_ms']:.3f}ms")
    with tempfile.TemporaryDirectory(prefix="kdkeras_edge_") as tmp:
        start = time.perf_counter()
        saved_model = export.export_saved_model(student, os.path.join(tmp, "saved_model"))
        report["keras"]["saved_model_export_seconds"] = time.perf_counter() - start
        for quantization in export.QUANTIZATIONS:
            report[quantization] = _export_variant(
                student, quantization, saved_model, representative, data, keras_logits, labels,
                output_dir)
    return report


def _export_variant(student, quantization, saved_model, representative, data, keras_logits,
                    labels, output_dir) -> dict:
    """Convert one variant from the shared SavedModel and evaluate it with LiteRT."""
    path = os.path.join(output_dir, f"student_{quantization}.tflite")
    print(f"[{quantization}] exporting {path}")
    start = time.perf_counter()
    export.export_tflite(
        student, path, quantization,
        representative_data=representative if quantization == "int8" else None,
        num_representative=FLAGS.num_representative,
        strip_names=FLAGS.strip_names, saved_model_dir=saved_model,
        weight_granularity=FLAGS.int8_weights if quantization == "int8" else "per_channel",
    )
    seconds = time.perf_counter() - start
    result = export.evaluate_tflite(
        path, data.test, latency_runs=FLAGS.latency_runs, warmup_runs=FLAGS.warmup_runs)
    if not np.array_equal(result["labels"], labels):
        raise RuntimeError("the test split changed order between Keras and LiteRT runs")
    logits = result["logits"].reshape(keras_logits.shape)
    entry = {
        "file": os.path.basename(path),
        "top1": result["top1"],
        "size_bytes": result["size_bytes"],
        "latency_ms": result["latency_ms"],
        "latency_ms_all_threads": result["latency_ms_all_threads"],
        "num_examples": result["num_examples"],
        "agreement_with_keras": float(np.mean(logits.argmax(-1) == keras_logits.argmax(-1))),
        "export_seconds": seconds,
        "size_breakdown": export.tflite_size_breakdown(path),
        "names_stripped": FLAGS.strip_names,
    }
    if quantization == "int8":
        entry["weight_granularity"] = FLAGS.int8_weights
    if quantization == "float32":
        entry["max_abs_logit_diff"] = float(np.max(np.abs(logits - keras_logits)))
    extra = (f" max|dlogit|={entry['max_abs_logit_diff']:.2e}"
             if "max_abs_logit_diff" in entry else "")
    print(f"[{quantization}] top1={entry['top1']:.4f} size={entry['size_bytes']:,}B "
          f"latency={entry['latency_ms']:.3f}ms (1 thread), "
          f"{entry['latency_ms_all_threads']:.3f}ms (all threads){extra}")
    return entry


def report_markdown(report: dict) -> str:
    """report.md: the command, accuracies, the variants table and the checks."""
    f32 = report["float32"]["size_bytes"]
    k1 = report["keras"]["top1"]
    lines = [
        "# Edge report: MobileNetV2 student distilled for LiteRT",
        "",
        "Command:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"- data: `{report['dataset']}`, input {'x'.join(map(str, report['input_shape']))}, "
        f"train examples {report['num_train']}, test examples {report['keras']['num_examples']}",
        f"- teacher: `{report['teacher']}` ({report['teacher_params']:,} params), "
        f"top-1 {100 * report['teacher_top1']:.2f}%",
        f"- student: MobileNetV2 alpha={report['alpha']} ({report['student_params']:,} params), "
        f"method `{report['method']}`{' ' + report['method_args'] if report['method_args'] else ''}, "
        f"epochs {report['epochs']}, top-1 {100 * k1:.2f}%",
    ]
    if report.get("baseline_top1") is not None:
        lines.append(f"- baseline (same MobileNetV2 and budget, no teacher): top-1 "
                     f"{100 * report['baseline_top1']:.2f}%")
    lines += [
        "",
        "## Variants",
        "",
        "| variant | file | size (KB) | vs float32 | top-1 (%) | Δ vs Keras (points) "
        "| agreement with Keras | latency 1 thread (ms) | latency all threads (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        v = report[name]
        agree = v.get("agreement_with_keras")
        all_threads = v.get("latency_ms_all_threads")
        lines.append(
            f"| {name} | `{v['file']}` | {v['size_bytes'] / 1024:.1f} | {v['size_bytes'] / f32:.2f} "
            f"| {100 * v['top1']:.2f} | {100 * (v['top1'] - k1):+.2f} "
            f"| {'' if agree is None else f'{100 * agree:.2f}%'} | {v['latency_ms']:.3f} "
            f"| {'' if all_threads is None else f'{all_threads:.3f}'} |")
    lines += [
        "",
        f"float32 max |logit difference| against Keras on the test images: "
        f"{report['float32']['max_abs_logit_diff']:.3e}.",
        "Latency: mean of single-image runs after warm-up on this machine's CPU; the .tflite "
        "files with the LiteRT interpreter, the Keras model through its compiled TensorFlow "
        "graph (TensorFlow's default threads), whose size is that of the .keras file.",
    ] + int8_size_note(report) + [
        "",
        "## Checks",
        "",
        "| check | target | measured | result |",
        "|---|---|---:|---|",
    ]
    for name, c in report["checks"].items():
        target = c["target"].replace("|", "\\|")  # pipes would split the Markdown cell
        lines.append(f"| {name} | {target} | {c['value']:.4g} | "
                     f"{'pass' if c['pass'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def int8_size_note(report: dict) -> list[str]:
    """Report lines on where the int8 file's bytes go (why it may miss the size target)."""
    b = report["int8"].get("size_breakdown")
    if not b:
        return []
    f32 = report["float32"]["size_bytes"]
    return [
        "",
        f"int8 file by content: tensor data {b['tensor_data_bytes'] / 1024:.1f} KB "
        f"({b['tensor_data_bytes'] / f32:.3f} of float32), quantisation parameters "
        f"{b['quant_param_bytes'] / 1024:.1f} KB ({b['quant_param_bytes'] / f32:.3f}: a float32 "
        f"scale and an int64 zero point for each of {b['quantized_channels']:,} per-channel "
        f"entries), graph and metadata {b['other_bytes'] / 1024:.1f} KB "
        f"({b['other_bytes'] / f32:.3f}; "
        + ("tensor names stripped by --strip_names"
           if report["int8"].get("names_stripped") else
           f"tensor names {b.get('tensor_name_bytes', 0) / 1024:.1f} KB of it, which "
           "--strip_names drops")
        + "). Per-channel parameters cost about 24 bytes per "
        "convolution output channel (a float32 scale and an int64 zero point for the weights "
        "and again for the int32 bias), against 9 int8 weights in a 3x3 depthwise channel, "
        "so narrow MobileNetV2s (small --alpha) stay above 30% of float32. Weight scales: "
        + ("`mixed` (--int8_weights): one per tensor for 1x1 convolutions and the classifier, "
           "one per channel for the depthwise and the first convolution."
           if report["int8"].get("weight_granularity") == "mixed" else
           "`per_channel` (--int8_weights); `mixed` would keep one per tensor for 1x1 "
           "convolutions and the classifier, about half the parameters."),
    ]


def run_visual_report(teacher, student, baseline, data, history, output_dir) -> str:
    """recipes/visualize.py's report on this run's models (loaded as a module)."""
    spec = importlib.util.spec_from_file_location(
        "kdkeras_recipe_visualize", os.path.join(ROOT, "recipes", "visualize.py"))
    visualize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(visualize)
    models = {"teacher": teacher}
    if baseline is not None:
        models["baseline"] = baseline
    models["student"] = student
    return visualize.write_visual_report(
        models, data.test, data.info.class_names, os.path.join(output_dir, "visual"),
        histories=history, num_images=FLAGS.num_images, seed=FLAGS.seed,
        command=" ".join(shlex.quote(a) for a in ["python"] + sys.argv),
    )["page"]


def main(argv):
    del argv
    if FLAGS.input_size < 32:
        raise ValueError(f"--input_size must be >= 32 (MobileNetV2's minimum), got {FLAGS.input_size}.")
    strategy = recipe_utils.start_run()
    out = FLAGS.output_dir
    command = " ".join(shlex.quote(a) for a in ["python"] + sys.argv)

    probe = kdkeras.methods.from_spec(FLAGS.method, FLAGS.method_args, num_examples=1)
    with_index = any(m.requires_index for m in probe)
    shape = (FLAGS.input_size, FLAGS.input_size, 3)
    data = recipe_utils.setup_data(shape, with_index=with_index)
    print(f"Data {FLAGS.dataset}: {data.num_train} training examples at {shape}")
    teacher, teacher_top1, teacher_source = get_teacher(FLAGS.teacher, data, strategy, out)

    trained_here = teacher_source == os.path.join(out, "teacher.keras")
    teacher_epochs = FLAGS.teacher_epochs if trained_here else None
    weight = FLAGS.student_loss_weight
    if weight is None:
        weight = 0.1 if any(m.name == "kd" for m in probe) else 1.0
    config = recipe_utils.train_config()
    with strategy.scope():
        student = recipe_utils.build_model("mobilenetv2", data, seed=FLAGS.seed, alpha=FLAGS.alpha)
        set_bn_momentum(student, FLAGS.bn_momentum)
        initial = student.get_weights()
        methods = kdkeras.methods.from_spec(FLAGS.method, FLAGS.method_args, num_examples=data.num_train)
        distiller = kdkeras.Distiller(teacher, student, methods, student_loss_weight=weight)
    print(f"Distilling MobileNetV2 alpha={FLAGS.alpha} ({student.count_params():,} params) with "
          f"{[m.name for m in methods]}, student_loss_weight={weight}, {FLAGS.epochs} epochs")
    with strategy.scope():
        history, seconds = training.compile_and_fit(
            distiller, data.train, data.test, config, out, tag="distill")
    student_top1 = training.evaluate_top1(student, data.test)
    student_path = os.path.join(out, "student.keras")
    student.save(student_path)
    print(f"student top1={student_top1:.4f} ({seconds:.0f}s)")
    metrics = {
        "method": FLAGS.method, "method_args": FLAGS.method_args, "dataset": FLAGS.dataset,
        "teacher": teacher_source, "student": f"mobilenetv2(alpha={FLAGS.alpha})",
        "student_top1": student_top1, "teacher_top1": teacher_top1, "epochs": FLAGS.epochs,
        "teacher_epochs": teacher_epochs, "train_limit": FLAGS.train_limit,
        "batch_size": FLAGS.batch_size, "lr": FLAGS.lr, "seed": FLAGS.seed,
        "student_loss_weight": weight, "train_seconds": seconds, "history": history,
    }

    baseline = None
    if FLAGS.baseline:
        with strategy.scope():
            baseline = recipe_utils.build_model("mobilenetv2", data, seed=FLAGS.seed, alpha=FLAGS.alpha)
            set_bn_momentum(baseline, FLAGS.bn_momentum)
            baseline.set_weights(initial)
            result = training.train_supervised(baseline, data.train, data.test, config, out, tag="baseline")
        baseline.save(os.path.join(out, "baseline.keras"))
        metrics.update(baseline_top1=result["top1"], baseline_train_seconds=result["train_seconds"],
                       baseline_history=result["history"])
        print(f"baseline top1={result['top1']:.4f}")
    training.write_json(os.path.join(out, "metrics.json"), metrics)

    # Calibration images: the training pipeline's preprocessing, no augmentation.
    representative = data_lib.load(
        FLAGS.dataset, data.info.train_split, batch_size=FLAGS.batch_size,
        image_size=shape[:2], channels=3, augment=False, shuffle=True,
        limit=FLAGS.train_limit, seed=FLAGS.seed, data_dir=FLAGS.data_dir,
    )
    report = {
        "command": command, "dataset": FLAGS.dataset, "input_shape": list(shape),
        "num_train": data.num_train, "teacher": teacher_source,
        "teacher_params": teacher.count_params(), "alpha": FLAGS.alpha,
        "student_params": student.count_params(), "bn_momentum": FLAGS.bn_momentum,
        "method": FLAGS.method,
        "method_args": FLAGS.method_args, "epochs": FLAGS.epochs,
        "teacher_epochs": teacher_epochs, "train_limit": FLAGS.train_limit,
        "test_limit": FLAGS.test_limit, "teacher_top1": teacher_top1,
        "student_top1": student_top1,
    }
    if baseline is not None:
        report["baseline_top1"] = metrics["baseline_top1"]
    report.update(export_and_evaluate(student, student_path, data, representative, out))
    report["checks"] = make_checks(report)
    training.write_json(os.path.join(out, "report.json"), report)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report_markdown(report))
    for name, c in report["checks"].items():
        print(f"CHECK {name}: {c['value']:.4g} ({c['target']}) {'pass' if c['pass'] else 'FAIL'}")
    print(f"Wrote {os.path.join(out, 'report.md')} and report.json")

    if FLAGS.visualize:
        histories = {"student": history}
        if baseline is not None:
            histories["baseline"] = metrics["baseline_history"]
        page = run_visual_report(teacher, student, baseline, data, histories, out)
        print(f"Wrote the visual report {page}")


if __name__ == "__main__":
    app.run(main)

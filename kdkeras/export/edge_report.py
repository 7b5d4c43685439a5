"""Ship a student to the edge, verified: every LiteRT variant converted from one
SavedModel, evaluated with the LiteRT interpreter on the test split, compared
with the Keras model, checked against size and accuracy targets and written
up as `report.json` / `report.md`.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from kdkeras.keys import image_part
from kdkeras.training import predict_logits
from kdkeras.vis.report import markdown_table

from .litert_eval import evaluate_tflite, logit_agreement
from .size import tflite_size_breakdown
from .tflite import QUANTIZATIONS, export_saved_model, export_tflite

VARIANTS = ("keras",) + tuple(QUANTIZATIONS)
#: the quantisation-aware variant, reported after VARIANTS when a run made it
QAT_VARIANT = "qat_int8"


@dataclass
class EdgeTargets:
    """The targets `edge_checks` measures: float32 parity with Keras, int8 size and accuracy."""

    float32_top1_points: float = 0.1
    float32_logit_tol: float = 1e-3
    int8_size_ratio: float = 0.30
    int8_top1_points: float = 1.0
    qat_points_below_float: float = 0.3
    qat_parity_points: float = 0.2


@dataclass
class EdgeOptions:
    """How the variants are made and timed (the edge recipe's flags)."""

    int8_weights: str = "mixed"
    strip_names: bool = True
    num_representative: int = 200
    latency_runs: int = 100
    warmup_runs: int = 10


def keras_latency_ms(model: keras.Model, example: np.ndarray, runs: int, warmup: int) -> float:
    """Mean ms of one single-image call of the model's compiled graph, timed like
    `evaluate_tflite` (warm-up excluded, result fetched each time)."""
    serve = tf.function(lambda x: model(x, training=False))
    x = tf.constant(example[:1])
    for _ in range(max(warmup, 1)):  # at least one call to trace the graph
        serve(x).numpy()
    start = time.perf_counter()
    for _ in range(runs):
        serve(x).numpy()
    return (time.perf_counter() - start) * 1000.0 / max(runs, 1)


def _first_image(dataset) -> np.ndarray:
    for x, _ in dataset.take(1):
        return np.asarray(image_part(x))[:1]
    raise ValueError("the test split is empty")


def export_variants(student: keras.Model, keras_path: str, test_ds, representative,
                    output_dir: str, options: EdgeOptions | None = None) -> dict:
    """Every variant's top-1, size and latency (`keras` and each quantisation),
    with each file's agreement with Keras and float32's largest logit gap."""
    options = options or EdgeOptions()
    keras_logits, labels = predict_logits(student, test_ds)
    report = {"keras": {
        "file": os.path.basename(keras_path),
        "top1": float(np.mean(keras_logits.argmax(-1) == labels)),
        "size_bytes": os.path.getsize(keras_path),
        "latency_ms": keras_latency_ms(student, _first_image(test_ds), options.latency_runs,
                                       options.warmup_runs),
        "num_examples": int(len(labels)),
    }}
    print(f"[keras] top1={report['keras']['top1']:.4f} size={report['keras']['size_bytes']:,}B "
          f"latency={report['keras']['latency_ms']:.3f}ms")
    with tempfile.TemporaryDirectory(prefix="kdkeras_edge_") as tmp:
        start = time.perf_counter()
        saved_model = export_saved_model(student, os.path.join(tmp, "saved_model"))
        report["keras"]["saved_model_export_seconds"] = time.perf_counter() - start
        for quantization in QUANTIZATIONS:
            report[quantization] = _export_variant(
                student, quantization, saved_model, representative, test_ds, keras_logits, labels,
                output_dir, options)
    return report


def _export_variant(student, quantization, saved_model, representative, test_ds, keras_logits,
                    labels, output_dir, options: EdgeOptions) -> dict:
    """Convert one variant from the shared SavedModel and evaluate it with LiteRT."""
    path = os.path.join(output_dir, f"student_{quantization}.tflite")
    print(f"[{quantization}] exporting {path}")
    int8 = quantization == "int8"
    start = time.perf_counter()
    export_tflite(
        student, path, quantization, representative_data=representative if int8 else None,
        num_representative=options.num_representative, strip_names=options.strip_names,
        saved_model_dir=saved_model, weight_granularity=options.int8_weights if int8 else "per_channel",
    )
    seconds = time.perf_counter() - start
    result = evaluate_tflite(path, test_ds, latency_runs=options.latency_runs,
                             warmup_runs=options.warmup_runs)
    if not np.array_equal(result["labels"], labels):
        raise RuntimeError("the test split changed order between Keras and LiteRT runs")
    compared = logit_agreement(keras_logits, result["logits"])
    entry = {
        "file": os.path.basename(path),
        **{k: result[k] for k in ("top1", "size_bytes", "latency_ms", "latency_ms_all_threads",
                                  "num_examples")},
        "agreement_with_keras": compared["top1_agreement"],
        "export_seconds": seconds,
        "size_breakdown": tflite_size_breakdown(path),
        "names_stripped": options.strip_names,
    }
    if int8:
        entry["weight_granularity"] = options.int8_weights
    if quantization == "float32":
        entry["max_abs_logit_diff"] = compared["max_abs_logit_diff"]
    extra = f" max|dlogit|={entry['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in entry else ""
    print(f"[{quantization}] top1={entry['top1']:.4f} size={entry['size_bytes']:,}B "
          f"latency={entry['latency_ms']:.3f}ms (1 thread), "
          f"{entry['latency_ms_all_threads']:.3f}ms (all threads){extra}")
    return entry


def export_qat_variant(qat_model: keras.Model, test_ds, output_dir: str,
                       reference_logits: np.ndarray, options: EdgeOptions | None = None,
                       io: str = "int8") -> dict:
    """The `qat_int8` entry: the trained fake-quant model exported with its own
    scales (no calibration data), evaluated with LiteRT like the other
    variants, plus `keras_top1` (the fake-quant Keras model's own top-1) and
    `agreement_with_fake_quant` (per-example top-1 agreement with it);
    `agreement_with_keras` compares with `reference_logits` (the float student's);
    `io` is `export_qat_tflite`'s ("int8" or "float" input/output)."""
    from kdkeras.quantize import check_int8_kernels, export_qat_tflite

    options = options or EdgeOptions()
    path = os.path.join(output_dir, f"student_{QAT_VARIANT}.tflite")
    print(f"[{QAT_VARIANT}] exporting {path}")
    start = time.perf_counter()
    export_qat_tflite(qat_model, path, io=io, strip_names=options.strip_names)
    seconds = time.perf_counter() - start
    result = evaluate_tflite(path, test_ds, latency_runs=options.latency_runs,
                             warmup_runs=options.warmup_runs)
    fake_logits, labels = predict_logits(qat_model, test_ds)
    if not np.array_equal(result["labels"], labels):
        raise RuntimeError("the test split changed order between Keras and LiteRT runs")
    kernels = check_int8_kernels(path)
    entry = {
        "file": os.path.basename(path),
        **{k: result[k] for k in ("top1", "size_bytes", "latency_ms", "latency_ms_all_threads",
                                  "num_examples")},
        "keras_top1": float(np.mean(fake_logits.argmax(-1) == labels)),
        "agreement_with_fake_quant": logit_agreement(fake_logits, result["logits"])["top1_agreement"],
        "agreement_with_keras": logit_agreement(reference_logits, result["logits"])["top1_agreement"],
        "export_seconds": seconds,
        "size_breakdown": tflite_size_breakdown(path),
        "names_stripped": options.strip_names,
        "io": io,
        "int8_kernels": kernels["ok"],
        "ops": kernels["ops"],
    }
    print(f"[{QAT_VARIANT}] top1={entry['top1']:.4f} (fake-quant Keras {entry['keras_top1']:.4f}, "
          f"agreement {entry['agreement_with_fake_quant']:.4f}) size={entry['size_bytes']:,}B "
          f"latency={entry['latency_ms']:.3f}ms (1 thread)")
    return entry


def _check(target: str, value: float, passed: bool) -> dict:
    return {"target": target, "value": float(value), "pass": bool(passed)}


def edge_checks(report: dict, targets: EdgeTargets | None = None) -> dict:
    """The targets with their measured values (top-1 gaps in points) and pass/fail."""
    t = targets or EdgeTargets()
    keras_top1 = report["keras"]["top1"]

    def gap(variant):
        return round(abs(report[variant]["top1"] - keras_top1) * 100.0, 9)

    ratio = report["int8"]["size_bytes"] / report["float32"]["size_bytes"]
    diff = report["float32"]["max_abs_logit_diff"]
    checks = {
        "float32_top1_matches_keras": _check(
            f"|top1(float32) - top1(keras)| <= {t.float32_top1_points} point",
            gap("float32"), gap("float32") <= t.float32_top1_points),
        "float32_logits_match_keras": _check(
            f"max |logit(float32) - logit(keras)| <= {t.float32_logit_tol:g}",
            diff, diff <= t.float32_logit_tol),
        "int8_size_vs_float32": _check(
            f"size(int8) / size(float32) <= {t.int8_size_ratio:.2f}", ratio, ratio <= t.int8_size_ratio),
        "int8_top1_vs_keras": _check(
            f"|top1(int8) - top1(keras)| <= {t.int8_top1_points} point",
            gap("int8"), gap("int8") <= t.int8_top1_points),
    }
    if QAT_VARIANT in report:
        checks.update(qat_checks(report, t))
    return checks


def qat_checks(report: dict, targets: EdgeTargets | None = None) -> dict:
    """The quantisation-aware variant's targets: no more than 0.3 point below the
    float student, no worse than the post-training int8 file, the size target,
    and parity of the file with its fake-quant Keras model."""
    t = targets or EdgeTargets()
    qat = report[QAT_VARIANT]
    below = round((report["keras"]["top1"] - qat["top1"]) * 100.0, 9)
    over_ptq = round((qat["top1"] - report["int8"]["top1"]) * 100.0, 9)
    parity = round(abs(qat["top1"] - qat["keras_top1"]) * 100.0, 9)
    ratio = qat["size_bytes"] / report["float32"]["size_bytes"]
    return {
        "qat_int8_top1_vs_float": _check(
            f"top1(keras) - top1(qat_int8) <= {t.qat_points_below_float} point",
            below, below <= t.qat_points_below_float),
        "qat_int8_top1_vs_ptq_int8": _check(
            "top1(qat_int8) - top1(int8) >= 0 points", over_ptq, over_ptq >= 0),
        "qat_int8_size_vs_float32": _check(
            f"size(qat_int8) / size(float32) <= {t.int8_size_ratio:.2f}", ratio,
            ratio <= t.int8_size_ratio),
        "qat_int8_matches_fake_quant": _check(
            f"|top1(qat_int8) - top1(fake-quant keras)| <= {t.qat_parity_points} point",
            parity, parity <= t.qat_parity_points),
    }


def edge_report_markdown(report: dict) -> str:
    """report.md: the command, accuracies, the variants table and the checks."""
    f32 = report["float32"]["size_bytes"]
    k1 = report["keras"]["top1"]
    method = report["method"] + (f" {report['method_args']}" if report.get("method_args") else "")
    lines = [
        f"# Edge report: {report['student']} distilled for LiteRT", "", "Command:", "",
        "```", report["command"], "```", "",
        f"- data: `{report['dataset']}`, input {'x'.join(map(str, report['input_shape']))}, "
        f"train examples {report['num_train']}, test examples {report['keras']['num_examples']}",
        (f"- teacher: `{report['teacher']}` ({report['teacher_params']:,} params), "
         f"top-1 {100 * report['teacher_top1']:.2f}%" if report.get("teacher_params") else "- no teacher"),
        f"- student: {report['student']} ({report['student_params']:,} params), "
        f"method `{method}`, epochs {report['epochs']}, top-1 {100 * k1:.2f}%",
    ]
    if report.get("baseline_top1") is not None:
        lines.append(f"- baseline (same student and budget, no teacher): top-1 "
                     f"{100 * report['baseline_top1']:.2f}%")
    rows = []
    for name in VARIANTS + ((QAT_VARIANT,) if QAT_VARIANT in report else ()):
        v = report[name]
        agree, threads = v.get("agreement_with_keras"), v.get("latency_ms_all_threads")
        rows.append([name, f"`{v['file']}`", f"{v['size_bytes'] / 1024:.1f}", f"{v['size_bytes'] / f32:.2f}",
                     f"{100 * v['top1']:.2f}", f"{100 * (v['top1'] - k1):+.2f}",
                     "" if agree is None else f"{100 * agree:.2f}%", f"{v['latency_ms']:.3f}",
                     "" if threads is None else f"{threads:.3f}"])
    lines += ["", "## Variants", "", markdown_table(
        ["variant", "file", "size (KB)", "vs float32", "top-1 (%)", "Δ vs Keras (points)",
         "agreement with Keras", "latency 1 thread (ms)", "latency all threads (ms)"],
        rows, align="llrrrrrrr")]
    lines += [
        "",
        f"float32 max |logit difference| against Keras on the test images: "
        f"{report['float32']['max_abs_logit_diff']:.3e}.",
        "Latency: mean of single-image runs after warm-up on this machine's CPU; the .tflite "
        "files with the LiteRT interpreter, the Keras model through its compiled TensorFlow "
        "graph (TensorFlow's default threads), whose size is that of the .keras file.",
    ] + int8_size_note(report) + qat_note(report)
    checks = [[name, c["target"], f"{c['value']:.4g}", "pass" if c["pass"] else "FAIL"]
              for name, c in report["checks"].items()]
    lines += ["", "## Checks", "", markdown_table(["check", "target", "measured", "result"], checks,
                                                  align="llrl")]
    return "\n".join(lines) + "\n"


def qat_note(report: dict) -> list[str]:
    """Report lines on the quantisation-aware variant: its budget and parity."""
    qat = report.get(QAT_VARIANT)
    if not qat:
        return []
    run = report.get("qat", {})
    return [
        "",
        f"qat_int8: the float student's fake-quant twin (BatchNormalization folded, weights "
        f"{run.get('weights')}), distilled from the same teacher for {run.get('epochs')} more "
        f"epoch(s) at lr {run.get('lr')} after the float run ({run.get('train_seconds', 0):.0f}s), "
        f"exported with its trained scales. Fake-quant Keras top-1 {100 * qat['keras_top1']:.2f}%, "
        f"per-example agreement of the file with it {100 * qat['agreement_with_fake_quant']:.2f}%; "
        f"every conv/dense kernel int8: {qat.get('int8_kernels')}.",
    ]


def int8_size_note(report: dict) -> list[str]:
    """Report lines on where the int8 file's bytes go (why it may miss the size target)."""
    b = report["int8"].get("size_breakdown")
    if not b:
        return []
    f32 = report["float32"]["size_bytes"]
    names = ("tensor names stripped by --strip_names" if report["int8"].get("names_stripped") else
             f"tensor names {b.get('tensor_name_bytes', 0) / 1024:.1f} KB of it, which "
             "--strip_names drops")
    scales = ("`mixed` (--int8_weights): one per tensor for 1x1 convolutions and the classifier, "
              "one per channel for the depthwise and the first convolution."
              if report["int8"].get("weight_granularity") == "mixed" else
              "`per_channel` (--int8_weights); `mixed` would keep one per tensor for 1x1 "
              "convolutions and the classifier, about half the parameters.")
    return [
        "",
        f"int8 file by content: tensor data {b['tensor_data_bytes'] / 1024:.1f} KB "
        f"({b['tensor_data_bytes'] / f32:.3f} of float32), quantisation parameters "
        f"{b['quant_param_bytes'] / 1024:.1f} KB ({b['quant_param_bytes'] / f32:.3f}: a float32 "
        f"scale and an int64 zero point for each of {b['quantized_channels']:,} per-channel "
        f"entries), graph and metadata {b['other_bytes'] / 1024:.1f} KB "
        f"({b['other_bytes'] / f32:.3f}; {names}). Per-channel parameters cost about 24 bytes per "
        "convolution output channel (a float32 scale and an int64 zero point for the weights "
        "and again for the int32 bias), against 9 int8 weights in a 3x3 depthwise channel, "
        f"so narrow MobileNetV2s (small --alpha) stay above 30% of float32. Weight scales: {scales}",
    ]

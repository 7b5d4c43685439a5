"""Cost of simulating int8 while training: a QAT step against a float step.

Times, with interleaved repetitions on the same data, one training epoch
(cross-entropy, SGD, compiled) of

- `float_step`: the float student,
- `qat_step`: its fake-quant twin (`kdkeras.quantize.prepare_qat`: BN folded,
  int8 weights and activations simulated),

and prints the median seconds per step of each and `qat_step_over_float_step`,
computed from those medians; `--json PATH` writes it with the raw timings.
Only the ratio measured in one run is reported (machines are noisy).

    python benchmarks/qat_speed.py --quick --json runs/qat_speed.json
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import kdkeras  # noqa: E402
from kdkeras import quantize, training  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("student", "mobilenetv2", "Zoo name of the student.")
flags.DEFINE_float("alpha", 0.35, "MobileNetV2 width (ignored by other students).")
flags.DEFINE_integer("image_size", 32, "Square input size.")
flags.DEFINE_integer("channels", 3, "Input channels.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_integer("examples", 2048, "Examples per timed epoch.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions of each variant (interleaved).")
flags.DEFINE_bool("quick", False, "Short run (about a minute on 2 cores).")
flags.DEFINE_string("json", None, "Write the ratio and raw timings to this JSON file.")


def dataset(n, batch):
    rng = np.random.default_rng(0)
    x = rng.random((n, FLAGS.image_size, FLAGS.image_size, FLAGS.channels), dtype=np.float32)
    y = rng.integers(0, FLAGS.num_classes, n).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache().prefetch(2)


def make_variants(ds):
    """Each variant: a callable that runs one epoch (compiled; warmed up by `measure`)."""
    keras.utils.set_random_seed(0)
    shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    kwargs = {"alpha": FLAGS.alpha} if FLAGS.student == "mobilenetv2" else {}
    student = kdkeras.models.get(FLAGS.student, shape, FLAGS.num_classes, **kwargs)
    qat = quantize.prepare_qat(student)
    models = {"float_step": student, "qat_step": qat}
    for model in models.values():
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return {name: (lambda m=model: m.fit(ds, epochs=1, verbose=0)) for name, model in models.items()}


def time_rounds(variants, repeats):
    """{name: [seconds of each timed epoch]}: one untimed epoch per variant, then
    `repeats` rounds in which every variant runs once (interleaved)."""
    times = {name: [] for name in variants}
    for round_ in range(repeats + 1):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if round_:  # round 0 compiles and warms up
                times[name].append(time.perf_counter() - start)
    return times


def main(argv):
    del argv
    examples = min(FLAGS.examples, 512) if FLAGS.quick else FLAGS.examples
    repeats = min(FLAGS.repeats, 3) if FLAGS.quick else FLAGS.repeats
    data = dataset(examples, FLAGS.batch_size)
    steps = int(data.cardinality())
    times = time_rounds(make_variants(data), repeats)
    per_step = {k: [t / steps for t in v] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in per_step.items()}
    ratio = med["qat_step"] / med["float_step"]
    print(f"\nstudent={FLAGS.student} input={FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels} "
          f"examples={examples} batch={FLAGS.batch_size} steps={steps} repeats={repeats} "
          "(interleaved; median s/step)")
    for name, values in per_step.items():
        print(f"{name:<12}{med[name]:>10.4f}{min(values):>10.4f}{max(values):>10.4f}")
    print(f"\n{'qat_step_over_float_step':<28}{ratio:.3f}")
    if FLAGS.json:
        training.write_json(FLAGS.json, {
            "qat_step_over_float_step": ratio, "seconds_per_step": per_step,
            "median_seconds_per_step": med, "epoch_seconds": times,
            "config": {"student": FLAGS.student, "alpha": FLAGS.alpha, "examples": examples,
                       "batch_size": FLAGS.batch_size, "steps": steps, "repeats": repeats}})


if __name__ == "__main__":
    app.run(main)

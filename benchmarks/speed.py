"""Speed of one distillation epoch, as ratios measured in one run.

Times, with interleaved repetitions on the same data and the same
teacher/student pair (the teacher several times the student's cost):

- `student`: the student trained alone (cross-entropy) for one epoch,
- `teacher_inference`: one inference pass of the teacher over the data,
- `kdkeras_kd`: one kdkeras KD epoch,
- `keras_kd`: one epoch of Keras' built-in `keras.distillation.Distiller`
  with `LogitsDistillation(temperature=T, loss=keras.losses.KLDivergence())`.
  The `loss` object is passed on purpose: Keras' default `"kl_divergence"`
  string takes KL of raw logits (no softmax, no T^2), which is not KD.
- `kdkeras_kd_cached`: one kdkeras KD epoch from a teacher-output cache
  (`kdkeras.cache`: the teacher's logits read from disk with each batch; no
  teacher in the step),
- `cache_build`: building that cache (one view) into a fresh folder.

Prints a table (median seconds per epoch) and the ratios `kd_over_student`
(the distillation tax), `teacher_over_student`, `kd_over_keras_distillation`,
`kd_cached_over_student`, `kd_cached_over_keras_distillation` and
`cache_build_over_teacher_epoch`, then the peak resident memory of one cached
epoch (`cached_epoch_peak_rss_mb`, and its growth over the resident memory
before the epoch, next to the cache's size on disk), and the memory added by
reading an epoch from a large cache (`large_cache_read_rss_growth_mb` against
`large_cache_mb`, `--large_cache_mb`); `--json PATH` writes them. Machines are noisy, so only ratios measured in the same run are reported.

    python benchmarks/speed.py --quick --json runs/speed.json
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import kdkeras  # noqa: E402
from kdkeras import training  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("teacher", "resnet32", "Zoo name of the teacher.")
flags.DEFINE_string("student", "resnet8", "Zoo name of the student.")
flags.DEFINE_integer("image_size", 32, "Square input size.")
flags.DEFINE_integer("channels", 3, "Input channels.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_integer("examples", 2048, "Examples per epoch.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions of each variant (interleaved).")
flags.DEFINE_float("temperature", 4.0, "KD temperature.")
flags.DEFINE_bool("quick", False, "Short run (under ~3 minutes on 2 cores).")
flags.DEFINE_string("json", None, "Write the ratios and timings to this JSON file.")
flags.DEFINE_integer("large_cache_mb", 1024,
                     "Also read one epoch from a teacher cache of about this size, with a wide feature-map "
                     "tap, and report the peak memory it adds (0: skip).", lower_bound=0)


def dataset(n, batch):
    rng = np.random.default_rng(0)
    x = rng.random((n, FLAGS.image_size, FLAGS.image_size, FLAGS.channels), dtype=np.float32)
    y = rng.integers(0, FLAGS.num_classes, n).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache().prefetch(2)


def build(name, seed):
    keras.utils.set_random_seed(seed)
    shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    return kdkeras.models.get(name, shape, FLAGS.num_classes)


def sgd():
    return keras.optimizers.SGD(0.01, momentum=0.9)


def indexed(ds):
    """The same batches with each example's index: `({"image", "index"}, y)`."""
    batch = FLAGS.batch_size
    flat = ds.unbatch().enumerate().map(lambda i, xy: ({"image": xy[0], "index": i}, xy[1]))
    return flat.batch(batch).cache()


def build_cache(teacher, ds, path):
    """A one-view teacher cache (logits) of the benchmark's data at `path`."""
    shutil.rmtree(path, ignore_errors=True)
    examples = sum(int(y.shape[0]) for _, y in ds)
    return kdkeras.cache.build_teacher_cache(path, teacher, lambda v: indexed(ds), num_examples=examples,
                                             verbose=False)


def make_variants(ds):
    """Each variant: a callable that runs one epoch (compiled, warmed up)."""
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    teacher = build(FLAGS.teacher, 1)
    teacher.trainable = False

    student = build(FLAGS.student, 2)
    student.compile(optimizer=sgd(), loss=ce, metrics=["accuracy"])

    ours = kdkeras.Distiller(
        teacher, build(FLAGS.student, 2),
        [kdkeras.methods.KD(temperature=FLAGS.temperature, weight=0.9)], student_loss_weight=0.1,
    )
    ours.compile(optimizer=sgd(), loss=ce, metrics=["accuracy"])

    theirs = keras.distillation.Distiller(
        teacher=teacher,
        student=build(FLAGS.student, 2),
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=FLAGS.temperature, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=0.1,
    )
    theirs.compile(optimizer=sgd(), loss=ce, metrics=["accuracy"])

    images = ds.map(lambda x, y: x)
    infer = tf.function(lambda x: teacher(x, training=False), jit_compile=False)

    def teacher_pass():
        for x in images:
            infer(x)

    folder = tempfile.mkdtemp(prefix="kdkeras_speed_cache_")
    cache = build_cache(teacher, ds, os.path.join(folder, "kd"))
    cached_ds = indexed(ds).map(lambda x, y: (cache.attach(x, tf.constant(0, tf.int64)), y)).prefetch(2)
    cached = kdkeras.Distiller(
        None, build(FLAGS.student, 2),
        [kdkeras.methods.KD(temperature=FLAGS.temperature, weight=0.9)], student_loss_weight=0.1,
        teacher_cache=cache,
    )
    cached.compile(optimizer=sgd(), loss=ce, metrics=["accuracy"])
    CACHED["dataset"], CACHED["cache"], CACHED["model"] = cached_ds, cache, cached

    return {
        "student": lambda: student.fit(ds, epochs=1, verbose=0),
        "teacher_inference": teacher_pass,
        "kdkeras_kd": lambda: ours.fit(ds, epochs=1, verbose=0),
        "keras_kd": lambda: theirs.fit(ds, epochs=1, verbose=0),
        "kdkeras_kd_cached": lambda: cached.fit(cached_ds, epochs=1, verbose=0),
        "cache_build": lambda: build_cache(teacher, ds, os.path.join(folder, "build")),
    }


#: the cached variant's pieces, for the memory measurement after the timings
CACHED: dict = {}


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cached_epoch_memory() -> dict:
    """Peak resident memory (MB) of one cached epoch: the kernel's high-water mark
    (VmHWM) is reset first (Linux clear_refs), so it is the epoch's own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return {}
    before = _status_kb("VmRSS")
    CACHED["model"].fit(CACHED["dataset"], epochs=1, verbose=0)
    peak = _status_kb("VmHWM")
    cache = CACHED["cache"]
    size = cache.bytes_per_example_view * cache.num_examples * cache.views
    return {"cached_epoch_peak_rss_mb": peak / 1024, "cached_epoch_rss_growth_mb": (peak - before) / 1024,
            "cache_mb": size / 2**20}


def large_cache_memory(megabytes: int) -> dict:
    """Peak memory added by reading one epoch from a cache of about `megabytes` (a
    teacher whose tapped feature map is wide, so the cache is large for few examples):
    rows are read with positional reads per batch, so it stays near a few batches'
    size, whatever the cache's size."""
    size, channels, batch = FLAGS.image_size, FLAGS.channels, FLAGS.batch_size
    width = 64
    row = size * size * width * 4
    n = max(batch, int(megabytes * 2**20 // row) // batch * batch)
    inputs = keras.Input((size, size, channels))
    wide = keras.layers.Conv2D(width, 3, padding="same", name="wide")(inputs)
    logits = keras.layers.Dense(FLAGS.num_classes, name="logits")(keras.layers.GlobalAveragePooling2D()(wide))
    teacher = keras.Model(inputs, logits, name="wide_teacher")
    rng = np.random.default_rng(1)
    images = tf.data.Dataset.from_tensor_slices(
        (rng.random((batch, size, size, channels), dtype=np.float32), np.zeros(batch, "int32")))
    ds = images.repeat(n // batch).batch(batch)
    folder = tempfile.mkdtemp(prefix="kdkeras_large_cache_")
    try:
        cache = kdkeras.cache.build_teacher_cache(
            os.path.join(folder, "c"), teacher, lambda v: indexed(ds.cache()), num_examples=n,
            taps=["wide"], verbose=False)
        read = indexed(ds).map(lambda x, y: (cache.attach(x, tf.constant(0, tf.int64)), y)).prefetch(2)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
        total = 0.0
        for x, _ in read:
            total += float(tf.reduce_sum(x["teacher"]["wide"][:, 0, 0, 0]))
        peak = _status_kb("VmHWM")
        cache_bytes = cache.bytes_per_example_view * n
    except OSError:
        return {}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"large_cache_mb": cache_bytes / 2**20, "large_cache_read_rss_growth_mb": (peak - before) / 1024,
            "large_cache_batch_mb": cache.bytes_per_example_view * batch / 2**20}


def measure(variants, repeats):
    for fn in variants.values():  # compile and warm up
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv):
    del argv
    examples, repeats = FLAGS.examples, FLAGS.repeats
    if FLAGS.quick:
        examples, repeats = min(examples, 768), min(repeats, 3)
    ds = dataset(examples, FLAGS.batch_size)
    variants = make_variants(ds)
    times = measure(variants, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {
        "kd_over_student": med["kdkeras_kd"] / med["student"],
        "teacher_over_student": med["teacher_inference"] / med["student"],
        "kd_over_keras_distillation": med["kdkeras_kd"] / med["keras_kd"],
        "kd_cached_over_student": med["kdkeras_kd_cached"] / med["student"],
        "kd_cached_over_keras_distillation": med["kdkeras_kd_cached"] / med["keras_kd"],
        "cache_build_over_teacher_epoch": med["cache_build"] / med["teacher_inference"],
    }
    memory = cached_epoch_memory()
    if FLAGS.large_cache_mb:
        memory.update(large_cache_memory(min(FLAGS.large_cache_mb, 512) if FLAGS.quick else FLAGS.large_cache_mb))
    print(f"\nteacher={FLAGS.teacher} student={FLAGS.student} "
          f"input={FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels} examples={examples} "
          f"batch={FLAGS.batch_size} repeats={repeats} (interleaved; median s/epoch)")
    print(f"{'variant':<20}{'median s':>10}{'min s':>10}{'max s':>10}")
    for name, values in times.items():
        print(f"{name:<20}{med[name]:>10.3f}{min(values):>10.3f}{max(values):>10.3f}")
    print()
    for key, value in {**ratios, **memory}.items():
        print(f"{key:<34}{value:.3f}")
    if FLAGS.json:
        training.write_json(FLAGS.json, {**ratios, **memory, "seconds": times, "median_seconds": med,
                                         "config": {"teacher": FLAGS.teacher, "student": FLAGS.student,
                                                    "examples": examples, "batch_size": FLAGS.batch_size,
                                                    "repeats": repeats,
                                                    "keras_loss": "keras.losses.KLDivergence()"}})


if __name__ == "__main__":
    app.run(main)

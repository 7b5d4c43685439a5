"""Run one Distiller step on one device and under MirroredStrategy over two
logical CPUs, on the same global batch; print the max differences as JSON.
With a second argument `cache`, both steps read the teacher's outputs from a
teacher cache (no teacher model), and the online one-device step is compared too;
with `dot`, two steps of `kdkeras.training.DOT` (its two momenta) instead of one of SGD.

With `--jobs JSON` (a list of [name, spec, mode], mode "", "cache", "dot" or
"bn_sync" for tests.bn_sync_check's check) it runs every job in this one process
and prints a `RESULT name {...}` line per job (one TensorFlow start-up for all).

Run as `python -m tests.dist_step_check` (a fresh process: logical devices must be set before TF starts).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
if tf.config.get_logical_device_configuration(cpu) is None:  # bn_sync_check may have set it
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kdkeras  # noqa: E402
from tests.helpers import tiny_cnn, tiny_data  # noqa: E402


def one_step(strategy, weights_t, weights_s, methods_spec, cache=None, dot=False):
    keras.utils.set_random_seed(1)  # connectors (VID's regressors) start alike in every run
    with strategy.scope():
        teacher = tiny_cnn(width=8, name="teacher", batchnorm=False)
        student = tiny_cnn(width=4, name="student", batchnorm=False)
        teacher.set_weights(weights_t)
        student.set_weights(weights_s)
        methods = [kdkeras.methods.get(name, **kw) for name, kw in methods_spec]
        d = kdkeras.Distiller(None if cache else teacher, student, methods, student_loss_weight=0.3,
                              teacher_cache=cache)
        opt = kdkeras.training.DOT(0.5, weight_decay=0.01) if dot else keras.optimizers.SGD(0.5)
        d.compile(optimizer=opt)
    ds = indexed_data()
    if cache is not None:
        ds = ds.map(lambda x, y: (cache.attach(x, tf.constant(0, tf.int64)), y))
    hist = d.fit(ds, epochs=2 if dot else 1, verbose=0)
    return hist.history, [w.numpy() for w in d.student.weights]


def indexed_data():
    x, y = tiny_data(16)
    return tf.data.Dataset.from_tensor_slices(({"image": x, "index": np.arange(16)}, y)).batch(16)


def build_cache(weights_t, methods_spec):
    import tempfile

    from kdkeras.cache import build_teacher_cache, teacher_taps

    teacher = tiny_cnn(width=8, name="teacher", batchnorm=False)
    teacher.set_weights(weights_t)
    methods = [kdkeras.methods.get(name, **kw) for name, kw in methods_spec]
    taps, per_method = teacher_taps(teacher, methods)
    return build_teacher_cache(os.path.join(tempfile.mkdtemp(), "cache"), teacher, lambda v: indexed_data(),
                               num_examples=16, taps=taps, method_taps=per_method, verbose=False)


_MIRRORED = []


def mirrored_strategy():
    """The process's one MirroredStrategy over the two logical CPUs: a second one would number
    its collectives from the start again, and clash with those the first left (other dtypes)."""
    if not _MIRRORED:
        _MIRRORED.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    return _MIRRORED[0]


def check(spec, mode=""):
    """One step on one device and under MirroredStrategy (see the module docstring); the differences."""
    keras.utils.set_random_seed(0)
    wt = tiny_cnn(width=8, name="t0", batchnorm=False).get_weights()
    ws = tiny_cnn(width=4, name="s0", batchnorm=False).get_weights()
    cache = build_cache(wt, spec) if mode == "cache" else None
    dot = mode == "dot"
    online, w0 = one_step(tf.distribute.get_strategy(), wt, ws, spec, dot=dot)
    single, w1 = one_step(tf.distribute.get_strategy(), wt, ws, spec, cache, dot=dot)
    mirrored = mirrored_strategy()
    multi, w2 = one_step(mirrored, wt, ws, spec, cache, dot=dot)
    return {
        "replicas": mirrored.num_replicas_in_sync,
        "single_loss": single["loss"][-1],
        "mirrored_loss": multi["loss"][-1],
        "max_weight_diff": float(max(np.abs(a - b).max() for a, b in zip(w1, w2))),
        "max_weight_change": float(max(np.abs(a - b).max() for a, b in zip(w1, ws))),
        "terms": {k: [single[k][-1], multi[k][-1]] for k in single},
        "online_loss": online["loss"][-1],
        "max_weight_diff_online": float(max(np.abs(a - b).max() for a, b in zip(w0, w2))),
    }


def run_jobs(jobs):
    """Each [name, spec, mode] job's result (or its error, so one failing job leaves the others' results)."""
    import traceback

    for name, spec, mode in jobs:
        try:
            if mode == "bn_sync":
                from tests import bn_sync_check

                out = bn_sync_check.check(mirrored_strategy())
            else:
                out = check(spec, mode)
        except Exception:  # noqa: BLE001 - reported to the test that reads this job
            out = {"error": traceback.format_exc()}
        print(f"RESULT {name} " + json.dumps(out), flush=True)


def main():
    if sys.argv[1:2] == ["--jobs"]:
        run_jobs(json.loads(sys.argv[2]))
        return
    spec = json.loads(sys.argv[1]) if len(sys.argv) > 1 else [["kd", {"temperature": 4.0, "weight": 0.7}]]
    print("RESULT " + json.dumps(check(spec, sys.argv[2] if len(sys.argv) > 2 else "")))


if __name__ == "__main__":
    main()

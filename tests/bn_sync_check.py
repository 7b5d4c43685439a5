"""FitNet (a regressor with BatchNorm) on a student with BatchNorm: one training
step on one device and under MirroredStrategy over two logical CPUs, on the same
global batch and the same initial weights, with per-replica BatchNorm statistics
(Keras' default) and synchronised ones (`kdkeras.training.sync_batchnorm`), as
`compile_and_fit` does under several replicas.
Prints the max differences as JSON.

Run as `python -m tests.bn_sync_check` (a fresh process: logical devices must be set before TF starts).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
if tf.config.get_logical_device_configuration(cpu) is None:  # dist_step_check may have set it
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kdkeras  # noqa: E402
from kdkeras import training  # noqa: E402
from tests.helpers import tiny_cnn, tiny_data  # noqa: E402


def one_step(strategy, sync):
    """Two SGD steps (the second on weights the first's BatchNorm gradients moved),
    every part seeded alike whatever the strategy; the history and all weights
    (moving statistics and the regressor's included)."""
    with strategy.scope():
        keras.utils.set_random_seed(1)
        teacher = tiny_cnn(width=8, name="teacher", batchnorm=True)
        student = tiny_cnn(width=4, name="student", batchnorm=True)
        fitnet = kdkeras.methods.get("fitnet", teacher_layers=["relu1"], student_layers=["relu1"], weight=1.0)
        d = kdkeras.Distiller(teacher, student, [fitnet], student_loss_weight=0.5)
        if sync:  # the teacher's, the student's and the regressor's BatchNorm
            assert len(training.sync_batchnorm(d)) == 3
        d.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = tiny_data(32)
    hist = d.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=1, verbose=0, shuffle=False)
    return hist.history, [w.numpy() for w in d.weights]


def check(mirrored=None):
    """Per-replica and synchronised BatchNorm runs against one device's (see the module docstring),
    under `mirrored` (default: a new MirroredStrategy over the two logical CPUs)."""
    mirrored = mirrored or tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": mirrored.num_replicas_in_sync}
    single, w1 = one_step(tf.distribute.get_strategy(), sync=False)  # one device: nothing to sync
    for sync in (False, True):
        multi, w2 = one_step(mirrored, sync)
        key = "sync" if sync else "per_replica"
        out[key] = {
            "loss": [single["loss"][0], multi["loss"][0]],
            "fitnet": [single["fitnet"][0], multi["fitnet"][0]],
            "max_weight_diff": float(max(np.abs(a - b).max() for a, b in zip(w1, w2))),
            "max_weight": float(max(np.abs(a).max() for a in w1)),
        }
    return out


def main():
    print("RESULT " + json.dumps(check()))


if __name__ == "__main__":
    main()

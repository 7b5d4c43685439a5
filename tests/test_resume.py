"""Exact resume in one process (issue 13, C): a run resumed from its backup ends
where an uninterrupted one does, reports the whole run's history, keeps a
finished distillation when the baseline crashes, and never loads half a backup."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdkeras import experiment, training
from tests.helpers import TINY, needs_fashion_mnist, run_recipe, tiny_cnn, tiny_data

#: the recipe tests' tiny data halved: 64 training images (CI time; each test runs 2-4 recipes)
SMALL = [f for f in TINY if not f.startswith(("--train_limit", "--test_limit"))] + ["--train_limit=64",
                                                                                    "--test_limit=32"]
#: two epochs of two steps of the teacher-free LSR recipe (no teacher to train)
TWO_EPOCHS = ["--teacher=none", "--method=lsr", *[f for f in SMALL if not f.startswith(("--epochs", "--batch"))],
              "--epochs=2", "--batch_size=32"]


class Crash(keras.callbacks.Callback):
    """Raise when epoch `at` begins (after the backup of the epoch before)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt(f"simulated crash at epoch {epoch}")


def _weights(path):
    return training.load_model(str(path)).get_weights()


def _metrics(path):
    return json.loads((path / "metrics.json").read_text())


@pytest.mark.e2e
@needs_fashion_mnist
def test_a_resumed_run_equals_an_uninterrupted_one_and_reports_every_epoch(tmp_path, monkeypatch):
    run_recipe("distill", *TWO_EPOCHS, f"--output_dir={tmp_path / 'a'}")
    run_recipe("distill", *TWO_EPOCHS, f"--output_dir={tmp_path / 'again'}")
    callbacks_for = training.callbacks_for
    with monkeypatch.context() as patch:
        patch.setattr(training.fitting, "callbacks_for", lambda *a, **k: callbacks_for(*a, **k) + [Crash(1)])
        with pytest.raises(KeyboardInterrupt):
            run_recipe("distill", *TWO_EPOCHS, f"--output_dir={tmp_path / 'b'}")
    assert (tmp_path / "b" / "backup").exists() and not (tmp_path / "b" / "metrics.json").exists()
    run_recipe("distill", *TWO_EPOCHS, f"--output_dir={tmp_path / 'b'}")  # a fresh start resumes epoch 2
    a, again, b = (_weights(tmp_path / d / "student.keras") for d in ("a", "again", "b"))
    for wa, wagain, wb in zip(a, again, b):
        np.testing.assert_array_equal(wa, wagain)  # CPU: same command and seed, same student
        np.testing.assert_allclose(wb, wa, rtol=1e-5, atol=1e-7)
    ha, hb = _metrics(tmp_path / "a")["history"], _metrics(tmp_path / "b")["history"]
    assert len(hb["loss"]) == 2  # the epoch of the first process is kept
    for key in ("loss", "val_loss", "accuracy"):
        np.testing.assert_allclose(hb[key], ha[key], rtol=1e-5)
    assert not (tmp_path / "b" / "backup").exists()


@pytest.mark.e2e
@needs_fashion_mnist
def test_a_crash_in_the_baseline_keeps_the_finished_distillation(tmp_path, monkeypatch):
    args = ["--teacher=none", "--method=lsr", "--baseline", f"--output_dir={tmp_path}", *SMALL]
    fit = experiment.fit

    def crash_in_baseline(*a, tag="run", **k):
        if tag == "baseline":
            raise KeyboardInterrupt("simulated crash in the baseline")
        return fit(*a, tag=tag, **k)

    with monkeypatch.context() as patch:
        patch.setattr(experiment.run, "fit", crash_in_baseline)
        with pytest.raises(KeyboardInterrupt):
            run_recipe("distill", *args)
    done = json.loads((tmp_path / "distill_done.json").read_text())
    first = _weights(tmp_path / "student.keras")
    with monkeypatch.context() as patch:
        patch.setattr(experiment.run, "distill", lambda *a, **k: pytest.fail("the distillation ran again"))
        run = run_recipe("distill", *args)
    assert run.metrics["student_top1"] == done["top1"] and "baseline_top1" in run.metrics
    for w0, w1 in zip(first, run.student.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    assert not (tmp_path / "distill_done.json").exists()  # finished: a rerun trains again


def _fit_with_backup(model, backup, epochs, callbacks=()):
    x, y = tiny_data(16)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    return model.fit(data, epochs=epochs, verbose=0,
                     callbacks=[training.SafeBackupAndRestore(backup), *callbacks])


def _compiled(seed=0):
    keras.utils.set_random_seed(seed)
    model = tiny_cnn(batchnorm=False)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return model


def test_an_interrupted_backup_never_loads_as_valid(tmp_path, monkeypatch):
    backup = str(tmp_path / "backup")
    model = _compiled()
    with pytest.raises(KeyboardInterrupt):
        _fit_with_backup(model, backup, 3, [Crash(1)])
    saved = [w.copy() for w in model.get_weights()]  # the state after epoch 1, backed up
    # the next backup is interrupted after its weights, before it is swapped in
    callback = training.SafeBackupAndRestore(backup)
    callback.set_model(model)
    callback._current_epoch = 2
    model.set_weights([w + 1.0 for w in saved])
    renames = []

    def failing_rename(src, dst):
        renames.append((src, dst))
        if src.endswith(".partial"):
            raise KeyboardInterrupt("simulated crash between the renames")
        os.replace(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(KeyboardInterrupt):
        callback._save_model()
    monkeypatch.undo()
    assert not os.path.exists(backup) and os.path.exists(backup + ".old")
    fresh = _compiled(seed=1)
    restore = training.SafeBackupAndRestore(backup)
    restore.set_model(fresh)
    restore.on_train_begin()
    assert fresh._initial_epoch == 1  # the complete backup of epoch 1, not the half-written one
    for w0, w1 in zip(saved, fresh.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    assert not os.path.exists(backup + ".partial") and not os.path.exists(backup + ".old")

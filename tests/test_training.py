"""Unit tests of kdkeras/training/: schedules, optimisers, strategies,
dataset helpers, evaluation, JSON output, model loading, seeding and fitting."""

import json
import os
import random

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdkeras import training


def _lr(schedule, step):
    return float(schedule(step))


# ---------------------------------------------------------------- make_schedule

def test_cosine_schedule_starts_at_lr_and_reaches_zero():
    lr, total = 0.1, 40
    schedule = training.make_schedule(lr, "cosine", total)
    assert _lr(schedule, 0) == pytest.approx(lr, rel=1e-6)
    assert _lr(schedule, total // 2) == pytest.approx(lr / 2, rel=1e-5)
    assert _lr(schedule, 10) == pytest.approx(lr * 0.5 * (1 + np.cos(np.pi * 10 / total)), rel=1e-5)
    assert _lr(schedule, total) == pytest.approx(0.0, abs=1e-8)
    assert _lr(schedule, total + 5) == pytest.approx(0.0, abs=1e-8)


def test_step_schedule_drops_tenfold_at_each_milestone():
    lr, total = 0.05, 80  # boundaries 62.5/75/87.5% of 80 steps: 50, 60, 70
    schedule = training.make_schedule(lr, "step", total)
    for boundary, before in ((50, lr), (60, lr * 0.1), (70, lr * 0.01)):
        assert _lr(schedule, boundary - 1) == pytest.approx(before, rel=1e-6), boundary
        assert _lr(schedule, boundary + 1) == pytest.approx(before * 0.1, rel=1e-6), boundary
    assert _lr(schedule, 0) == pytest.approx(lr, rel=1e-6)
    assert _lr(schedule, total) == pytest.approx(lr * 1e-3, rel=1e-6)


def test_step_schedule_custom_milestones():
    schedule = training.make_schedule(1.0, "step", 10, milestones=(0.5,))
    assert [_lr(schedule, s) for s in (4, 6, 10)] == pytest.approx([1.0, 0.1, 0.1], rel=1e-6)


def test_constant_schedule_is_the_rate():
    assert training.make_schedule(0.3, "constant", 100) == 0.3


def test_unknown_schedule_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match="'linear'") as err:
        training.make_schedule(0.1, "linear", 10)
    for name in ("cosine", "step", "constant"):
        assert name in str(err.value)


# --------------------------------------------------------------- make_optimizer

@pytest.mark.parametrize("name, cls", [("sgd", keras.optimizers.SGD), ("adam", keras.optimizers.Adam),
                                       ("adamw", keras.optimizers.AdamW)])
def test_make_optimizer_class_rate_and_weight_decay(name, cls):
    lr, wd = 0.1, 0.01
    opt = training.make_optimizer(name, lr, total_steps=10, schedule="constant", momentum=0.8,
                                  weight_decay=wd)
    assert type(opt) is cls
    assert opt.weight_decay == pytest.approx(wd)
    assert float(opt.learning_rate) == pytest.approx(lr)
    if name == "sgd":
        assert opt.momentum == pytest.approx(0.8) and opt.nesterov is False
    # a zero gradient leaves only the decoupled decay: w <- w * (1 - lr * wd)
    var = keras.Variable(np.full((3,), 2.0, "float32"))
    opt.apply_gradients([(keras.ops.zeros((3,)), var)])
    np.testing.assert_allclose(var.numpy(), 2.0 * (1 - lr * wd), rtol=1e-6)


def test_make_optimizer_defaults_sgd_momentum_and_schedule():
    opt = training.make_optimizer("sgd", 0.05, total_steps=20)
    assert opt.momentum == pytest.approx(0.9)
    assert opt.weight_decay == pytest.approx(5e-4)
    assert float(opt.learning_rate) == pytest.approx(0.05, rel=1e-6)  # cosine at step 0


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_make_optimizer_zero_weight_decay_means_none(name):
    assert training.make_optimizer(name, 0.1, weight_decay=0.0).weight_decay is None


def test_unknown_optimizer_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match="'rmsprop'") as err:
        training.make_optimizer("rmsprop")
    for name in ("sgd", "adam", "adamw"):
        assert name in str(err.value)


# ------------------------------------------------------------------ get_strategy

def test_default_strategy_is_tensorflows_default():
    strategy = training.get_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


def test_unknown_strategy_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match="'tpu'") as err:
        training.get_strategy("tpu")
    for name in ("default", "mirrored", "multiworker"):
        assert name in str(err.value)


# ---------------------------------------------------------------------- steps_in

def test_steps_in_known_cardinality():
    assert training.steps_in(tf.data.Dataset.range(10).batch(3)) == 4


def test_steps_in_counts_unknown_cardinality():
    ds = tf.data.Dataset.range(10).filter(lambda v: v % 2 == 0).batch(2)
    assert int(ds.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    assert training.steps_in(ds) == 3  # 5 even numbers in batches of 2


# -------------------------------------------------- predict_logits / evaluate_top1

def _linear_model_and_data(n=12, features=4, classes=3):
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(features, classes)).astype("float32")
    bias = rng.normal(size=(classes,)).astype("float32")
    inp = keras.Input((features,))
    model = keras.Model(inp, keras.layers.Dense(classes)(inp))
    model.layers[-1].set_weights([weights, bias])
    x = rng.normal(size=(n, features)).astype("float32")
    expected = x @ weights + bias
    # the first 7 labels agree with the argmax, the other 5 do not
    y = expected.argmax(-1)
    y[7:] = (y[7:] + 1) % classes
    return model, x, y.astype("int32"), expected


def test_predict_logits_and_top1_match_numpy():
    model, x, y, expected = _linear_model_and_data()
    ds = tf.data.Dataset.from_tensor_slices((x, y[:, None])).batch(5)  # (n, 1) labels, last batch short
    logits, labels = training.predict_logits(model, ds)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, y)
    assert training.evaluate_top1(model, ds) == pytest.approx(7 / 12)


def test_predict_logits_reads_the_image_of_dict_inputs():
    model, x, y, expected = _linear_model_and_data()
    index = np.arange(len(x), dtype="int64")
    ds = tf.data.Dataset.from_tensor_slices(({"image": x, "index": index}, y)).batch(4)
    logits, labels = training.predict_logits(model, ds)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, y)


# -------------------------------------------------------------------- write_json

def test_write_json_converts_numpy_values(tmp_path):
    path = tmp_path / "nested" / "dir" / "out.json"
    payload = {"f": np.float32(1.5), "i": np.int64(7), "a": np.arange(3), "m": np.eye(2),
               "nested": {"x": [np.float64(0.25)]}, "s": "text"}
    assert training.write_json(str(path), payload) == str(path)
    assert json.loads(path.read_text()) == {"f": 1.5, "i": 7, "a": [0, 1, 2], "m": [[1.0, 0.0], [0.0, 1.0]],
                                            "nested": {"x": [0.25]}, "s": "text"}


def test_write_json_rejects_other_objects(tmp_path):
    with pytest.raises(TypeError, match="object"):
        training.write_json(str(tmp_path / "bad.json"), {"x": object()})


# -------------------------------------------------------------------- load_model

def test_load_model_missing_path_names_it(tmp_path):
    missing = str(tmp_path / "nowhere" / "model.keras")
    with pytest.raises(FileNotFoundError) as err:
        training.load_model(missing)
    assert missing in str(err.value)


def test_load_model_round_trip(tmp_path):
    model, x, _, expected = _linear_model_and_data()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = training.load_model(path)
    np.testing.assert_allclose(loaded.predict_on_batch(x), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ seeded

def _draws():
    return (random.random(), np.random.rand(), float(keras.random.uniform(())),
            float(tf.random.uniform(())))


def test_seeded_runs_draw_alike():
    training.seeded(3)
    first = _draws()
    training.seeded(3)
    assert _draws() == first
    training.seeded(4)
    assert all(a != b for a, b in zip(_draws(), first))


def test_seeded_none_leaves_the_state():
    training.seeded(3)
    first = _draws()
    training.seeded(None)
    assert all(a != b for a, b in zip(_draws(), first))


# --------------------------------------------------------------- compile_and_fit

def _learnable_data(n=64, features=4, classes=3, batch=16):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x @ rng.normal(size=(features, classes))).argmax(-1).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _dense(features=4, classes=3):
    inp = keras.Input((features,))
    return keras.Model(inp, keras.layers.Dense(classes)(inp))


def test_compile_and_fit_one_epoch(tmp_path):
    ds = _learnable_data()
    config = training.TrainConfig(epochs=1, lr=0.1, verbose=0)
    history, _ = training.compile_and_fit(_dense(), ds, ds, config, output_dir=str(tmp_path))
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 1 for v in history.values())
    # BackupAndRestore's folder is gone once the run has finished
    assert not os.path.exists(tmp_path / "backup")


def test_compile_and_fit_backs_up_each_epoch_unless_told_not_to(tmp_path):
    ds = _learnable_data()

    class Seen(keras.callbacks.Callback):  # what the backup folder holds after each epoch
        def __init__(self):
            super().__init__()
            self.found = []

        def on_epoch_end(self, epoch, logs=None):
            self.found.append(sorted(os.listdir(tmp_path / "backup")) if (tmp_path / "backup").exists() else [])

    for backup in (True, False):
        seen = Seen()
        config = training.TrainConfig(epochs=1, lr=0.1, verbose=0, backup=backup)
        training.compile_and_fit(_dense(), ds, ds, config, output_dir=str(tmp_path), tag="t", callbacks=[seen])
        assert seen.found == ([["t", "t.history.json"]] if backup else [[]]), backup


def test_compile_and_fit_learns_and_decays_to_zero():
    ds = _learnable_data()  # 4 batches per epoch
    config = training.TrainConfig(epochs=3, lr=0.1, schedule="cosine", weight_decay=0.0, verbose=0)
    model = _dense()
    history, _ = training.compile_and_fit(model, ds, ds, config)
    loss = history["loss"]
    assert len(loss) == 3
    assert loss[0] > loss[1] > loss[2], loss
    # the cosine schedule spans every step of every epoch: it ends at zero
    assert int(model.optimizer.iterations) == 12
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-7)


def test_callbacks_for(tmp_path):
    assert training.callbacks_for(None, tensorboard=True) == []
    cbs = training.callbacks_for(str(tmp_path), tensorboard=True, tag="t")
    assert [type(c) for c in cbs] == [training.SafeBackupAndRestore, keras.callbacks.TensorBoard]
    assert training.callbacks_for(str(tmp_path), backup=False) == []

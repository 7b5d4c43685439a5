"""The Distiller: frozen teacher, single pass per network, logs, save/load, errors."""

import keras
import tensorflow as tf
import numpy as np
import pytest

import kdkeras
from kdkeras.methods import KD, Method, register_method
from tests.helpers import CallCounter, counted_cnn, tiny_cnn, tiny_data


@register_method("test_feature_l2")
class FeatureL2(Method):
    """A test-only feature method: mean squared difference of two equal taps."""

    def compute_loss(self, teacher, student, y, context=None):
        t = teacher[self.teacher_layers[0]]
        s = student[self.student_layers[0]]
        return keras.ops.mean((t - s) ** 2)


def make(methods=None, student_loss_weight=0.1, teacher_bn=True):
    teacher = tiny_cnn(width=8, name="teacher", batchnorm=teacher_bn)
    student = tiny_cnn(width=4, name="student")
    methods = methods if methods is not None else [KD(temperature=4.0, weight=0.9)]
    return kdkeras.Distiller(teacher, student, methods, student_loss_weight=student_loss_weight)


def test_teacher_frozen_bit_identical_and_student_learns():
    d = make()
    d.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    x, y = tiny_data()
    teacher_before = [w.numpy().copy() for w in d.teacher.weights]
    student_before = [w.numpy().copy() for w in d.student.trainable_weights]
    assert any("moving" in w.path for w in d.teacher.weights)  # BN stats are covered
    d.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for before, w in zip(teacher_before, d.teacher.weights):
        np.testing.assert_array_equal(before, w.numpy(), err_msg=w.path)
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(student_before, d.student.trainable_weights)]
    assert all(changed)


def test_gradients_reach_student_never_teacher():
    d = make()
    teacher_ids = {id(v) for v in d.teacher.weights}
    trainable = d.trainable_variables
    assert not teacher_ids & {id(v) for v in trainable}
    assert {id(v) for v in d.student.trainable_variables} <= {id(v) for v in trainable}


def test_total_loss_is_weighted_sum_and_terms_logged():
    d = make()
    d.compile(optimizer="sgd", metrics=["accuracy"])
    x, y = tiny_data()
    logs = d.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    assert {"loss", "kd", "student_loss", "accuracy", "agreement"} <= set(logs)
    np.testing.assert_allclose(logs["loss"], 0.1 * logs["student_loss"] + 0.9 * logs["kd"], rtol=1e-5)
    zt, zs = d.teacher(x, training=False).numpy(), d.student(x, training=False).numpy()
    np.testing.assert_allclose(logs["agreement"], np.mean(zt.argmax(-1) == zs.argmax(-1)), atol=1e-6)
    from tests.test_methods_logits import np_kd

    np.testing.assert_allclose(logs["kd"], np_kd(zt.astype("float64"), zs.astype("float64"), 4.0), rtol=1e-3)


def test_a_teacher_free_method_trains_without_running_the_given_teacher():
    from kdkeras.methods import LSR

    teacher, student = counted_cnn("teacher", width=4), counted_cnn("student")
    d = kdkeras.Distiller(teacher, student, [LSR()])
    d.compile(optimizer="sgd", run_eagerly=True)
    x, y = tiny_data(8)
    CallCounter.counts.clear()
    logs = d.train_on_batch(x, y, return_dict=True)
    assert CallCounter.counts == {"student_counter": 1} and "agreement" not in logs
    # evaluation still runs it, for the agreement metric
    CallCounter.counts.clear()
    assert "agreement" in d.evaluate(x, y, return_dict=True, verbose=0)
    assert CallCounter.counts == {"teacher_counter": 1, "student_counter": 1}


def test_each_network_runs_once_per_step_with_several_methods():
    teacher, student = counted_cnn("teacher", width=4), counted_cnn("student")
    methods = [
        KD(temperature=4.0),
        KD(temperature=2.0),
        FeatureL2(teacher_layers=["embedding"], student_layers=["embedding"], name="f1"),
        FeatureL2(teacher_layers=["relu1"], student_layers=["relu1"], name="f2"),
    ]
    d = kdkeras.Distiller(teacher, student, methods, student_loss_weight=0.1)
    d.compile(optimizer="sgd", run_eagerly=True)
    x, y = tiny_data(8)
    CallCounter.counts.clear()
    d.train_on_batch(x, y)
    assert CallCounter.counts == {"teacher_counter": 1, "student_counter": 1}
    # two methods named kd log as kd and kd_2; the methods keep their own names
    assert d.plan.terms == ("kd", "kd_2", "f1", "f2")
    assert [m.name for m in d.methods] == ["kd", "kd", "f1", "f2"]
    logs = d.evaluate(x, y, return_dict=True, verbose=0)
    assert logs["kd"] != logs["kd_2"]  # T=4 and T=2: each term logged under its own name


def test_save_load_round_trip(tmp_path):
    d = make(methods=[KD(temperature=3.0), FeatureL2(teacher_layers=["logits"], student_layers=["logits"])])
    d.compile(optimizer="adam", metrics=["accuracy"])
    x, y = tiny_data()
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    d.save(tmp_path / "d.keras")
    d.student.save(tmp_path / "s.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), d.predict(x, verbose=0), atol=1e-6)
    student = keras.models.load_model(tmp_path / "s.keras")
    np.testing.assert_allclose(student.predict(x, verbose=0), d.student.predict(x, verbose=0), atol=1e-6)
    assert [m.name for m in loaded.methods] == ["kd", "test_feature_l2"]
    assert loaded.methods[0].temperature == 3.0
    # the loaded distiller trains on, from the saved weights
    before = [w.numpy().copy() for w in loaded.student.trainable_weights]
    history = loaded.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and "test_feature_l2" in history
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, loaded.student.trainable_weights))


def test_dict_inputs_with_index_are_accepted():
    x, y = tiny_data(16)
    keras.utils.set_random_seed(4)
    plain, keyed = make(), make()
    keyed.set_weights(plain.get_weights())
    for d in (plain, keyed):
        d.compile(optimizer=keras.optimizers.SGD(0.1))
    before = [w.numpy().copy() for w in keyed.student.trainable_weights]
    h_plain = plain.fit(x, y, batch_size=8, shuffle=False, verbose=0).history
    h_keyed = keyed.fit({"image": x, "index": np.arange(16)}, y, batch_size=8, shuffle=False, verbose=0).history
    # the dict's images train exactly as the plain array does, and the index changes nothing
    np.testing.assert_allclose(h_keyed["loss"], h_plain["loss"], rtol=1e-6)
    for a, b, w0 in zip(plain.student.trainable_weights, keyed.student.trainable_weights, before):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
        assert not np.array_equal(w0, b.numpy())
    out = keyed.predict({"image": x, "index": np.arange(16)}, verbose=0)
    np.testing.assert_allclose(out, keyed.student(x, training=False).numpy(), atol=1e-6)


def test_unknown_layer_lists_closest_names():
    with pytest.raises(ValueError, match=r"'relu_1'.*relu1"):
        make(methods=[FeatureL2(teacher_layers=["relu_1"], student_layers=["relu1"])])


def test_mismatched_input_shapes_and_classes_fail_clearly():
    with pytest.raises(ValueError, match=r"input shape \(8, 8, 1\).*\(16, 16, 1\)"):
        kdkeras.Distiller(tiny_cnn(), tiny_cnn(input_shape=(16, 16, 1)), [KD()])
    with pytest.raises(ValueError, match="3 output classes.*5"):
        kdkeras.Distiller(tiny_cnn(), tiny_cnn(num_classes=5), [KD()])
    with pytest.raises(ValueError, match=r"\['kd'\] need a teacher"):
        kdkeras.Distiller(None, tiny_cnn(), [KD()])
    with pytest.raises(TypeError, match="Method"):
        kdkeras.Distiller(tiny_cnn(), tiny_cnn(), ["kd"])


def test_nested_model_layers_can_be_tapped():
    inner = tiny_cnn(width=8, name="backbone")
    inp = keras.Input((8, 8, 1))
    outer = keras.Model(inp, inner(inp), name="wrapper")
    tap = kdkeras.taps.build_tap_model(outer, ["relu1", "embedding"])
    x, _ = tiny_data(4)
    out = tap(x)
    np.testing.assert_allclose(out["logits"], outer(x), atol=1e-6)
    assert tuple(out["relu1"].shape) == (4, 8, 8, 8)
    student = tiny_cnn(width=8)
    d = kdkeras.Distiller(outer, student, [FeatureL2(teacher_layers=["relu1"], student_layers=["relu1"])])
    d.compile(optimizer="sgd")
    logs = d.evaluate(x, np.zeros(4, "int32"), return_dict=True, verbose=0)
    # the term reads the nested teacher's relu1 (shared weights), not a copy
    want = np.mean((out["relu1"].numpy() - d._student_tap(x)["relu1"].numpy()) ** 2)
    np.testing.assert_allclose(logs["test_feature_l2"], want, rtol=1e-5)
    before = [w.numpy().copy() for w in student.trainable_weights]
    d.fit(x, np.zeros(4, "int32"), verbose=0)
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, student.trainable_weights))


def test_mixed_float16_step_is_finite_and_terms_are_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        d = make(methods=[KD(temperature=4.0)])
        d.compile(optimizer=keras.optimizers.SGD(0.01))
        assert isinstance(d.optimizer, keras.optimizers.LossScaleOptimizer)
        x, y = tiny_data(16)
        logs = d.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        assert np.isfinite(logs["loss"][0]) and np.isfinite(logs["kd"][0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


class FeatureOnlyL2(FeatureL2):
    """FeatureL2 declaring that it never reads the teacher's logits."""

    uses_teacher_logits = False


def test_teacher_cut_after_last_tap_when_no_method_reads_its_logits():
    x, y = tiny_data()
    teacher, student = tiny_cnn(width=4, name="teacher"), tiny_cnn(width=4, name="student")
    method = FeatureOnlyL2(teacher_layers=["relu1"], student_layers=["relu1"], name="f")
    d = kdkeras.Distiller(teacher, student, [method])
    cut = {layer.name for layer in d._teacher_train_tap.layers}
    assert "relu1" in cut and not {"conv2", "embedding", "logits"} & cut
    full, part = d.teacher_outputs(x), d.teacher_outputs(x, tap_model=d._teacher_train_tap)
    assert "logits" in full and set(part) == {"relu1"}
    np.testing.assert_array_equal(full["relu1"].numpy(), part["relu1"].numpy())
    d.compile(optimizer=keras.optimizers.SGD(1e-2))
    history = d.fit(x, y, batch_size=8, epochs=1, validation_data=(x, y), verbose=0).history
    # Training ran the cut teacher (no logits, so no agreement); evaluation the whole one.
    assert "agreement" not in history and "val_agreement" in history and "f" in history
    # A method that reads the teacher's logits (the base default) keeps the whole teacher.
    kd = make([KD(), FeatureOnlyL2(teacher_layers=["relu1"], student_layers=["relu1"], name="f")])
    assert kd._teacher_train_tap is kd._teacher_tap
    legacy = make([FeatureL2(teacher_layers=["relu1"], student_layers=["relu1"], name="f")])
    assert legacy._teacher_train_tap is legacy._teacher_tap


def _nan_batch_data():
    x, y = tiny_data(32)
    x[12, 3, 3, 0] = np.nan  # batch 2 of 4 (batches of 8)
    return x, y


def test_a_nan_pixel_stops_the_distillers_own_fit_naming_epoch_batch_and_what_to_check():
    d = make()
    d.compile(optimizer=keras.optimizers.SGD(0.01))
    x, y = _nan_batch_data()
    before = [w.copy() for w in d.student.get_weights()]
    with pytest.raises(kdkeras.NonFiniteLossError, match=r"epoch 1, batch 2.*NaN/inf in the data.*learning rate"):
        d.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    after = d.student.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # put back, finite
    # one stop only, also when the caller gives one (as the recipes' fits do)
    with pytest.raises(kdkeras.NonFiniteLossError, match=r"epoch 1, batch 2"):
        d.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
              callbacks=[kdkeras.training.StopOnNonFiniteLoss()])


def test_the_stop_can_be_turned_off_and_is_saved_in_the_config(tmp_path):
    d = kdkeras.Distiller(tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student"),
                          [KD()], student_loss_weight=0.1, stop_on_nonfinite=False)
    assert make().get_config()["stop_on_nonfinite"] is True
    assert d.get_config()["stop_on_nonfinite"] is False
    d.compile(optimizer=keras.optimizers.SGD(0.01))
    x, y = _nan_batch_data()
    history = d.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False).history
    assert len(history["loss"]) == 2 and not np.isfinite(history["loss"][-1])  # trained on, as asked
    d.save(tmp_path / "d.keras")
    assert keras.models.load_model(tmp_path / "d.keras").stop_on_nonfinite is False


def test_all_finite_reads_dense_sparse_and_missing_gradients():
    from kdkeras.nonfinite import all_finite

    sparse = tf.IndexedSlices(tf.ones((2, 3)), tf.constant([0, 2]), tf.constant([4, 3]))
    finite = [tf.ones(3), None, sparse]
    assert bool(all_finite(finite)) and bool(all_finite([]))
    assert not bool(all_finite(finite + [tf.constant([1.0, np.nan])]))
    bad_rows = tf.IndexedSlices(tf.constant([[np.inf, 0.0, 0.0]]), tf.constant([1]), tf.constant([4, 3]))
    assert not bool(all_finite([tf.ones(3), bad_rows]))


def test_a_plain_model_fed_a_nan_pixel_is_stopped_and_put_back():
    """The recipes' student-alone fits: the stop holds whether the NaN shows in the loss or only in the weights."""
    model = tiny_cnn(width=4, name="alone")
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _nan_batch_data()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(kdkeras.NonFiniteLossError, match=r"epoch 1.*NaN/inf in the data"):
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
                  callbacks=[kdkeras.training.StopOnNonFiniteLoss()])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

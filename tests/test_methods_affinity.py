"""Affinity methods (ICKD, Affinity, KTA): NumPy references of torchdistill's
formulas, gradient flow, KTA's paraphraser stage, save/load."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras
from kdkeras.methods import KD
from kdkeras.methods.affinity import ICKD, KTA, Affinity, KTAParaphraser, affinity_distance
from kdkeras.stages import default_stages, run_stages
from tests import test_cache as cache_helpers
from tests.helpers import CallCounter, StageSpy, all_changed, image_folder, same, tiny_cnn, tiny_data
from tests.test_methods_hints import (
    built, check_gradients, counted_student, deep_cnn, f64, features, loss_of, np_bn, np_conv_layer,
    np_lrelu, np_match, np_normalize, randomize_bn,
)

T_SHAPES, S_SHAPES = {"t": (4, 4, 6)}, {"s": (8, 8, 4)}

# -- NumPy references (float64), written as torchdistill computes them (NCHW there) ------------


def np_chsim(f_s, f_t):
    """ChSimLoss.batch_loss: row-normalised (C, C) Gram matrices, sum of squares / (C B^2)."""
    def gram(f):
        b, c = f.shape[0], f.shape[-1]
        x = f.transpose(0, 3, 1, 2).reshape(b, c, -1)  # (B, C, HW)
        return np_normalize(x @ x.transpose(0, 2, 1), axis=2)

    b, c = f_s.shape[0], f_s.shape[-1]
    return ((gram(f_s) - gram(f_t)) ** 2).sum() / (c * b * b)


def np_affinity(f_s, f_t):
    """AffinityLoss: per channel, the Frobenius norm of the difference of the
    (HW x HW) outer products of the L2-normalised spatial vectors, over HW;
    summed over channels, mean over the batch."""
    b, h, w, c = f_s.shape
    s = f_s.transpose(0, 3, 1, 2).reshape(b, c, h * w)
    t = f_t.transpose(0, 3, 1, 2).reshape(b, c, h * w)
    s = s / np.linalg.norm(s, axis=2, keepdims=True)
    t = t / np.linalg.norm(t, axis=2, keepdims=True)
    total = np.zeros(b)
    for i in range(c):
        diff = (s[:, i, :, None] * s[:, i, None, :] - t[:, i, :, None] * t[:, i, None, :]) / (h * w)
        total += np.sqrt((diff**2).sum(axis=(1, 2)))
    return total.mean()


def np_kta(f_s, f_t):
    """KTALoss with p=1, q=2: L1 mean between the L2-normalised flattened maps."""
    a, b = f_s.reshape(len(f_s), -1), f_t.reshape(len(f_t), -1)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.abs(a - b).mean()


def np_adapter(x, adapter):
    x = np_conv_layer(x, adapter.conv)
    if adapter.bn is not None:
        x = np_bn(x, adapter.bn)
    return np.maximum(x, 0.0) if adapter.activation == "relu" else x


def np_stack(x, layers):
    """A paraphraser's encoder or decoder: 3x3 conv, BN (moving statistics), LeakyReLU 0.1."""
    for layer in layers:
        if isinstance(layer, keras.layers.Conv2D):
            x = np_conv_layer(x, layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            x = np_bn(x, layer)
        else:
            x = np_lrelu(x)
    return x


def np_connector(x, c):
    return np_bn(x @ np.asarray(c.conv.kernel, "float64")[0, 0], c.bn)


# -- loss == NumPy ----------------------------------------------------------------------------


def test_ickd_matches_numpy():
    t, s = features(T_SHAPES, 1), features(S_SHAPES, 2)
    m = built(ICKD(), T_SHAPES, S_SHAPES)
    e = m.embeds[0]
    randomize_bn(e)
    assert e.channels == 6 and not e.conv.use_bias
    want = np_chsim(np_connector(s["s"].astype("float64"), e), t["t"].astype("float64"))
    np.testing.assert_allclose(loss_of(m, t, s), want, rtol=1e-5)


def test_affinity_distance_matches_the_outer_products_and_is_finite_on_dead_channels():
    rng = np.random.default_rng(3)
    s, t = rng.normal(0, 1, (3, 4, 4, 5)), rng.normal(0, 1, (3, 4, 4, 5))
    got = affinity_distance(s.astype("float32"), t.astype("float32"))
    np.testing.assert_allclose(float(np.mean(got)), np_affinity(s, t), rtol=1e-5)
    np.testing.assert_allclose(float(np.mean(affinity_distance(t.astype("float32"), t.astype("float32")))),
                               0.0, atol=1e-5)
    # an all-zero (dead ReLU) channel: its outer product is 0, so it contributes 1/HW
    dead = s.copy()
    dead[..., 0] = 0.0
    x = tf.Variable(dead.astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(affinity_distance(x, t.astype("float32")))
    grad = tape.gradient(loss, x)
    keep = np_affinity(s[..., 1:], t[..., 1:]) + 1.0 / 16
    np.testing.assert_allclose(float(loss), keep, rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_affinity_matches_numpy():
    t, s = features(T_SHAPES, 4), features(S_SHAPES, 5)
    m = built(Affinity(), T_SHAPES, S_SHAPES)
    a = m.adapters[0]
    assert a.channels == 6 and a.conv.use_bias and a.bn is None and a.conv.kernel.shape[:2] == (3, 3)
    tn, sn = f64(t)["t"], np_adapter(f64(s)["s"], a)
    tn, sn = np_match(tn, sn)
    np.testing.assert_allclose(loss_of(m, t, s), np_affinity(sn, tn), rtol=1e-5)


def test_kta_matches_numpy_and_logs_both_parts():
    t, s = features(T_SHAPES, 6, positive=True), features(S_SHAPES, 7)
    m = built(KTA(), T_SHAPES, S_SHAPES)
    p, f, a = m.paraphrasers[0], m.feature_adapters[0], m.affinity_adapters[0]
    for layer in (p, f):
        randomize_bn(layer)
    assert p.use_bn and p.encoder[-3].filters == 3 and f.channels == a.channels == 3  # factor rate 0.5
    z = np_stack(f64(t)["t"], p.encoder)
    fs, z1 = np_match(np_adapter(f64(s)["s"], f), z)
    as_, z2 = np_match(np_adapter(f64(s)["s"], a), z)
    out = m.compute_loss(t, s, None)
    np.testing.assert_allclose(float(out["adapt"]), 50.0 * np_kta(fs, z1), rtol=1e-5)
    np.testing.assert_allclose(float(out["affinity"]), np_affinity(as_, z2), rtol=1e-5)
    assert KTA.log_keys == ("adapt", "affinity")

    # the init stage's term: reconstruction MSE + 1e-7 * the L1 norm of the factor (summed)
    rec = np_stack(z, p.decoder)
    want = np.mean((rec - f64(t)["t"]) ** 2) + 1e-7 * np.abs(z).sum()
    para = m.paraphraser_term
    assert para.paraphrasers[0] is p and para.weight == 1.0 and para.name == m.name
    np.testing.assert_allclose(loss_of(para, t, s), want, rtol=1e-5)


def test_defaults_names_configs_and_bad_arguments():
    expected = {"ickd": (ICKD, 500.0), "affinity": (Affinity, 1.0), "kta": (KTA, 1.0)}
    for name, (cls, weight) in expected.items():
        m = kdkeras.methods.get(name)
        assert type(m) is cls and m.weight == weight and m.default_student_loss_weight == 1.0
    kta = KTA()
    assert (kta.adapt_weight, kta.affinity_weight, kta.factor_rate, kta.regularization) == (50.0, 1.0, 0.5, 1e-7)
    clone = KTA.from_config(KTA(adapt_weight=10.0, factor_rate=0.25).get_config())
    assert (clone.adapt_weight, clone.factor_rate, clone.affinity_weight) == (10.0, 0.25, 1.0)
    assert KTAParaphraser.from_config(KTAParaphraser(regularization=0.0).get_config()).regularization == 0.0
    for bad in ({"factor_rate": 0.0}, {"adapt_weight": -1.0}, {"affinity_weight": float("nan")}):
        with pytest.raises(ValueError, match=repr(list(bad.values())[0])):
            KTA(**bad)
    with pytest.raises(ValueError, match="4-D"):
        built(ICKD(), {"t": (6,)}, {"s": (4,)})


# -- in a Distiller ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ickd", "affinity", "kta"])
def test_gradients_reach_student_and_parts_never_teacher(name):
    method = kdkeras.methods.get(name)
    d = kdkeras.Distiller(deep_cnn(), tiny_cnn(width=4, name="student"), [method])
    trainable_ids = {id(v) for v in d.trainable_variables}
    assert not {id(v) for v in d.teacher.weights} & trainable_ids
    assert method.trainable_weights and {id(v) for v in method.trainable_weights} <= trainable_ids
    if name == "kta":  # the paraphraser is read frozen in the main stage
        assert not {id(v) for v in method.paraphrasers[0].weights} & trainable_ids
    check_gradients(method, d)


def test_kta_paraphraser_trains_in_its_stage_then_stays_fixed_while_the_adapters_train(tmp_path):
    teacher, student = tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student")
    kta = KTA(teacher_layers=["relu2"], student_layers=["relu2"])
    [stage] = kta.init_stages()
    assert stage.name == "kta_paraphraser" and stage.methods == (kta.paraphraser_term,)
    assert not stage.train_student and stage.student_loss_weight == 0.0 and kta.in_main_stage
    x, y = tiny_data(16)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    def weights(layers):
        return [np.array(w) for layer in layers for w in layer.trainable_weights]

    spy = StageSpy(lambda: (weights([kta.paraphraser_term]), weights(kta.feature_adapters + kta.affinity_adapters),
                            weights([student])))
    seen = spy.seen
    stages = default_stages([kta], init_epochs=1, epochs=1, student_loss_weight=1.0)
    hist = run_stages(teacher, student, stages, ds, optimizer_fn=lambda s: keras.optimizers.Adam(1e-2),
                      output_dir=str(tmp_path), callbacks=[spy], verbose=0)
    assert "kta" in hist["kta_paraphraser"] and {"kta_adapt", "kta_affinity"} <= set(hist["main"])
    p0, _, s0 = seen["stage_kta_paraphraser_begin"]
    p1, _, s1 = seen["stage_kta_paraphraser"]
    assert all_changed(p0, p1) and same(s0, s1)
    p2, a2, s2 = seen["stage_main_begin"]
    p3, a3, s3 = seen["stage_main"]
    assert same(p1, p2) and same(p2, p3)  # read frozen in the main stage
    assert all_changed(a2, a3) and not same(s2, s3)


def test_with_kd_each_network_runs_once_per_step():
    methods = [KD(), ICKD(), Affinity(), KTA()]
    d = kdkeras.Distiller(counted_student("teacher", width=6), counted_student(), methods, student_loss_weight=0.1)
    d.compile(optimizer="sgd", run_eagerly=True)
    x, y = tiny_data(8)
    CallCounter.counts.clear()
    logs = d.train_on_batch(x, y, return_dict=True)
    assert CallCounter.counts == {"teacher_counter": 1, "student_counter": 1}
    assert all(np.isfinite(logs[k]) for k in ("kd", "ickd", "affinity", "kta", "kta_adapt", "kta_affinity"))
    np.testing.assert_allclose(logs["kta"], logs["kta_adapt"] + logs["kta_affinity"], rtol=1e-5)


def test_parts_are_saved_with_the_distiller(tmp_path):
    d = kdkeras.Distiller(deep_cnn(), tiny_cnn(width=4, name="student"), [ICKD(), Affinity(), KTA()])
    d.compile(optimizer="sgd")
    d.train_on_batch(*tiny_data(8))
    d.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    for m, lm in zip(d.methods, loaded.methods):
        assert type(lm) is type(m) and m.weights and len(lm.weights) == len(m.weights)
        for v, lv in zip(m.weights, lm.weights):
            np.testing.assert_array_equal(np.array(v), np.array(lv))
    assert len(loaded.student.weights) == len(d.student.weights)


# -- teacher cache ----------------------------------------------------------------------------


def _fit(teacher, folder, cache=None):
    keras.utils.set_random_seed(3)
    student = tiny_cnn(width=3, num_classes=3, input_shape=(8, 8, 3), name="student")
    methods = [ICKD(), Affinity(), KTA()]
    if cache is None:
        ds = cache_helpers._load(folder, replay=True, with_index=True, views=1)
        d = kdkeras.Distiller(teacher, student, methods)
    else:
        ds = cache_helpers._load(folder, teacher_cache=cache)
        d = kdkeras.Distiller(None, student, methods, teacher_cache=cache)
    d.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return d.fit(ds, epochs=1, verbose=0).history, student.get_weights()


def test_a_teacher_cache_serves_them_as_the_online_teacher(tmp_path):
    folder = image_folder(tmp_path / "images", size=(8, 8))
    teacher = cache_helpers._teacher()
    cache = cache_helpers._build(tmp_path / "cache", teacher, folder, [ICKD(), Affinity(), KTA()], views=1)
    assert set(cache.method_taps) == {"ickd", "affinity", "kta"} and set(cache.entries) == {"logits", "relu2"}
    h_online, w_online = _fit(teacher, folder)
    h_cached, w_cached = _fit(teacher, folder, cache)
    for key in ("loss", "ickd", "affinity", "kta_adapt", "kta_affinity"):
        np.testing.assert_allclose(h_online[key], h_cached[key], rtol=1e-5)
    for a, b in zip(w_online, w_cached):  # float noise, through the normalisations, after one epoch
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

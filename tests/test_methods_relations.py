"""Relational methods: NumPy references, gradient flow, training, single pass."""

import keras
import numpy as np
import pytest

import kdkeras
from kdkeras.methods import KD
from kdkeras.methods.relations import CC, PKT, RKD, SP
from tests.helpers import CallCounter, tiny_cnn, tiny_data
from tests.test_methods_hints import (
    built, check_gradients, check_short_fit, counted_student, deep_cnn, loss_of,
)

# -- NumPy references (float64) ------------------------------------------------------------


def np_huber(a, b):
    d = np.abs(a - b)
    return np.mean(np.where(d < 1, 0.5 * d**2, d - 0.5))


def np_rkd(t, s, wd=25.0, wa=50.0):
    def dist(e):
        d = np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))
        np.fill_diagonal(d, 0.0)
        return d / d[d > 0].mean()

    def angle(e):
        diff = e[None, :, :] - e[:, None, :]  # [i, j] = e_j - e_i
        norm = np.linalg.norm(diff, axis=-1, keepdims=True)
        diff = diff / np.maximum(norm, 1e-12)
        return np.einsum("ijd,ikd->ijk", diff, diff)

    return wd * np_huber(dist(s), dist(t)), wa * np_huber(angle(s), angle(t))


def np_pkt(t, s, eps=1e-7):
    def prob(x):
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        c = (x @ x.T + 1) / 2
        return c / c.sum(1, keepdims=True)

    pt, ps = prob(t), prob(s)
    return np.mean(pt * np.log((pt + eps) / (ps + eps)))


def np_sp(t, s):
    b = len(t)
    t, s = t.reshape(b, -1), s.reshape(b, -1)

    def g(f):
        m = f @ f.T
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    return ((g(t) - g(s)) ** 2).sum() / b**2


def vectors(seed, b=6, t_dim=10, s_dim=7):
    rng = np.random.default_rng(seed)
    return (
        {"t": rng.normal(0, 1, (b, t_dim)).astype("float32")},
        {"s": rng.normal(0, 1, (b, s_dim)).astype("float32")},
    )


def build_vec(method, t, s):
    return built(method, {k: v.shape[1:] for k, v in t.items()}, {k: v.shape[1:] for k, v in s.items()})


def test_rkd_matches_numpy_and_logs_both_parts():
    t, s = vectors(1)
    m = build_vec(RKD(), t, s)
    out = m.compute_loss(t, s, None)
    wd, wa = np_rkd(t["t"].astype("float64"), s["s"].astype("float64"))
    np.testing.assert_allclose(float(out["distance"]), wd, rtol=1e-5)
    np.testing.assert_allclose(float(out["angle"]), wa, rtol=1e-5)
    assert RKD.log_keys == ("distance", "angle")


def test_rkd_flattens_feature_maps():
    rng = np.random.default_rng(2)
    t = {"t": rng.normal(0, 1, (5, 2, 2, 3)).astype("float32")}
    s = {"s": rng.normal(0, 1, (5, 3, 3, 2)).astype("float32")}
    m = build_vec(RKD(distance_weight=1.0, angle_weight=2.0), t, s)
    want = sum(np_rkd(t["t"].reshape(5, -1).astype("float64"), s["s"].reshape(5, -1).astype("float64"), 1.0, 2.0))
    np.testing.assert_allclose(loss_of(m, t, s), want, rtol=1e-5)


def test_pkt_matches_numpy():
    t, s = vectors(3)
    m = build_vec(PKT(), t, s)
    np.testing.assert_allclose(loss_of(m, t, s), np_pkt(t["t"].astype("float64"), s["s"].astype("float64")), rtol=1e-5)


def test_sp_matches_numpy():
    rng = np.random.default_rng(4)
    t = {"t": rng.normal(0, 1, (6, 2, 2, 8)).astype("float32")}
    s = {"s": rng.normal(0, 1, (6, 4, 4, 3)).astype("float32")}
    m = build_vec(SP(), t, s)
    np.testing.assert_allclose(loss_of(m, t, s), np_sp(t["t"].astype("float64"), s["s"].astype("float64")), rtol=1e-5)


def test_cc_matches_numpy():
    t, s = vectors(5)
    m = build_vec(CC(), t, s)
    e_s, e_t = m.student_embeds[0], m.teacher_embeds[0]
    assert e_s.dense.units == e_t.dense.units == 128

    def embed(x, layer):
        z = x.astype("float64") @ np.asarray(layer.dense.kernel, "float64") + np.asarray(layer.dense.bias, "float64")
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    d = np.abs(embed(s["s"], e_s) - embed(t["t"], e_t))
    want = np.mean((d[:-1] * d[1:]).sum(1))
    np.testing.assert_allclose(loss_of(m, t, s), want, rtol=1e-5)


def test_defaults_names_and_configs():
    expected = {"rkd": (RKD, 1.0), "pkt": (PKT, 30000.0), "sp": (SP, 3000.0), "cc": (CC, 0.02)}
    for name, (cls, weight) in expected.items():
        m = kdkeras.methods.get(name)
        assert type(m) is cls and m.weight == weight and m.name == name
    assert (RKD().distance_weight, RKD().angle_weight) == (25.0, 50.0)
    assert PKT().eps == 1e-7 and CC().embed_dim == 128
    clone = RKD.from_config(RKD(distance_weight=1.0, weight=2.0).get_config())
    assert clone.distance_weight == 1.0 and clone.weight == 2.0 and clone.angle_weight == 50.0
    assert CC.from_config(CC(embed_dim=16).get_config()).embed_dim == 16


# -- in a Distiller ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rkd", "pkt", "sp", "cc"])
def test_gradients_reach_student_and_parts_never_teacher(name):
    method = kdkeras.methods.get(name)
    d = kdkeras.Distiller(deep_cnn(), tiny_cnn(width=4, name="student"), [method])
    trainable_ids = {id(v) for v in d.trainable_variables}
    assert not {id(v) for v in d.teacher.weights} & trainable_ids
    assert {id(v) for v in method.trainable_weights} <= trainable_ids
    assert (len(method.trainable_weights) == 4) == (name == "cc")  # two Dense embeds
    check_gradients(method, d)


def test_short_fit_lowers_each_term_teacher_frozen_parts_trained():
    methods = [RKD(), PKT(), SP(), CC()]
    d, _ = check_short_fit(deep_cnn(), tiny_cnn(width=4, name="student", batchnorm=False), methods,
                           eval_names=("rkd", "cc"))
    rkd, _, sp, _ = (d.plan.entry(m) for m in methods)
    assert rkd.teacher == ("embedding",) and sp.teacher == ("relu3",) and sp.student == ("relu2",)


def test_with_kd_and_each_other_each_network_runs_once_per_step():
    methods = [KD(), RKD(), PKT(), SP(), CC()]
    d = kdkeras.Distiller(counted_student("teacher", width=6), counted_student(), methods, student_loss_weight=0.1)
    d.compile(optimizer="sgd", run_eagerly=True)
    x, y = tiny_data(8)
    CallCounter.counts.clear()
    logs = d.train_on_batch(x, y, return_dict=True)
    assert CallCounter.counts == {"teacher_counter": 1, "student_counter": 1}
    assert all(np.isfinite(logs[k]) for k in ("kd", "rkd", "rkd_distance", "rkd_angle", "pkt", "sp", "cc"))
    np.testing.assert_allclose(logs["rkd"], logs["rkd_distance"] + logs["rkd_angle"], rtol=1e-5)


def test_cc_embeds_are_saved_with_the_distiller(tmp_path):
    d = kdkeras.Distiller(deep_cnn(), tiny_cnn(width=4, name="student"), [CC()])
    d.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    cc, lcc = d.methods[0], loaded.methods[0]
    for v, lv in zip(cc.weights, lcc.weights):
        np.testing.assert_array_equal(np.array(v), np.array(lv))
    assert len(loaded.student.weights) == len(d.student.weights)

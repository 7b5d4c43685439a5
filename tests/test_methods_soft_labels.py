"""LSR, VirtualTeacher, WSL and DKD against independent NumPy computations."""

import keras
import numpy as np
import pytest

import kdkeras
from kdkeras.methods import base, registry
from kdkeras.methods.soft_labels import (
    DKD,
    LSR,
    WSL,
    VirtualTeacher,
    dkd_per_sample,
    virtual_teacher_distribution,
    wsl_sample_weights,
)
from tests.helpers import tiny_cnn, tiny_data


# -- NumPy references (float64, written from the formulas, not from the code) --
def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(p, q):
    return np.sum(p * np.log(p / q), axis=-1)


def np_dkd(zt, zs, y, t):
    """Per-sample TCKD and NCKD (times T^2), by explicit loops over samples."""
    tckd, nckd = [], []
    for i, label in enumerate(y):
        pt, ps = np_softmax(zt[i] / t), np_softmax(zs[i] / t)
        bt = np.array([pt[label], 1 - pt[label]])
        bs = np.array([ps[label], 1 - ps[label]])
        keep = np.arange(len(pt)) != label
        nt, ns = pt[keep] / pt[keep].sum(), ps[keep] / ps[keep].sum()
        tckd.append(np_kl(bt, bs) * t * t)
        nckd.append(np_kl(nt, ns) * t * t)
    return np.array(tckd), np.array(nckd)


def random_case(b=7, k=6, scale=3.0, seed=1):
    rng = np.random.default_rng(seed)
    zt = rng.normal(0, scale, (b, k)).astype("float32")
    zs = rng.normal(0, scale, (b, k)).astype("float32")
    y = rng.integers(0, k, b).astype("int32")
    return zt, zs, y


def f64(x):
    return np.asarray(x, "float64")


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
def test_lsr_matches_numpy(epsilon):
    _, zs, y = random_case()
    k = zs.shape[1]
    q = np.eye(k)[y] * (1 - epsilon) + epsilon / k
    want = np.mean(-np.sum(q * np.log(np_softmax(f64(zs))), -1))
    got = float(LSR(epsilon=epsilon).compute_loss(None, {"logits": zs}, y))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_virtual_teacher_distribution():
    y = np.array([2, 0])
    k, a, t = 5, 0.99, 20.0
    got = np.asarray(virtual_teacher_distribution(y, k, a, t))
    p_d = np.full((2, k), (1 - a) / (k - 1))
    p_d[[0, 1], y] = a
    np.testing.assert_allclose(got, np_softmax(p_d / t), rtol=1e-6)
    # nearly uniform, a small peak at the label
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)
    assert np.all(got.argmax(-1) == y)
    assert 1 / k < got[0, 2] < 1 / k + 0.05
    others = np.delete(got[0], 2)
    np.testing.assert_allclose(others, others[0], rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 20.0])
def test_virtual_teacher_matches_numpy_and_reference_scale(temperature):
    _, zs, y = random_case()
    k = zs.shape[1]
    p_d = np.full(zs.shape, 0.01 / (k - 1))
    p_d[np.arange(len(y)), y] = 0.99
    target, ps = np_softmax(p_d / temperature), np_softmax(f64(zs))
    want = np.mean(np_kl(target, ps))
    method = VirtualTeacher(temperature=temperature)
    got = float(method.compute_loss(None, {"logits": zs}, y))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # The reference's nn.KLDivLoss() averages over batch AND classes: ours / K.
    reference_kldiv = np.mean(target * np.log(target / ps))
    np.testing.assert_allclose(got / k, reference_kldiv, rtol=1e-5)
    assert method.weight == 0.1 and not method.requires_teacher


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_wsl_matches_numpy(temperature):
    zt, zs, y = random_case(seed=2)
    zt64, zs64 = f64(zt), f64(zs)
    idx = np.arange(len(y))
    ce_s = -np.log(np_softmax(zs64)[idx, y])
    ce_t = -np.log(np_softmax(zt64)[idx, y])
    w = 1 - np.exp(-np.maximum(ce_s / ce_t, 0))
    pt, ps = np_softmax(zt64 / temperature), np_softmax(zs64 / temperature)
    want = temperature**2 * np.mean(w * -np.sum(pt * np.log(ps), -1))
    method = WSL(temperature=temperature)
    got = float(method.compute_loss({"logits": zt}, {"logits": zs}, y))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(wsl_sample_weights(zt, zs, y), w, rtol=1e-5)
    assert method.weight == 2.25


def test_wsl_weight_is_detached_and_small_where_student_beats_teacher():
    zt = np.array([[0.0, 3.0, 0.0], [5.0, 0.0, 0.0]], "float32")  # wrong, right
    zs = keras.Variable(np.array([[4.0, 0.0, 0.0], [1.0, 0.0, 0.0]], "float32"))
    y = np.array([0, 0])
    w = np.asarray(wsl_sample_weights(zt, zs, y))
    assert w[0] < 0.1 and w[1] > 0.9  # student better on 0, worse on 1
    import tensorflow as tf

    with tf.GradientTape() as tape:
        out = keras.ops.sum(wsl_sample_weights(zt, zs, y))
    assert tape.gradient(out, zs.value) is None


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_matches_numpy(temperature):
    zt, zs, y = random_case(seed=3)
    want_t, want_n = np_dkd(f64(zt), f64(zs), y, temperature)
    got_t, got_n = dkd_per_sample(zt, zs, y, temperature)
    np.testing.assert_allclose(got_t, want_t, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_n, want_n, rtol=1e-4, atol=1e-6)
    method = DKD(alpha=0.5, beta=3.0, temperature=temperature, warmup_epochs=0)
    out = method.compute_loss({"logits": zt}, {"logits": zs}, y)
    assert set(out) == {"tckd", "nckd"} and method.log_keys == ("tckd", "nckd")
    np.testing.assert_allclose(float(out["tckd"]), 0.5 * want_t.mean(), rtol=1e-4)
    np.testing.assert_allclose(float(out["nckd"]), 3.0 * want_n.mean(), rtol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_equals_dkd_with_alpha_one_and_per_sample_beta(temperature):
    # KD = TCKD + (1 - p_t[target]) * NCKD, per sample, on random logits.
    zt, zs, y = random_case(b=16, k=7, scale=2.0, seed=4)
    t = temperature
    kd = t * t * np_kl(np_softmax(f64(zt) / t), np_softmax(f64(zs) / t))
    tckd, nckd = (np.asarray(v, "float64") for v in dkd_per_sample(zt, zs, y, t))
    beta = 1 - np_softmax(f64(zt) / t)[np.arange(len(y)), y]
    np.testing.assert_allclose(tckd + beta * nckd, kd, rtol=1e-4, atol=1e-6)
    # a constant beta (DKD's default 8) does not give KD: the check is not vacuous
    assert not np.allclose(tckd + 8.0 * nckd, kd, rtol=1e-2)
    # and the mean agrees with the library's KD method
    from kdkeras.methods import KD

    got_kd = float(KD(temperature=t).compute_loss({"logits": zt}, {"logits": zs}, None))
    np.testing.assert_allclose(got_kd, np.mean(tckd + beta * nckd), rtol=1e-4)


def test_dkd_is_finite_and_differentiable_on_extreme_logits():
    import tensorflow as tf

    zt = np.array([[80.0, -80.0, 0.0]], "float32")
    zs = tf.Variable(np.array([[-80.0, 80.0, 0.0]], "float32"))
    with tf.GradientTape() as tape:
        out = DKD(warmup_epochs=0).compute_loss({"logits": zt}, {"logits": zs}, np.array([0]))
        total = out["tckd"] + out["nckd"]
    grad = tape.gradient(total, zs)
    assert np.isfinite(float(total)) and np.all(np.isfinite(grad.numpy()))


def test_dkd_warmup_factor_convention():
    method = DKD(warmup_epochs=4)
    assert float(method.warmup_factor()) == 1.0  # outside a Distiller: no warm-up
    epoch = keras.Variable(0, dtype="int32")
    context = base.StepContext(epoch=epoch)
    for value, want in [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)]:
        epoch.assign(value)
        assert float(method.warmup_factor(context)) == want


def test_dkd_warmup_follows_epochs_in_fit_and_after_resume():
    # Learning rate 0: the networks stay fixed, so each epoch's logged terms
    # are the raw terms times that epoch's warm-up factor.
    teacher = tiny_cnn(width=6, name="teacher", batchnorm=False)
    student = tiny_cnn(width=4, name="student", batchnorm=False)
    dkd = DKD(alpha=1.0, beta=2.0, temperature=2.0, warmup_epochs=4)
    d = kdkeras.Distiller(teacher, student, [dkd], student_loss_weight=1.0)
    d.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
    x, y = tiny_data(16)
    tckd, nckd = np_dkd(f64(teacher.predict(x, verbose=0)), f64(student.predict(x, verbose=0)), y, 2.0)
    hist = d.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    # (float32 on tiny logits: 1e-3 against NumPy; the ratios are exact)
    np.testing.assert_allclose(hist["dkd_tckd"], [0.25 * tckd.mean(), 0.5 * tckd.mean()], rtol=1e-3)
    np.testing.assert_allclose(hist["dkd_nckd"], [0.5 * nckd.mean(), 1.0 * nckd.mean()], rtol=1e-3)
    raw = hist["dkd_tckd"][0] / 0.25
    # resume at epoch 2: the ramp continues from epoch 2, not from 0
    hist = d.fit(x, y, batch_size=16, epochs=5, initial_epoch=2, shuffle=False, verbose=0).history
    np.testing.assert_allclose(hist["dkd_tckd"], [0.75 * raw, raw, raw], rtol=1e-5)
    assert int(d.epoch.numpy()) == 4


def test_dkd_warmup_fraction_scales_with_the_fitted_epochs():
    teacher = tiny_cnn(width=6, name="teacher", batchnorm=False)
    student = tiny_cnn(width=4, name="student", batchnorm=False)
    dkd = DKD(temperature=2.0, warmup_epochs=20, warmup_fraction=0.5)
    d = kdkeras.Distiller(teacher, student, [dkd])
    d.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
    x, y = tiny_data(16)
    hist = d.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0).history
    raw = hist["dkd_tckd"][-1]
    # ceil(0.5 * 4) = 2 warm-up epochs, not 20: full strength from epoch index 1
    np.testing.assert_allclose(hist["dkd_tckd"], [0.5 * raw, raw, raw, raw], rtol=1e-5)
    assert DKD.from_config(dkd.get_config()).warmup_fraction == 0.5
    with pytest.raises(ValueError, match="warmup_fraction.*1.5"):
        DKD(warmup_fraction=1.5)


def test_teacher_free_methods_train_without_teacher():
    student = tiny_cnn(width=4, name="student")
    d = kdkeras.Distiller(None, student, [LSR(), VirtualTeacher()], student_loss_weight=0.0)
    d.compile(optimizer="adam")
    x, y = tiny_data(16)
    logs = d.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert {"lsr", "virtual_teacher", "loss"} <= set(logs)
    assert np.isfinite(logs["loss"][0])


def test_registry_names_defaults_and_config_round_trip():
    for name, cls in [("lsr", LSR), ("virtual_teacher", VirtualTeacher), ("tfkd_reg", VirtualTeacher),
                      ("wsl", WSL), ("dkd", DKD)]:
        assert isinstance(registry.get(name), cls)
    assert LSR().epsilon == 0.1 and LSR().weight == 1.0
    vt = VirtualTeacher()
    assert (vt.correct_prob, vt.temperature) == (0.99, 20.0)
    assert WSL().temperature == 4.0
    dkd = DKD()
    assert (dkd.alpha, dkd.beta, dkd.temperature, dkd.warmup_epochs, dkd.weight) == (1.0, 8.0, 4.0, 20, 1.0)
    for method in [LSR(epsilon=0.2), VirtualTeacher(correct_prob=0.9, temperature=10.0, weight=0.3),
                   WSL(temperature=2.0, weight=2.5), DKD(alpha=2.0, beta=6.0, temperature=3.0, warmup_epochs=5)]:
        clone = type(method).from_config(method.get_config())
        assert clone.get_config() == method.get_config()


def test_dkd_distiller_save_load(tmp_path):
    teacher, student = tiny_cnn(width=6, name="teacher"), tiny_cnn(width=4, name="student")
    d = kdkeras.Distiller(teacher, student, [DKD(beta=2.0, warmup_epochs=3), WSL()])
    d.compile(optimizer="adam")
    x, y = tiny_data(16)
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    d.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert loaded.methods[0].beta == 2.0 and loaded.methods[0].warmup_epochs == 3
    np.testing.assert_allclose(loaded.predict(x, verbose=0), d.predict(x, verbose=0), atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="epsilon.*1.5"):
        LSR(epsilon=1.5)
    with pytest.raises(ValueError, match="correct_prob.*1.0"):
        VirtualTeacher(correct_prob=1.0)
    with pytest.raises(ValueError, match="temperature.*0"):
        WSL(temperature=0)
    with pytest.raises(ValueError, match="warmup_epochs.*-1"):
        DKD(warmup_epochs=-1)

"""NKD, USKD (normalised KD, its teacher-free form) and CTKD/CTDKD (a learned, adversarial
temperature): each loss against an independent NumPy computation of the reference code's
formula; CTKD's temperature gradient reversed (against a plain GradientTape), its cosine
curriculum; the trained parts train, the teacher never does; save/load."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras
from kdkeras.methods import CTDKD, CTKD, DKD, NKD, USKD, StepContext, registry
from kdkeras.methods.curriculum import gradient_reversal, reversal_strength
from tests.helpers import tiny_cnn, tiny_data

RNG = np.random.default_rng(7)
Z_T = (RNG.normal(size=(5, 6)) * 3).astype("float32")
Z_S = (RNG.normal(size=(5, 6)) * 3).astype("float32")
Y = np.array([0, 3, 5, 1, 3])


def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def drop_target(a, y):
    """The reference's `a[mask].reshape(N, -1)` with the fixed mask: the target column removed."""
    return np.stack([np.delete(row, label) for row, label in zip(a, y)])


def np_nkd(z_t, z_s, y, temperature, gamma):
    rows = np.arange(len(y))
    t_t = np.exp(np_log_softmax(z_t))[rows, y]
    s_t = np_log_softmax(z_s)[rows, y]
    target = -(t_t * s_t).mean()
    nt_t, nt_s = drop_target(z_t, y) / temperature, drop_target(z_s, y) / temperature
    non = (np.exp(np_log_softmax(nt_t)) * np_log_softmax(nt_s)).sum(axis=1).mean()
    return target, -gamma * temperature ** 2 * non


def np_uskd(z_s, feature, kernel, bias, y, alpha, beta, mu):
    """The reference uskd.py with integer labels, step by step, on pooled features."""
    n, c = z_s.shape
    rows = np.arange(n)
    s = np.exp(np_log_softmax(z_s))
    p_t = s[rows, y] ** 2
    p_t = p_t + 1.0 - p_t.mean()
    log_s = np_log_softmax(z_s)
    log_s_t = log_s[rows, y]
    loss_t = -(p_t * log_s_t).mean()
    onehot = np.eye(c)[y]
    target = onehot * 0.9 + 0.1 / c
    w_fc = feature @ kernel + bias
    log_w = np_log_softmax(w_fc)
    loss_weak = -(mu * target * log_w).sum(axis=1).mean()
    w = np.exp(log_w)
    w_t = w[rows, y]
    rank = w / (1 - w_t[:, None] + 1e-6) + log_s / (1 - log_s_t[:, None] + 1e-6)
    order = np.argsort(-rank, axis=1)  # classes, best first
    zipf = np.zeros_like(rank)
    for i in range(n):
        for place, cls in enumerate(order[i]):
            zipf[i, cls] = 1.0 / (place + 1)
    nz = drop_target(zipf, y)
    nz = nz / nz.sum(axis=1, keepdims=True)
    ns = np_log_softmax(drop_target(z_s, y))
    loss_non = -(nz * ns).sum(axis=1).mean()
    return alpha * loss_t, beta * loss_non, loss_weak


def np_kd(z_t, z_s, t):
    log_pt, log_ps = np_log_softmax(z_t / t), np_log_softmax(z_s / t)
    return (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1).mean() * t * t


# -- NKD ------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature, gamma", [(3.0, 3.5), (1.0, 1.5)])
def test_nkd_equals_the_reference_formula(temperature, gamma):
    parts = NKD(temperature=temperature, gamma=gamma).compute_loss({"logits": Z_T}, {"logits": Z_S}, Y)
    want_t, want_non = np_nkd(Z_T.astype("float64"), Z_S.astype("float64"), Y, temperature, gamma)
    np.testing.assert_allclose(float(parts["target"]), want_t, rtol=1e-5)
    np.testing.assert_allclose(float(parts["non_target"]), want_non, rtol=1e-5)


def test_nkd_non_target_part_leaves_the_target_out():
    """cls_KD issue 16: with the buggy mask the target logit entered the "non-target"
    softmax; here moving both target logits changes only the target part."""
    nkd = NKD()
    moved_t, moved_s = Z_T.copy(), Z_S.copy()
    rows = np.arange(len(Y))
    moved_t[rows, Y] += 5.0
    moved_s[rows, Y] -= 4.0
    a = nkd.compute_loss({"logits": Z_T}, {"logits": Z_S}, Y)
    b = nkd.compute_loss({"logits": moved_t}, {"logits": moved_s}, Y)
    np.testing.assert_allclose(float(a["non_target"]), float(b["non_target"]), rtol=1e-6)
    assert abs(float(a["target"]) - float(b["target"])) > 1e-3


def test_nkd_standardize_reads_standardised_logits():
    from kdkeras.methods import standardize_logits
    got = NKD(standardize=True).compute_loss({"logits": Z_T}, {"logits": Z_S}, Y)
    want = NKD().compute_loss({"logits": standardize_logits(Z_T)}, {"logits": standardize_logits(Z_S)}, Y)
    for key in ("target", "non_target"):
        np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-6)


# -- USKD -----------------------------------------------------------------------------------


def _built_uskd(**kwargs):
    uskd = USKD(student_layers=["mid"], **kwargs)
    uskd.build_from_taps({"logits": (None, 6)}, {"logits": (None, 6), "mid": (None, 2, 2, 4)})
    kernel = RNG.normal(size=(4, 6)).astype("float32")
    bias = RNG.normal(size=(6,)).astype("float32")
    uskd.weak_head.set_weights([kernel, bias])
    return uskd, kernel, bias


@pytest.mark.parametrize("alpha, beta, mu", [(0.1, 0.1, 0.1), (1.0, 0.1, 0.005)])
def test_uskd_equals_the_reference_formula(alpha, beta, mu):
    uskd, kernel, bias = _built_uskd(alpha=alpha, beta=beta, mu=mu)
    fmap = RNG.normal(size=(5, 2, 2, 4)).astype("float32")
    parts = uskd.compute_loss(None, {"logits": Z_S, "mid": fmap}, Y)
    want = np_uskd(Z_S.astype("float64"), fmap.mean(axis=(1, 2)).astype("float64"), kernel, bias, Y,
                   alpha, beta, mu)
    for key, value in zip(("target", "non_target", "weak"), want):
        np.testing.assert_allclose(float(parts[key]), value, rtol=1e-5, err_msg=key)


def test_uskd_soft_labels_are_gradient_free_and_the_weak_head_trains_from_smoothed_labels():
    uskd, _, _ = _built_uskd()
    fmap = tf.Variable(RNG.normal(size=(5, 2, 2, 4)).astype("float32"))
    z = tf.Variable(Z_S)
    with tf.GradientTape(persistent=True) as tape:
        parts = uskd.compute_loss(None, {"logits": z, "mid": fmap}, Y)
    # the weak term alone reaches the head and the map; the logits' terms not the head
    assert tape.gradient(parts["target"] + parts["non_target"], uskd.weak_head.kernel) is None
    assert np.abs(tape.gradient(parts["weak"], uskd.weak_head.kernel).numpy()).sum() > 0
    assert np.abs(tape.gradient(parts["weak"], fmap).numpy()).sum() > 0
    # the soft labels are constants: the target part's gradient is -p (onehot - s) / B at p fixed
    g = tape.gradient(parts["target"], z).numpy()
    s = np.exp(np_log_softmax(Z_S.astype("float64")))
    p = s[np.arange(5), Y] ** 2
    p = p + 1.0 - p.mean()
    want = -0.1 * p[:, None] * (np.eye(6)[Y] - s) / 5
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)


# -- CTKD: the curriculum, the reversal ---------------------------------------------------------


def test_curriculum_schedule_values():
    for epoch in range(14):
        want = 0.5 * (1 - math.cos(math.pi * min(epoch + 1, 10) / 10))
        np.testing.assert_allclose(float(reversal_strength(epoch, 10)), want, rtol=1e-6, atol=1e-7)
    assert float(reversal_strength(0, 10)) == pytest.approx(0.0245, abs=1e-4)  # the reference's epoch 1
    assert float(reversal_strength(9, 10, lambda_max=2.0)) == pytest.approx(2.0)
    module = CTKD(curriculum_fraction=10 / 240).temperature_module
    at = lambda e, n: float(module.strength(StepContext(epoch=tf.constant(e), epochs=tf.constant(n))))  # noqa: E731
    assert at(4, 240) == pytest.approx(0.5 * (1 - math.cos(math.pi * 5 / 10)))  # 10 epochs of 240
    assert at(4, 480) == pytest.approx(0.5 * (1 - math.cos(math.pi * 5 / 20)))  # 20 epochs of 480
    assert at(0, 5) == pytest.approx(1.0)  # a short run: one epoch, full from the start
    fixed = CTKD(curriculum_epochs=4).temperature_module
    assert float(fixed.strength(StepContext(epoch=tf.constant(1), epochs=tf.constant(99)))) == pytest.approx(0.5)
    assert float(fixed.strength(None)) == 1.0  # outside a Distiller: full strength
    assert float(CTKD(curriculum_epochs=0).temperature_module.strength(StepContext(epoch=tf.constant(0)))) == 1.0


def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward():
    x = tf.Variable([1.5, -2.0])
    with tf.GradientTape() as tape:
        out = gradient_reversal(x, 0.3)
        loss = tf.reduce_sum(out * tf.constant([2.0, 5.0]))
    np.testing.assert_array_equal(out.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [-0.6, -1.5], rtol=1e-6)


@pytest.mark.parametrize("epoch", [0, 3, 12])
@pytest.mark.parametrize("cls", [CTKD, CTDKD])
def test_ctkd_temperature_gradient_is_reversed(cls, epoch):
    method = cls(initial_logit=0.3)
    context = StepContext(training=True, epoch=tf.constant(epoch), epochs=tf.constant(240))
    lam = float(method.temperature_module.strength(context))
    z_s = tf.Variable(Z_S)
    with tf.GradientTape(persistent=True) as tape:
        parts = method.compute_loss({"logits": Z_T}, {"logits": z_s}, Y, context)
        loss = sum(parts.values()) if isinstance(parts, dict) else parts
    g_method = tape.gradient(loss, method.temperature_module.logit)
    g_student = tape.gradient(loss, z_s)

    # the same term with a plain temperature variable, no reversal
    g = tf.Variable(0.3)
    z_plain = tf.Variable(Z_S)
    with tf.GradientTape(persistent=True) as tape:
        t = 1.0 + 20.0 * tf.sigmoid(g)
        if cls is CTKD:
            from kdkeras.methods.logits import kd_loss
            ref = kd_loss(tf.constant(Z_T), z_plain, t)
        else:
            from kdkeras.methods.soft_labels import dkd_per_sample
            tckd, nckd = dkd_per_sample(Z_T, z_plain, Y, t)
            ref = DKD().warmup_factor(context) * (tf.reduce_mean(tckd) + 8.0 * tf.reduce_mean(nckd))
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    g_plain = tape.gradient(ref, g)
    assert abs(float(g_plain)) > 1e-6
    np.testing.assert_allclose(float(g_method), -lam * float(g_plain), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(g_student.numpy(), tape.gradient(ref, z_plain).numpy(), rtol=1e-4, atol=1e-7)


def test_ctkd_equals_kd_at_the_learned_temperature():
    ctkd = CTKD(t_min=2.0, t_range=6.0, initial_logit=-0.5)
    t = 2.0 + 6.0 / (1.0 + math.exp(0.5))
    assert ctkd.temperature_value() == pytest.approx(t, rel=1e-6)
    got = float(ctkd.compute_loss({"logits": Z_T}, {"logits": Z_S}, Y))
    np.testing.assert_allclose(got, np_kd(Z_T.astype("float64"), Z_S.astype("float64"), t), rtol=1e-5)


# -- training: parts train, the teacher never; config, save/load, errors -------------------------


def test_distiller_trains_the_parts_never_the_teacher_and_saves(tmp_path):
    teacher, student = tiny_cnn(width=6, name="teacher"), tiny_cnn(width=4, name="student")
    ctkd, ctdkd, nkd = CTKD(t_range=1.0, curriculum_epochs=0), CTDKD(name="ctdkd"), NKD()
    d = kdkeras.Distiller(teacher, student, [ctkd, ctdkd, nkd])
    d.compile(optimizer=keras.optimizers.SGD(0.5))
    x, y = tiny_data(16)
    t0 = [w.numpy().copy() for w in teacher.weights]
    g0 = float(ctkd.temperature_module.logit.numpy())
    hist = d.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert {"ctkd", "ctdkd_tckd", "ctdkd_nckd", "nkd_target", "nkd_non_target"} <= set(hist)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(t0, teacher.weights))
    assert float(ctkd.temperature_module.logit.numpy()) != g0
    d.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert loaded.methods[0].temperature_value() == pytest.approx(ctkd.temperature_value())
    np.testing.assert_allclose(loaded.predict(x, verbose=0), d.predict(x, verbose=0), atol=1e-6)

    uskd = USKD(student_layers=["relu1"])
    free = kdkeras.Distiller(None, tiny_cnn(width=4, name="student2"), [uskd])
    free.compile(optimizer=keras.optimizers.SGD(0.5))
    k0 = uskd.weak_head.kernel.numpy().copy()  # built with the Distiller, from the tapped shape
    hist = free.fit(x, y, batch_size=8, epochs=1, validation_data=(x, y), verbose=0).history
    assert {"uskd_target", "uskd_non_target", "uskd_weak", "val_uskd_weak"} <= set(hist)
    assert not np.array_equal(k0, uskd.weak_head.kernel.numpy())
    free.save(tmp_path / "free.keras")
    again = keras.models.load_model(tmp_path / "free.keras")
    np.testing.assert_allclose(again.methods[0].weak_head.kernel.numpy(), uskd.weak_head.kernel.numpy())


def test_registry_config_round_trip_and_bad_arguments():
    for name, cls in [("nkd", NKD), ("uskd", USKD), ("ctkd", CTKD), ("ctdkd", CTDKD)]:
        assert isinstance(registry.get(name), cls)
    assert (NKD().temperature, NKD().gamma) == (3.0, 3.5)
    assert (USKD().alpha, USKD().beta, USKD().mu, USKD.requires_teacher) == (0.1, 0.1, 0.1, False)
    for method in [NKD(temperature=2.0, gamma=1.5), USKD(alpha=1.0, mu=0.005),
                   CTKD(t_range=10.0, curriculum_fraction=0.1), CTDKD(beta=2.0, curriculum_epochs=5)]:
        clone = type(method).from_config(method.get_config())
        assert clone.get_config() == method.get_config()
    with pytest.raises(ValueError, match="learns its temperature.*2"):
        CTKD(temperature=2)
    with pytest.raises(ValueError, match="learns its temperature"):
        registry.from_spec("ctdkd", "ctdkd.temperature=3")
    with pytest.raises(ValueError, match="curriculum_fraction.*1.5"):
        CTKD(curriculum_fraction=1.5)
    with pytest.raises(ValueError, match="curriculum_epochs.*-1"):
        CTDKD(curriculum_epochs=-1)
    with pytest.raises(ValueError, match="NKD temperature.*0"):
        NKD(temperature=0)
    with pytest.raises(ValueError, match="USKD mu.*-1"):
        USKD(mu=-1)

"""DeiT's token distillation: the loss against an independent NumPy computation
(hard and soft), which head each part trains, the teacher untouched, errors,
save/load and a tiny fit of a ViT student with a distillation token."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras
from kdkeras import keys, models
from kdkeras.methods import DeiT, from_spec
from tests.helpers import tiny_cnn, tiny_data

RNG = np.random.default_rng(7)
Z_T = RNG.normal(size=(6, 5)).astype("float32") * 3
Z_CLS = RNG.normal(size=(6, 5)).astype("float32") * 2
Z_DIST = RNG.normal(size=(6, 5)).astype("float32") * 2
Y = np.array([0, 1, 2, 3, 4, 0], "int32")


def np_log_softmax(z):
    z = z.astype("float64")
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(labels, z):
    return -np.mean(np_log_softmax(z)[np.arange(len(labels)), labels])


def np_deit(z_t, z_cls, z_dist, y, variant, alpha, tau):
    """DeiT's loss as its reference states it: (1 - alpha) CE(y, z_cls) plus alpha times
    CE(argmax z_t, z_dist) (hard) or tau^2 * KL summed, divided by B*K (soft)."""
    base = np_ce(y, z_cls)
    if variant == "hard":
        distill = np_ce(z_t.argmax(-1), z_dist)
    else:
        log_pt, log_ps = np_log_softmax(z_t / tau), np_log_softmax(z_dist / tau)
        distill = np.sum(np.exp(log_pt) * (log_pt - log_ps)) * tau * tau / z_dist.size
    return (1 - alpha) * base, alpha * distill


def _parts(method, z_t=Z_T, z_cls=Z_CLS, z_dist=Z_DIST, y=Y):
    out = method.compute_loss({keys.LOGITS: z_t}, {keys.CLS_HEAD: z_cls, keys.DIST_HEAD: z_dist}, y)
    return float(out["cls"]), float(out["dist"])


@pytest.mark.parametrize("variant, alpha, tau", [("hard", 0.5, 1.0), ("hard", 0.2, 3.0),
                                                 ("soft", 0.5, 1.0), ("soft", 0.1, 3.0)])
def test_loss_equals_numpy(variant, alpha, tau):
    got = _parts(DeiT(variant=variant, alpha=alpha, tau=tau))
    np.testing.assert_allclose(got, np_deit(Z_T, Z_CLS, Z_DIST, Y, variant, alpha, tau), rtol=1e-5)


def test_defaults_are_the_references():
    m = DeiT()
    assert (m.variant, m.alpha, m.tau, m.weight, m.default_student_loss_weight) == ("hard", 0.5, 1.0, 1.0, 0.0)
    assert m.name == "deit" and m.teacher_layers == [] and m.log_keys == ("cls", "dist")


def test_soft_divides_by_the_element_count_and_hard_ignores_tau():
    """The soft KL is the reference's sum over B*K elements: K times smaller than a
    per-sample mean; the hard variant reads only the teacher's argmax."""
    _, soft = _parts(DeiT(variant="soft", alpha=1.0, tau=2.0))
    log_pt, log_ps = np_log_softmax(Z_T / 2.0), np_log_softmax(Z_DIST / 2.0)
    per_sample = np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), -1)) * 4.0
    np.testing.assert_allclose(soft * Z_T.shape[1], per_sample, rtol=1e-5)
    assert _parts(DeiT(tau=1.0)) == pytest.approx(_parts(DeiT(tau=5.0)))
    assert _parts(DeiT(), z_t=Z_T * 10.0) == pytest.approx(_parts(DeiT()))  # same argmax


def test_one_hot_labels_and_declared_heads():
    m = DeiT(variant="soft", student_layers=["a", "b"])
    out = m.compute_loss({keys.LOGITS: Z_T}, {"a": Z_CLS, "b": Z_DIST}, np.eye(5, dtype="float32")[Y])
    np.testing.assert_allclose([float(out["cls"]), float(out["dist"])],
                               np_deit(Z_T, Z_CLS, Z_DIST, Y, "soft", 0.5, 1.0), rtol=1e-5)


def tiny_deit(num_classes=3, name="student"):
    return models.build_vit((8, 8, 1), num_classes, patch=4, dim=8, depth=1, heads=2,
                            distillation_token=True, name=name)


def test_each_part_trains_its_own_head_and_never_the_teacher():
    teacher, student = tiny_cnn(width=8, name="teacher"), tiny_deit()
    method = DeiT(variant="soft")
    d = kdkeras.Distiller(teacher, student, [method], student_loss_weight=0.0)
    assert d.plan.entry(method).student == (keys.CLS_HEAD, keys.DIST_HEAD)
    assert d.plan.entry(method).teacher == ()
    x, y = tiny_data(8)
    tap = d._student_tap
    heads = {h: student.get_layer(h).kernel for h in (keys.CLS_HEAD, keys.DIST_HEAD)}
    trunk = student.get_layer("block1_mlp2").kernel
    for part, trained, untouched in (("cls", keys.CLS_HEAD, keys.DIST_HEAD), ("dist", keys.DIST_HEAD, keys.CLS_HEAD)):
        with tf.GradientTape(persistent=True) as tape:
            t_out = {keys.LOGITS: teacher(x, training=False)}
            loss = method.compute_loss(t_out, dict(tap(x, training=True)), y)[part]
        g_heads = tape.gradient(loss, heads)
        assert np.abs(g_heads[trained].numpy()).sum() > 0, part
        assert g_heads[untouched] is None or not np.any(g_heads[untouched].numpy()), part
        assert np.abs(tape.gradient(loss, trunk).numpy()).sum() > 0, part  # both reach the shared trunk
        assert all(g is None for g in tape.gradient(loss, teacher.trainable_weights + teacher.weights))
    before_t = [w.numpy().copy() for w in teacher.weights]
    before = {h: k.numpy().copy() for h, k in heads.items()}
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    d.train_on_batch(x, y)
    assert all(not np.array_equal(before[h], heads[h].numpy()) for h in heads)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before_t, teacher.weights))


def test_tiny_fit_logs_both_parts_evaluates_the_average_and_saves(tmp_path):
    teacher = tiny_cnn(width=8, name="teacher")
    student = tiny_deit()
    method = from_spec("deit", "deit.variant=soft,deit.alpha=0.3,deit.tau=2")[0]
    d = kdkeras.Distiller(teacher, student, [method], student_loss_weight=0.0)
    d.compile(optimizer="adam", metrics=["accuracy"])
    x, y = tiny_data(16)
    hist = d.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert {"deit", "deit_cls", "deit_dist"} <= set(hist) and np.all(np.isfinite(hist["loss"]))
    np.testing.assert_allclose(np.add(hist["deit_cls"], hist["deit_dist"]), hist["deit"], rtol=1e-5)
    heads = keras.Model(student.input, [student.get_layer(h).output for h in (keys.CLS_HEAD, keys.DIST_HEAD)])
    z_cls, z_dist = (np.asarray(z) for z in heads(x))
    np.testing.assert_allclose(d.predict(x, verbose=0), (z_cls + z_dist) / 2, atol=1e-6)
    d.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    (m,) = loaded.methods
    assert (type(m), m.variant, m.alpha, m.tau, m.teacher_layers) == (DeiT, "soft", 0.3, 2.0, [])
    np.testing.assert_allclose(loaded.predict(x, verbose=0), d.predict(x, verbose=0), atol=1e-6)
    want = d.evaluate(x, y, verbose=0, return_dict=True)
    got = loaded.evaluate(x, y, verbose=0, return_dict=True)
    for key in ("deit_cls", "deit_dist"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5)
    assert DeiT.from_config(m.get_config()).get_config() == m.get_config()


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"variant must be one of \['hard', 'soft'\], got 'sof'"):
        DeiT(variant="sof")
    with pytest.raises(ValueError, match=r"alpha must be a finite number in \[0, 1\], got 1.5"):
        DeiT(alpha=1.5)
    with pytest.raises(ValueError, match=r"tau must be a finite number > 0, got 0"):
        DeiT(tau=0)
    with pytest.raises(ValueError, match=r"two layers.*\['a'\]"):
        DeiT(student_layers="a")
    with pytest.raises(ValueError, match=r"teacher's logits only.*\['embedding'\]"):
        DeiT(teacher_layers=["embedding"])
    with pytest.raises(ValueError, match=r"'cls_logits'.*'dist_logits'.*'student' lacks.*deit_tiny"):
        kdkeras.Distiller(tiny_cnn(width=8, name="teacher"), tiny_cnn(width=4, name="student"), [DeiT()])

"""Logit methods (KD, DIST) and logit standardisation (on KD, DKD, WSL) against
independent NumPy computations, and in a Distiller: gradients, mixes, save/load, cache."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras
from kdkeras.methods import DIST, DKD, KD, WSL, LogitMethod, StepContext, from_spec, standardize_logits
from tests.helpers import image_folder, tiny_cnn, tiny_data


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_kd(zt, zs, t):
    lpt, lps = np_log_softmax(zt / t), np_log_softmax(zs / t)
    return (t * t) * np.mean(np.sum(np.exp(lpt) * (lpt - lps), axis=-1))


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kd_matches_numpy(temperature):
    rng = np.random.default_rng(1)
    zt = rng.normal(0, 3, (6, 5)).astype("float32")
    zs = rng.normal(0, 3, (6, 5)).astype("float32")
    got = float(KD(temperature=temperature).compute_loss({"logits": zt}, {"logits": zs}, None))
    np.testing.assert_allclose(got, np_kd(zt.astype("float64"), zs.astype("float64"), temperature), rtol=1e-5)


def test_kd_zero_for_identical_logits_and_positive_otherwise():
    z = np.array([[1.0, -2.0, 0.5]], "float32")
    kd = KD()
    assert abs(float(kd.compute_loss({"logits": z}, {"logits": z}, None))) < 1e-7
    assert float(kd.compute_loss({"logits": z}, {"logits": z[:, ::-1].copy()}, None)) > 0


def test_kd_defaults_and_config_round_trip():
    kd = KD()
    assert kd.weight == 0.9 and kd.temperature == 4.0 and kd.name == "kd"
    clone = KD.from_config(KD(temperature=2.0, weight=0.5).get_config())
    assert clone.temperature == 2.0 and clone.weight == 0.5


def test_bad_temperature_is_named():
    with pytest.raises(ValueError, match="-1"):
        KD(temperature=-1)


def test_get_by_name_and_unknown_name():
    assert isinstance(kdkeras.methods.get("KD", temperature=3.0), KD)
    with pytest.raises(ValueError, match="'kdd'.*Accepted"):
        kdkeras.methods.get("kdd")


# -- DIST ---------------------------------------------------------------------------------------


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_dist(zt, zs, beta, gamma, tau, eps=1e-8):
    """DIST's (inter, intra) written from its formula: Pearson correlation of the
    tempered softmaxes per sample (rows) and per class (columns), by explicit loops."""
    ys, yt = np_softmax(zs / tau), np_softmax(zt / tau)

    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        return (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + eps)

    inter = 1 - np.mean([pearson(ys[i], yt[i]) for i in range(ys.shape[0])])
    intra = 1 - np.mean([pearson(ys[:, k], yt[:, k]) for k in range(ys.shape[1])])
    return beta * tau ** 2 * inter, gamma * tau ** 2 * intra


@pytest.mark.parametrize("beta, gamma, tau", [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (0.0, 3.0, 2.0)])
def test_dist_inter_and_intra_match_numpy(beta, gamma, tau):
    rng = np.random.default_rng(2)
    zt = rng.normal(0, 3, (8, 6)).astype("float32")
    zs = rng.normal(0, 3, (8, 6)).astype("float32")
    out = DIST(beta=beta, gamma=gamma, tau=tau).compute_loss({"logits": zt}, {"logits": zs}, None)
    assert set(out) == {"inter", "intra"} and DIST.log_keys == ("inter", "intra")
    want_inter, want_intra = np_dist(zt.astype("float64"), zs.astype("float64"), beta, gamma, tau)
    np.testing.assert_allclose(float(out["inter"]), want_inter, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(out["intra"]), want_intra, rtol=1e-4, atol=1e-6)


def test_dist_is_zero_for_the_same_softmax_and_intra_sees_the_batch_order():
    # logits shifted per sample give the same softmax: nothing to learn; swapping two
    # samples of the student leaves each class column a permutation: intra > 0
    rng = np.random.default_rng(4)
    zt = rng.normal(0, 2, (5, 4)).astype("float32")
    shifted = zt + rng.normal(0, 5, (5, 1)).astype("float32")
    out = DIST().compute_loss({"logits": zt}, {"logits": shifted}, None)
    assert abs(float(out["inter"])) < 1e-4 and abs(float(out["intra"])) < 1e-4
    out = DIST().compute_loss({"logits": zt}, {"logits": zt[[1, 0, 2, 3, 4]]}, None)
    assert float(out["intra"]) > 1e-2


def test_dist_defaults_config_and_bad_arguments():
    d = DIST()
    assert (d.beta, d.gamma, d.tau, d.eps, d.weight, d.standardize) == (1.0, 1.0, 1.0, 1e-8, 2.0, False)
    assert DIST.default_student_loss_weight == 1.0 and DIST.uses_teacher_logits
    clone = DIST.from_config(DIST(beta=2.0, gamma=0.5, tau=4.0, standardize=True, weight=1.5).get_config())
    assert (clone.beta, clone.gamma, clone.tau, clone.standardize, clone.weight) == (2.0, 0.5, 4.0, True, 1.5)
    assert isinstance(kdkeras.methods.get("dist"), DIST)
    with pytest.raises(ValueError, match="DIST tau must be > 0, got 0"):
        DIST(tau=0)
    with pytest.raises(ValueError, match="DIST beta must be a finite number >= 0, got -1"):
        DIST(beta=-1)


def test_dist_float16_logits_are_computed_in_float32():
    rng = np.random.default_rng(5)
    zt = rng.normal(0, 3, (6, 5)).astype("float16")
    zs = rng.normal(0, 3, (6, 5)).astype("float16")
    out = DIST(tau=4.0).compute_loss({"logits": zt}, {"logits": zs}, None)
    want = np_dist(zt.astype("float64"), zs.astype("float64"), 1.0, 1.0, 4.0)
    assert out["inter"].dtype == "float32"
    np.testing.assert_allclose([float(out["inter"]), float(out["intra"])], want, rtol=1e-4)


# -- logit standardisation ----------------------------------------------------------------------


def np_standardize(z):
    """The reference's z-score: unbiased std (ddof 1), 1e-7 added to it."""
    return (z - z.mean(-1, keepdims=True)) / (1e-7 + z.std(-1, ddof=1, keepdims=True))


def np_dkd_masked(zt, zs, y, t, alpha, beta):
    """DKD as its reference computes it: target / rest probabilities summed with
    masks, non-target distributions with the target logit pushed down by 1000."""
    gt = np.eye(zt.shape[1])[y]
    pt, ps = np_softmax(zt / t), np_softmax(zs / t)
    bt = np.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
    bs = np.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
    tckd = (bt * (np.log(bt) - np.log(bs))).sum() * t * t / len(y)
    nt, ns = np_softmax(zt / t - 1000.0 * gt), np_softmax(zs / t - 1000.0 * gt)
    nckd = np.where(nt > 0, nt * (np.log(np.maximum(nt, 1e-300)) - np.log(np.maximum(ns, 1e-300))), 0).sum()
    return alpha * tckd, beta * nckd * t * t / len(y)


def _case(seed=6, b=7, k=6):
    rng = np.random.default_rng(seed)
    zt = (rng.normal(0, 4, (b, k)) + rng.normal(0, 3, (b, 1))).astype("float32")
    zs = rng.normal(0, 1, (b, k)).astype("float32")
    return zt, zs, rng.integers(0, k, b).astype("int32")


def test_standardize_logits_matches_the_reference_z_score():
    zt, _, _ = _case()
    got = np.asarray(standardize_logits(zt))
    np.testing.assert_allclose(got, np_standardize(zt.astype("float64")), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.std(-1, ddof=1), 1.0, rtol=1e-5)
    assert np.all(np.asarray(standardize_logits(np.full((2, 3), 5.0, "float32"))) == 0)  # constant: finite, 0
    with pytest.raises(ValueError, match="at least 2 classes.*1"):
        standardize_logits(np.zeros((2, 1), "float32"))


@pytest.mark.parametrize("temperature", [None, 1.0, 4.0])
def test_standardized_kd_matches_the_reference_formula(temperature):
    zt, zs, _ = _case()
    kd = KD(standardize=True, temperature=temperature)
    t = 2.0 if temperature is None else temperature
    want = np_kd(np_standardize(zt.astype("float64")), np_standardize(zs.astype("float64")), t)
    np.testing.assert_allclose(float(kd.compute_loss({"logits": zt}, {"logits": zs}, None)), want, rtol=1e-5)
    # and it differs from plain KD on the same logits, which sees the magnitudes
    assert abs(float(KD(temperature=t).compute_loss({"logits": zt}, {"logits": zs}, None)) - want) > 1e-3
    # a student whose logits are the teacher's, shifted and scaled per sample, has nothing left to learn
    affine = zt * 0.3 + 2.0
    assert abs(float(kd.compute_loss({"logits": zt}, {"logits": affine}, None))) < 1e-5


@pytest.mark.parametrize("temperature", [None, 4.0])
def test_standardized_dkd_matches_the_reference_formula(temperature):
    zt, zs, y = _case(seed=7)
    dkd = DKD(standardize=True, temperature=temperature, alpha=0.5, beta=3.0, warmup_epochs=0)
    t = 2.0 if temperature is None else temperature
    want = np_dkd_masked(np_standardize(zt.astype("float64")), np_standardize(zs.astype("float64")), y, t, 0.5, 3.0)
    out = dkd.compute_loss({"logits": zt}, {"logits": zs}, y)
    np.testing.assert_allclose([float(out["tckd"]), float(out["nckd"])], want, rtol=1e-4, atol=1e-7)


def test_standardized_wsl_standardizes_the_soft_term_not_its_sample_weights():
    zt, zs, y = _case(seed=8)
    t = 4.0
    ce = lambda z: -np.log(np_softmax(z)[np.arange(len(y)), y])  # noqa: E731
    w = 1 - np.exp(-np.maximum(ce(zs.astype("float64")) / (ce(zt.astype("float64")) + 1e-7), 0))
    pt = np_softmax(np_standardize(zt.astype("float64")) / t)
    log_ps = np.log(np_softmax(np_standardize(zs.astype("float64")) / t))
    want = t * t * np.mean(w * -(pt * log_ps).sum(-1))
    got = float(WSL(standardize=True).compute_loss({"logits": zt}, {"logits": zs}, y))
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_standardize_takes_the_reference_settings_for_arguments_left_out():
    kd = KD(standardize=True)
    assert (kd.temperature, kd.weight) == (2.0, 9.0) and KD.default_student_loss_weight == 0.1
    assert (KD().temperature, KD().weight) == (4.0, 0.9)
    assert (KD(standardize=True, temperature=3.0, weight=1.0).temperature, KD(standardize=True, weight=1.0).weight) == (
        3.0, 1.0)
    dkd = DKD(standardize=True)
    assert (dkd.alpha, dkd.beta, dkd.temperature, dkd.weight) == (9.0, 72.0, 2.0, 1.0)
    assert (DKD().alpha, DKD().beta, DKD().temperature) == (1.0, 8.0, 4.0)
    assert (DKD(standardize=True, beta=18.0).beta, WSL(standardize=True).temperature) == (18.0, 4.0)
    assert (DIST(standardize=True).tau, DIST(standardize=True).weight) == (1.0, 2.0)
    kd, dkd = from_spec("kd+dkd", "kd.standardize=true,dkd.standardize=true")
    assert kd.standardize and dkd.standardize and kd.temperature == 2.0 and dkd.beta == 72.0
    assert all(issubclass(c, LogitMethod) for c in (KD, DKD, WSL, DIST))
    with pytest.raises(ValueError, match="standardize must be True or False, got 'yes'"):
        from_spec("kd", "kd.standardize=yes")
    with pytest.raises(ValueError, match=r"Unknown arguments \['standardize'\].*'lsr'"):
        from_spec("lsr", "lsr.standardize=true")
    clone = KD.from_config(KD(standardize=True).get_config())
    assert (clone.standardize, clone.temperature, clone.weight) == (True, 2.0, 9.0)


# -- in a Distiller -----------------------------------------------------------------------------


def _distiller(methods, student_loss_weight=1.0, seed=0):
    keras.utils.set_random_seed(seed)
    return kdkeras.Distiller(tiny_cnn(width=6, name="teacher"), tiny_cnn(width=4, name="student"), methods,
                             student_loss_weight=student_loss_weight)


@pytest.mark.parametrize("spec, args", [("dist", None), ("kd", "kd.standardize=true"),
                                        ("dkd", "dkd.standardize=true,dkd.warmup_epochs=0")])
def test_gradients_reach_the_student_and_never_the_teacher(spec, args):
    (method,) = from_spec(spec, args)
    d = _distiller([method])
    x, y = tiny_data(8)
    variables = list(d.teacher.weights) + list(d.student.trainable_weights)
    with tf.GradientTape() as tape:
        out = method.compute_loss(d.teacher_outputs(x), d._student_tap(x, training=True), y, StepContext(True))
        loss = sum(out.values()) if isinstance(out, dict) else out
    grads = tape.gradient(loss, variables)
    n_t = len(d.teacher.weights)
    assert all(g is None for g in grads[:n_t])
    assert all(g is not None and np.any(np.asarray(g) != 0) for g in grads[n_t:])
    teacher_before = [w.copy() for w in d.teacher.get_weights()]
    student_before = [w.copy() for w in d.student.get_weights()]
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    d.train_on_batch(x, y)
    assert all(np.array_equal(a, b) for a, b in zip(teacher_before, d.teacher.get_weights()))
    assert any(not np.array_equal(a, b) for a, b in zip(student_before, d.student.get_weights()))


def test_a_mix_logs_each_term_and_adds_them_with_their_weights():
    methods = from_spec("kd+dist", "kd.standardize=true,dist.tau=4")
    d = _distiller(methods, student_loss_weight=0.1)
    d.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    x, y = tiny_data(8)
    logs = d.test_on_batch(x, y, return_dict=True)
    assert {"kd", "dist", "dist_inter", "dist_intra", "student_loss"} <= set(logs)
    np.testing.assert_allclose(logs["dist"], logs["dist_inter"] + logs["dist_intra"], rtol=1e-5)
    zt = np.asarray(d.teacher(x)).astype("float64")
    zs = np.asarray(d.student(x)).astype("float64")
    np.testing.assert_allclose(logs["kd"], np_kd(np_standardize(zt), np_standardize(zs), 2.0), rtol=1e-4)
    np.testing.assert_allclose([logs["dist_inter"], logs["dist_intra"]], np_dist(zt, zs, 1.0, 1.0, 4.0),
                               rtol=1e-4, atol=1e-6)
    total = 0.1 * logs["student_loss"] + 9.0 * logs["kd"] + 2.0 * logs["dist"]
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-4)
    assert kdkeras.methods.default_student_loss_weight(methods) == 0.1


def test_distiller_with_dist_and_standardized_kd_saves_and_loads(tmp_path):
    methods = [DIST(beta=2.0, tau=4.0), KD(standardize=True)]
    d = _distiller(methods)
    d.compile(optimizer="adam")
    x, y = tiny_data(16)
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    d.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    dist, kd = loaded.methods
    assert (type(dist), dist.beta, dist.tau, dist.standardize) == (DIST, 2.0, 4.0, False)
    assert (type(kd), kd.standardize, kd.temperature, kd.weight) == (KD, True, 2.0, 9.0)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), d.predict(x, verbose=0), atol=1e-6)
    want = d.evaluate(x, y, verbose=0, return_dict=True)
    got = loaded.evaluate(x, y, verbose=0, return_dict=True)
    for key in ("dist_inter", "dist_intra", "kd"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5)


def test_a_teacher_cache_gives_the_online_step(tmp_path):
    """Both read only logits: a run from a cache of the teacher's logits trains the
    student exactly as the run with the teacher does."""
    from kdkeras import data as data_lib
    from kdkeras.cache import build_teacher_cache, teacher_taps

    folder = image_folder(tmp_path / "images", size=(8, 8))
    n, batch, seed = 27, 8, 5
    spec = data_lib.data_spec(data_lib.info(folder), "train", image_size=None, channels=None, augment=True,
                              limit=None, seed=seed)

    def load(**kw):
        return data_lib.load(folder, "train", **{"batch_size": batch, "augment": True, "seed": seed, **kw})

    keras.utils.set_random_seed(11)
    teacher = tiny_cnn(width=6, num_classes=3, input_shape=(8, 8, 3), name="teacher")

    def methods():
        return [DIST(tau=4.0), KD(standardize=True, name="kd")]

    taps, per_method = teacher_taps(teacher, methods())
    cache = build_teacher_cache(
        str(tmp_path / "cache"), teacher,
        lambda v: load(shuffle=False, with_index=True, replay=data_lib.ReplayClock(v), views=1),
        num_examples=n, views=1, data=spec, taps=taps, method_taps=per_method, verbose=False)
    assert set(cache.entries) == {"logits"}

    def train(cached):
        keras.utils.set_random_seed(3)
        student = tiny_cnn(width=3, num_classes=3, input_shape=(8, 8, 3), name="student")
        if cached:
            ds = load(teacher_cache=cache)
            d = kdkeras.Distiller(None, student, methods(), student_loss_weight=0.1, teacher_cache=cache)
        else:
            ds = load(replay=True, with_index=True, views=1)
            d = kdkeras.Distiller(teacher, student, methods(), student_loss_weight=0.1)
        d.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), run_eagerly=True)
        return d.fit(ds, epochs=1, verbose=0).history, student.get_weights()

    (h_online, w_online), (h_cached, w_cached) = train(False), train(True)
    for key in ("loss", "dist_inter", "dist_intra", "kd"):
        np.testing.assert_allclose(h_online[key], h_cached[key], rtol=1e-5)
    for a, b in zip(w_online, w_cached):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

"""OFD, PAD-L2, SRD (methods/regression.py) and KDSVD (methods/svd.py): each loss
against an independent NumPy computation of its reference's formula on fixed
tensors; OFD's margins from the teacher's BN; PAD-L2's first stage (what it
trains, its loss, resuming from it); gradients reach the student and the
method's parts, never the teacher; save/load; what a teacher cache refuses."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import norm

import kdkeras
from kdkeras.methods import KDSVD, OFD, PADL2, SRD, StepContext
from kdkeras.methods.regression import bn_before
from kdkeras.stages import default_stages, run_stages
from tests.helpers import all_changed, same, tiny_data

RNG = np.random.default_rng(11)


def bn_cnn(width=4, name="net", num_classes=3):
    """conv -> BN -> relu, strided conv -> BN -> relu, GAP, dense: pre-ReLU BN taps."""
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inp, keras.layers.Dense(num_classes, name="logits")(x), name=name)


def randomize_bn(layer):
    """Non-trivial BN parameters and statistics, so eval-mode BN is not identity."""
    c = layer.gamma.shape[0] if layer.gamma is not None else layer.moving_mean.shape[0]
    for w, values in ((layer.gamma, RNG.uniform(0.5, 1.5, c)), (layer.beta, RNG.normal(0, 0.5, c)),
                      (layer.moving_mean, RNG.normal(0, 0.3, c)), (layer.moving_variance, RNG.uniform(0.5, 2, c))):
        if w is not None:
            w.assign(values.astype("float32"))


def np_bn(x, bn, eps):
    g = 1.0 if bn.gamma is None else np.asarray(bn.gamma, "float64")
    b = 0.0 if bn.beta is None else np.asarray(bn.beta, "float64")
    return (x - np.asarray(bn.moving_mean)) / np.sqrt(np.asarray(bn.moving_variance) + eps) * g + b


def np_block_pool(x, size):
    b, h, w, c = x.shape
    return x.reshape(b, size[0], h // size[0], size[1], w // size[1], c).mean(axis=(2, 4))


def shapes(**named):
    return {k: (None, *v.shape[1:]) for k, v in named.items()}


# -- OFD ---------------------------------------------------------------------------------


def np_margin(gamma, beta):
    out = []
    for s, m in zip(np.abs(gamma), beta):
        if norm.cdf(-m / s) > 0.001:
            out.append(-s * np.exp(-((m / s) ** 2) / 2) / np.sqrt(2 * np.pi) / norm.cdf(-m / s) + m)
        else:
            out.append(-3 * s)
    return np.array(out)


def np_ofd(ts, ss, margins):
    total, n = 0.0, len(ts)
    for i, (t, s, m) in enumerate(zip(ts, ss, margins)):
        t = np_block_pool(t, s.shape[1:3])
        loss = ((s - m) ** 2 * ((s > m) & (t <= m)) + (s - t) ** 2 * ((s > t) & (t > m) & (t <= 0))
                + (s - t) ** 2 * (t > 0))
        total += np.abs(loss).mean(axis=0).sum() / 2 ** (n - i - 1)
    return total


def test_ofd_margin_matches_the_gaussian_formula():
    gamma = np.array([1.0, -2.0, 0.5, 0.1, 1.0])
    beta = np.array([0.0, -1.0, 0.3, 1.0, 5.0])  # the last two: too few negatives -> -3 s
    np.testing.assert_allclose(kdkeras.methods.regression.ofd_margin(gamma, beta), np_margin(gamma, beta),
                               rtol=1e-5)
    assert np.allclose(np_margin(gamma, beta)[3:], [-0.3, -3.0])


def test_ofd_matches_numpy():
    t = {"t1": RNG.normal(size=(4, 8, 8, 3)), "t2": RNG.normal(size=(4, 2, 2, 5))}
    s = {"s1": RNG.normal(size=(4, 4, 4, 2)), "s2": RNG.normal(size=(4, 2, 2, 2))}
    ofd = OFD(teacher_layers=["t1", "t2"], student_layers=["s1", "s2"])
    ofd.build_from_taps(shapes(**t), shapes(**s))
    margins = [RNG.uniform(-1.5, -0.2, 3), RNG.uniform(-1.5, -0.2, 5)]
    for var, m in zip(ofd.margins, margins):
        var.assign(m.astype("float32"))
    mapped = []
    for r, key in zip(ofd.connectors, ["s1", "s2"]):
        randomize_bn(r.bn)
        kernel = np.asarray(r.conv.kernel, "float64")[0, 0]
        mapped.append(np_bn(s[key] @ kernel, r.bn, 1e-5))
    got = ofd.compute_loss({k: v.astype("float32") for k, v in t.items()},
                           {k: v.astype("float32") for k, v in s.items()}, None)
    want = np_ofd([t["t1"], t["t2"]], mapped, margins)
    np.testing.assert_allclose(float(got), want, rtol=1e-4)


def test_ofd_partial_l2_gradient_matches_numpy_case_by_case():
    """The student's gradient is `2 (s - m)` in the margin case, `2 (s - t)` in
    the two others and 0 elsewhere, element by element (ties excluded)."""
    s, t = RNG.normal(size=(3, 4, 4, 5)), RNG.normal(size=(3, 4, 4, 5))
    m = RNG.uniform(-1.5, -0.2, 5)
    below, between, positive = (s > m) & (t <= m), (s > t) & (t > m) & (t <= 0), t > 0
    assert below.any() and between.any() and positive.any() and not (below | between | positive).all()
    want = 2 * (s - m) * below + 2 * (s - t) * (between | positive)
    s_var = tf.constant(s, "float32")
    with tf.GradientTape() as tape:
        tape.watch(s_var)
        loss = kdkeras.methods.regression.ofd_partial_l2(s_var, tf.constant(t, "float32"),
                                                         tf.constant(m, "float32"))
    np.testing.assert_allclose(tape.gradient(loss, s_var).numpy(), want, rtol=1e-5, atol=1e-6)


def test_ofd_reads_its_margins_from_the_teachers_bn_before_each_tap():
    teacher = bn_cnn(6, "teacher")
    for name in ("bn1", "bn2"):
        randomize_bn(teacher.get_layer(name))
    ofd = OFD()
    d = kdkeras.Distiller(teacher, bn_cnn(4, "student"), [ofd])
    assert d.plan.entry(ofd).teacher == ("bn1", "bn2")
    for var, name in zip(ofd.margins, ("bn1", "bn2")):
        bn = teacher.get_layer(name)
        np.testing.assert_allclose(np.asarray(var), np_margin(np.asarray(bn.gamma), np.asarray(bn.beta)), rtol=1e-5)
    with pytest.raises(ValueError, match=r"'relu2'.*BatchNormalization"):
        bn_before(keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(2, 1, name="conv"),
                                    keras.layers.ReLU(name="relu2")]), "relu2")


def test_ofd_finds_the_bn_of_zoo_and_applications_preact_taps():
    zoo = kdkeras.models.get("resnet8", (32, 32, 3), 10)
    taps = kdkeras.taps.preact_stage_outputs(zoo)
    assert [bn_before(zoo, t).name for t in taps] == [t.replace("preact", "bn2") for t in taps]
    mobile = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=10)
    taps = kdkeras.taps.preact_stage_outputs(mobile)
    assert [bn_before(mobile, t).name for t in taps] == ["block_2_project_BN", "block_5_project_BN",
                                                         "block_12_project_BN", "Conv_1_bn"]


# -- PAD-L2 ------------------------------------------------------------------------------


@pytest.mark.parametrize("s_dim", [5, 3])
def test_pad_l2_matches_numpy(s_dim):
    t, s = RNG.normal(size=(6, 5)), RNG.normal(size=(6, s_dim))
    pad = PADL2(teacher_layers="t", student_layers="s")
    pad.build_from_taps(shapes(t=t), shapes(s=s))
    randomize_bn(pad.variance.bn)
    dense = pad.variance.dense
    log_var = np_bn(s @ np.asarray(dense.kernel) + np.asarray(dense.bias), pad.variance.bn, 1e-5)
    s_mapped = s
    if s_dim != 5:
        s_mapped = s @ np.asarray(pad.connector.kernel) + np.asarray(pad.connector.bias)
    else:
        assert pad.connector is None
    want = np.mean((t - s_mapped) ** 2 / (1e-6 + np.exp(log_var)) + log_var)
    got = pad.compute_loss({"t": t.astype("float32")}, {"s": s.astype("float32")}, None)
    np.testing.assert_allclose(float(got), want, rtol=1e-4)


def np_embedding(net, x):
    return keras.Model(net.input, net.get_layer("embedding").output).predict(x, verbose=0).astype("float64")


@pytest.mark.parametrize("s_dim", [5, 3])
def test_pad_l2_first_stage_term_is_plain_l2_through_the_connector(s_dim):
    t, s = RNG.normal(size=(6, 5)), RNG.normal(size=(6, s_dim))
    pad = PADL2(teacher_layers="t", student_layers="s")
    term = pad.regression_term
    term.build_from_taps(shapes(t=t), shapes(s=s))
    assert term.name == pad.name and not pad.built  # logged (and cached) under PAD-L2's name
    s_mapped = s if s_dim == 5 else s @ np.asarray(term.connector.kernel) + np.asarray(term.connector.bias)
    assert (term.connector is None) == (s_dim == 5)
    got = term.compute_loss({"t": t.astype("float32")}, {"s": s.astype("float32")}, None)
    np.testing.assert_allclose(float(got), np.mean((t - s_mapped) ** 2), rtol=1e-5)
    pad.build_from_taps(shapes(t=t), shapes(s=s))
    assert pad.connector is term.connector and pad.variance is not None  # one connector, two terms


def test_pad_l2_declares_a_first_stage_of_plain_l2_with_ce_that_trains_the_student():
    pad, kd, ft = PADL2(regression_weight=15.0), kdkeras.methods.KD(), kdkeras.methods.FT()
    init, main = default_stages([pad], init_epochs=2, epochs=8, student_loss_weight=1.0)
    assert (init.name, init.methods, init.epochs) == ("pad_l2_regression", [pad.regression_term], 2)
    assert init.train_student and init.student_loss_weight == 1.0 and pad.regression_term.weight == 15.0
    assert main.methods == [pad] and main.epochs == 8 and list(main.frozen) == []  # the connector trains on
    para, init, main = default_stages([kd, pad, ft], init_epochs=1, epochs=4, student_loss_weight=0.1)
    assert [s.name for s in (para, init, main)] == ["ft_paraphraser", "pad_l2_regression", "main"]
    assert init.student_loss_weight == 1.0 and main.student_loss_weight == 0.1  # the reference's CE in stage 1
    assert list(main.frozen) == [ft.paraphraser_term]


def test_pad_l2_first_stage_loss_in_a_distiller_is_ce_plus_weighted_l2_of_the_embeddings():
    teacher, student = bn_cnn(6, "teacher"), bn_cnn(4, "student")
    randomize_bn(teacher.get_layer("bn2"))
    pad = PADL2(regression_weight=3.0)
    d = kdkeras.Distiller(teacher, student, [pad.regression_term], student_loss_weight=1.0)
    d.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = tiny_data(8)
    logs = d.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    connector = pad.regression_term.connector
    s = np_embedding(student, x) @ np.asarray(connector.kernel) + np.asarray(connector.bias)
    l2 = np.mean((np_embedding(teacher, x) - s) ** 2)
    z = student.predict(x, verbose=0).astype("float64")
    z = z - z.max(-1, keepdims=True)
    ce = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(8), y])
    np.testing.assert_allclose([logs["pad_l2"], logs["loss"]], [l2, ce + 3.0 * l2], rtol=1e-4)


def _pad_parts(teacher, student, pad):
    variance = [] if pad.variance is None else pad.variance.weights
    return (_values(teacher.weights), _values(student.trainable_weights),
            _values(pad.regression_term.connector.weights), _values(variance))


def _values(ws):
    return [np.array(w) for w in ws]


def test_pad_l2_first_stage_trains_student_and_connector_then_pad_adds_its_variance_head(tmp_path):
    teacher, student = bn_cnn(6, "teacher"), bn_cnn(4, "student")
    pad = PADL2()
    ds = tf.data.Dataset.from_tensor_slices(tiny_data(16)).batch(8)
    seen = {}

    class Spy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen[self.model.name + "_begin"] = _pad_parts(teacher, student, pad)
            seen[self.model.name + "_trains"] = {v.path for v in self.model.trainable_variables}

        def on_train_end(self, logs=None):
            seen[self.model.name] = _pad_parts(teacher, student, pad)

    stages = default_stages([pad], init_epochs=2, epochs=2, student_loss_weight=1.0)
    hist = run_stages(teacher, student, stages, ds, optimizer_fn=lambda s: keras.optimizers.Adam(1e-2),
                      output_dir=str(tmp_path), callbacks=[Spy()], verbose=0)
    assert {"loss", "student_loss", "pad_l2"} <= set(hist["pad_l2_regression"])
    t0, s0, c0, v0 = seen["stage_pad_l2_regression_begin"]
    t1, s1, c1, v1 = seen["stage_pad_l2_regression"]
    assert v0 == v1 == []  # no variance head in the first stage: PAD-L2's term is not in it
    assert not any("variance" in p for p in seen["stage_pad_l2_regression_trains"])
    assert all_changed(s0, s1) and all_changed(c0, c1) and same(t0, t1)
    t2, s2, c2, v2 = seen["stage_main_begin"]
    t3, s3, c3, v3 = seen["stage_main"]
    assert same(s1, s2) and same(c1, c2)  # the second stage starts from the first's student and connector
    assert all_changed(s2, s3) and all_changed(c2, c3) and all_changed(v2, v3) and same(t0, t3)
    assert any("variance" in p for p in seen["stage_main_trains"])


def test_pad_l2_saves_loads_and_resumes_after_its_first_stage(tmp_path):
    teacher, student = bn_cnn(6, "teacher"), bn_cnn(4, "student")
    pad = PADL2(regression_weight=2.0)
    x, y = tiny_data(8)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    run = str(tmp_path / "run")
    first = default_stages([pad], init_epochs=1, epochs=1, student_loss_weight=1.0)[:1]
    run_stages(teacher, student, first, ds, optimizer_fn=lambda s: keras.optimizers.SGD(0.1), output_dir=run,
               verbose=0)
    term = pad.regression_term
    s1, c1 = _values(student.trainable_weights), _values(term.connector.weights)
    d = kdkeras.Distiller(teacher, student, [term], student_loss_weight=1.0)
    d.save(tmp_path / "first.keras")
    loaded = keras.models.load_model(tmp_path / "first.keras")
    lterm = loaded.methods[0]
    assert type(lterm) is type(term) and lterm.get_config() == term.get_config() and lterm.weight == 2.0
    assert len(term.weights) == 2 and same(_values(lterm.weights), c1)
    np.testing.assert_allclose(float(lterm.compute_loss(loaded.teacher_outputs(x), loaded._student_tap(x), y)),
                               float(term.compute_loss(d.teacher_outputs(x), d._student_tap(x), y)), rtol=1e-6)

    # a rerun loads the finished first stage: a fresh student and PADL2 start the second from it
    fresh, again = bn_cnn(4, "student"), PADL2(regression_weight=2.0)
    assert not same(_values(fresh.trainable_weights), s1)
    run_stages(teacher, fresh, default_stages([again], init_epochs=1, epochs=0, student_loss_weight=1.0), ds,
               output_dir=run, verbose=0)
    assert same(_values(fresh.trainable_weights), s1) and same(_values(again.connector.weights), c1)
    assert again.connector is again.regression_term.connector and again.variance is not None
    d = kdkeras.Distiller(teacher, fresh, [again])
    d.save(tmp_path / "second.keras")
    lpad = keras.models.load_model(tmp_path / "second.keras").methods[0]
    assert lpad.get_config() == again.get_config() and lpad.regression_weight == 2.0
    assert same(_values(lpad.connector.weights), c1) and same(_values(lpad.weights), _values(again.weights))


# -- SRD ---------------------------------------------------------------------------------


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("tap_rank", [2, 4])
def test_srd_matches_numpy(tap_rank):
    t = RNG.normal(size=(6, 2, 2, 5) if tap_rank == 4 else (6, 5))
    s = RNG.normal(size=(6, 2, 2, 3) if tap_rank == 4 else (6, 3))
    zt, zs = RNG.normal(size=(6, 4)) * 2, RNG.normal(size=(6, 4)) * 2
    srd = SRD(teacher_layers="t", student_layers="s", exponent=3.0, temperature=2.0)
    srd.build_from_taps({**shapes(t=t), "logits": (None, 4)}, {**shapes(s=s), "logits": (None, 4)})
    pool = (lambda x: x.mean(axis=(1, 2))) if tap_rank == 4 else (lambda x: x)
    bn = srd.projector.bn
    bn.moving_mean.assign(RNG.normal(0, 0.3, 5).astype("float32"))
    bn.moving_variance.assign(RNG.uniform(0.5, 2, 5).astype("float32"))
    dense = srd.projector.dense
    p = np_bn(pool(s) @ np.asarray(dense.kernel) + np.asarray(dense.bias), bn, 1e-4)
    tt = pool(t)
    tn = (tt - tt.mean(0)) / np.sqrt(tt.var(0) + 1e-4)
    feat = 2 * np.log((np.abs(p - tn) ** 3).sum())
    lpt, lps = np_log_softmax(zt / 2), np_log_softmax(zs / 2)
    kd = (np.exp(lpt) * (lpt - lps)).sum() / 6
    f32 = lambda x: x.astype("float32")  # noqa: E731
    got = srd.compute_loss({"t": f32(t), "logits": f32(zt)}, {"s": f32(s), "logits": f32(zs)}, None)
    np.testing.assert_allclose([float(got["feat"]), float(got["kd"])], [feat, kd], rtol=1e-4)


# -- KDSVD -------------------------------------------------------------------------------


def np_top(f, n, fix=False):
    vs, ss = [], []
    for x in f.reshape(f.shape[0], -1, f.shape[-1]):
        _, s, vh = np.linalg.svd(x, full_matrices=False)
        v = vh.T[:, :n] / np.linalg.norm(vh.T[:, :n], axis=0)
        if fix:
            v = v * np.where(v[np.abs(v).argmax(0), np.arange(n)] < 0, -1, 1)
        vs.append(v)
        ss.append(s[:n] / np.linalg.norm(s[:n]))
    return np.stack(vs), np.stack(ss)


def np_kdsvd(ts, ss, k):
    total, prev = 0.0, None
    for t, s in zip(ts, ss):
        vt, st = np_top(t, k, fix=True)
        vs, _ = np_top(s, k + 3)
        cos = np.einsum("bci,bcj->bij", vs, vt)
        mask = np.where(np.abs(cos) == np.abs(cos).max(1, keepdims=True), np.sign(cos), 0)
        vs = np.einsum("bci,bij->bcj", vs, mask)
        vt, vs = vt * st[:, None], vs * st[:, None]
        if prev is not None:
            rbf = lambda a, b: np.exp(-((a[:, :, None] - b[:, None]) ** 2) / 8)  # noqa: E731
            total += ((rbf(vs, prev[1]) - rbf(vt, prev[0])) ** 2).sum()
        prev = (vt, vs)
    return total / ts[0].shape[0]


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_matches_numpy(k):
    # tall (HW >= C: the Gram's eigenvectors) and wide (HW < C: an SVD) maps
    t = {"t1": RNG.normal(size=(3, 4, 4, 6)), "t2": RNG.normal(size=(3, 3, 3, 5)),
         "t3": RNG.normal(size=(3, 2, 3, 7))}
    s = {"s1": RNG.normal(size=(3, 4, 4, 6)), "s2": RNG.normal(size=(3, 2, 4, 5)),
         "s3": RNG.normal(size=(3, 2, 3, 7))}
    kdsvd = KDSVD(k=k, teacher_layers=list(t), student_layers=list(s))
    kdsvd.build_from_taps(shapes(**t), shapes(**s))
    got = kdsvd.compute_loss({a: v.astype("float32") for a, v in t.items()},
                             {a: v.astype("float32") for a, v in s.items()}, None)
    want = np_kdsvd(list(t.values()), list(s.values()), k)
    assert want > 0
    np.testing.assert_allclose(float(got), want, rtol=1e-3)


def test_kdsvd_connects_a_pair_of_other_widths_and_matches_numpy_through_it():
    t = {"t1": RNG.normal(size=(3, 4, 4, 6)), "t2": RNG.normal(size=(3, 3, 3, 5))}
    s = {"s1": RNG.normal(size=(3, 4, 4, 6)), "s2": RNG.normal(size=(3, 3, 3, 8))}  # 8 channels against 5
    kdsvd = KDSVD(teacher_layers=list(t), student_layers=list(s))
    kdsvd.build_from_taps(shapes(**t), shapes(**s))
    assert kdsvd.connected == (1,) and len(kdsvd.connectors) == 1
    connector = kdsvd.connectors[0]
    randomize_bn(connector.bn)
    got = kdsvd.compute_loss({a: v.astype("float32") for a, v in t.items()},
                             {a: v.astype("float32") for a, v in s.items()}, None)
    kernel = np.asarray(connector.conv.kernel)[0, 0]  # (8, 5)
    mapped = np_bn(np.einsum("bhwc,cd->bhwd", s["s2"], kernel), connector.bn, connector.bn.epsilon)
    want = np_kdsvd(list(t.values()), [s["s1"], mapped], 1)
    assert want > 0
    np.testing.assert_allclose(float(got), want, rtol=1e-3)


def test_kdsvd_refuses_one_tap_too_few_singular_vectors_and_bad_k():
    a = np.zeros((1, 4, 4, 6))
    with pytest.raises(ValueError, match="4 singular vectors of tap 's2'"):
        KDSVD(teacher_layers=["t1", "t2"], student_layers=["s1", "s2"]).build_from_taps(
            shapes(t1=a, t2=np.zeros((1, 1, 1, 6))), shapes(s1=a, s2=np.zeros((1, 1, 1, 5))))
    with pytest.raises(ValueError, match="two tap pairs"):
        KDSVD(teacher_layers=["t1"], student_layers=["s1"]).build_from_taps(shapes(t1=a), shapes(s1=a))
    with pytest.raises(ValueError, match="integer >= 1, got 0"):
        KDSVD(k=0)


# -- in a Distiller: gradients, save/load, the cache -------------------------------------

NAMES = ["ofd", "pad_l2", "srd", "kdsvd", "kdsvd_connected"]


def _distiller(name):
    """A teacher of width 6 against a student of width 4 (KDSVD: of width 4 too, unless `_connected`)."""
    teacher = bn_cnn(4 if name == "kdsvd" else 6, "teacher")
    name = name.removesuffix("_connected")
    for layer in ("bn1", "bn2"):
        randomize_bn(teacher.get_layer(layer))
    return kdkeras.Distiller(teacher, bn_cnn(4, "student"), [kdkeras.methods.get(name)])


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_student_and_parts_never_teacher(name):
    d = _distiller(name)
    method = d.methods[0]
    x, y = tiny_data(8)
    variables = list(d.teacher.weights) + list(d.student.trainable_weights) + list(method.trainable_weights)
    assert (len(method.trainable_weights) > 0) == (name != "kdsvd")  # connectors only for other widths
    with tf.GradientTape() as tape:
        out = method.compute_loss(d.teacher_outputs(x), d._student_tap(x, training=True), y,
                                  StepContext(training=True))
        loss = sum(out.values()) if isinstance(out, dict) else out
    grads = tape.gradient(loss, variables)
    n_t, n_s = len(d.teacher.weights), len(d.student.trainable_weights)
    assert all(g is None for g in grads[:n_t])
    student = [np.asarray(g) for g in grads[n_t:n_t + n_s] if g is not None]
    assert student and all(np.all(np.isfinite(g)) for g in student)
    assert any(np.any(g != 0) for g in student)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads[n_t + n_s:])


@pytest.mark.parametrize("name", NAMES)
def test_a_training_step_keeps_the_teacher_and_save_load_keeps_the_parts(name, tmp_path):
    d = _distiller(name)
    d.compile(optimizer=keras.optimizers.SGD(0.01))
    x, y = tiny_data(8)
    teacher_before = [np.array(v) for v in d.teacher.weights]
    logs = d.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs[d.methods[0].name])
    for b, v in zip(teacher_before, d.teacher.weights):
        np.testing.assert_array_equal(b, np.array(v))
    d.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    m, lm = d.methods[0], loaded.methods[0]
    assert type(lm) is type(m) and lm.get_config() == m.get_config()
    for v, lv in zip(m.weights, lm.weights):
        np.testing.assert_array_equal(np.array(v), np.array(lv), err_msg=v.path)
    out = m.compute_loss(d.teacher_outputs(x), d._student_tap(x), y)
    lout = lm.compute_loss(loaded.teacher_outputs(x), loaded._student_tap(x), y)
    total = lambda o: float(sum(o.values()) if isinstance(o, dict) else o)  # noqa: E731
    np.testing.assert_allclose(total(out), total(lout), rtol=1e-5)


def test_a_teacher_cache_refuses_ofd_and_holds_the_others_taps():
    from kdkeras.cache import CacheError, teacher_taps

    teacher = bn_cnn(6, "teacher")
    with pytest.raises(CacheError, match="teacher's weights"):
        teacher_taps(teacher, [OFD()])
    union, per_method = teacher_taps(teacher, [PADL2(), SRD(), KDSVD()])
    assert set(union) == {"embedding", "relu1", "relu2"}
    assert per_method == {"pad_l2": ["embedding"], "srd": ["embedding"], "kdsvd": ["relu1", "relu2"]}


def test_configs_defaults_and_bad_arguments():
    assert (OFD.default_weight, PADL2.default_weight, SRD.default_weight, KDSVD.default_weight) == (1e-3, 1, 1, 1)
    assert all(c.default_student_loss_weight == 1.0 for c in (OFD, PADL2, SRD, KDSVD))
    srd = kdkeras.methods.from_spec("srd", "srd.exponent=2,srd.temperature=4")[0]
    assert (srd.exponent, srd.temperature) == (2.0, 4.0)
    assert type(kdkeras.methods.get("pad")) is PADL2
    for bad in ("srd.exponent=0", "srd.temperature=-1"):
        with pytest.raises(ValueError, match="must be a finite number > 0"):
            kdkeras.methods.from_spec("srd", bad)
    with pytest.raises(ValueError, match="PADL2 eps"):
        PADL2(eps=0)


def test_ofd_takes_the_residual_branchs_bn_not_the_projection_shortcuts():
    for model, add, want in ((kdkeras.models.get("resnet8", (32, 32, 3), 10), "stage2_block1_preact",
                              "stage2_block1_bn2"),
                             (keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10),
                              "conv3_block1_add", "conv3_block1_3_bn")):
        assert bn_before(model, add).name == want

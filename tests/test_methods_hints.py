"""Feature-map methods: NumPy references, gradient flow, training, single pass."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras
from kdkeras.methods import KD, StepContext
from kdkeras.methods.hints import AT, NST, VID, FitNet
from kdkeras.methods.staged import AB, FSP, FT
from tests.helpers import CallCounter, tiny_cnn, tiny_data

RNG = np.random.default_rng(7)

# -- NumPy references (float64) ---------------------------------------------------------


def np_pool(x, size):
    """Adaptive average pooling (PyTorch's bins), NHWC."""
    b, h, w, c = x.shape
    th, tw = size
    out = np.zeros((b, th, tw, c))
    for i in range(th):
        h0, h1 = (i * h) // th, -((-(i + 1) * h) // th)
        for j in range(tw):
            w0, w1 = (j * w) // tw, -((-(j + 1) * w) // tw)
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


def np_match(a, b):
    size = (min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2]))
    return np_pool(a, size), np_pool(b, size)


def np_normalize(x, axis=-1):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def np_attention(f):
    return np_normalize((f**2).mean(-1).reshape(len(f), -1))


def np_conv(x, w, b=None, stride=(1, 1), padding="same"):
    """NHWC convolution with TF's padding rules; w is (kh, kw, cin, cout)."""
    _, h, wd, _ = x.shape
    kh, kw = w.shape[:2]
    sh, sw = stride
    if padding == "same":
        oh, ow = -(-h // sh), -(-wd // sw)
        ph, pw = max((oh - 1) * sh + kh - h, 0), max((ow - 1) * sw + kw - wd, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i : i + sh * oh : sh, j : j + sw * ow : sw, :] @ w[i, j]
    return out if b is None else out + b


def np_bn(x, bn):
    v = {name: np.asarray(getattr(bn, name), "float64") for name in ("gamma", "beta", "moving_mean", "moving_variance")}
    return (x - v["moving_mean"]) / np.sqrt(v["moving_variance"] + bn.epsilon) * v["gamma"] + v["beta"]


def np_conv_layer(x, conv):
    bias = np.asarray(conv.bias, "float64") if conv.use_bias else None
    return np_conv(x, np.asarray(conv.kernel, "float64"), bias, conv.strides, conv.padding)


def np_lrelu(x):
    return np.where(x > 0, x, 0.1 * x)


def randomize_bn(layer):
    """Non-trivial BN statistics, so the references exercise them."""
    for bn in [w for w in layer._flatten_layers() if isinstance(w, keras.layers.BatchNormalization)]:
        c = bn.gamma.shape[0]
        bn.gamma.assign(RNG.uniform(0.5, 1.5, c))
        bn.beta.assign(RNG.normal(0, 0.2, c))
        bn.moving_mean.assign(RNG.normal(0, 0.2, c))
        bn.moving_variance.assign(RNG.uniform(0.5, 2.0, c))


def features(shapes, seed, positive=False):
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        f = rng.normal(0, 1, (4,) + shape).astype("float32")
        out[name] = np.abs(f) if positive else f
    return out


def built(method, t_shapes, s_shapes):
    """A method with explicit taps, built from the (batch-free) shapes."""
    method.teacher_layers, method.student_layers = list(t_shapes), list(s_shapes)
    method.build_from_taps(
        {k: (None,) + v for k, v in t_shapes.items()}, {k: (None,) + v for k, v in s_shapes.items()}
    )
    return method


def loss_of(method, t, s, **kwargs):
    out = method.compute_loss(t, s, np.zeros(4, "int32"), **kwargs)
    if isinstance(out, dict):
        out = sum(out.values())
    return float(out)


def f64(d):
    return {k: v.astype("float64") for k, v in d.items()}


# Teacher maps (8x8, 4x4, 2x2); the student's are half as many channels and
# on other grids: 8x8 against 4x4 (exact blocks) and 6x6 against 4x4 (adaptive).
T_SHAPES = {"t1": (8, 8, 6), "t2": (4, 4, 6)}
S_SHAPES = {"s1": (4, 4, 3), "s2": (6, 6, 3)}


# -- loss == NumPy ----------------------------------------------------------------------


def test_at_matches_numpy():
    t, s = features(T_SHAPES, 1), features(S_SHAPES, 2)
    m = built(AT(), T_SHAPES, S_SHAPES)
    tn, sn = f64(t), f64(s)
    want = 0.0
    for tk, sk in zip(T_SHAPES, S_SHAPES):
        a, b = np_match(tn[tk], sn[sk])
        want += np.mean((np_attention(b) - np_attention(a)) ** 2)
    np.testing.assert_allclose(loss_of(m, t, s), want, rtol=1e-5)


def test_nst_matches_numpy():
    t, s = features(T_SHAPES, 3), features(S_SHAPES, 4)
    m = built(NST(), T_SHAPES, S_SHAPES)
    tn, sn = f64(t), f64(s)

    def vec(f):  # (B, C, HW), each channel's spatial vector L2-normalised
        return np_normalize(f.reshape(len(f), -1, f.shape[-1]).transpose(0, 2, 1), axis=-1)

    def k(a, b):
        return (np.einsum("bip,bjp->bij", a, b) ** 2).mean()

    want = 0.0
    for tk, sk in zip(T_SHAPES, S_SHAPES):
        a, b = np_match(tn[tk], sn[sk])
        a, b = vec(a), vec(b)
        want += k(a, a) + k(b, b) - 2 * k(b, a)
    np.testing.assert_allclose(loss_of(m, t, s), want, rtol=1e-5)


def test_fsp_matches_numpy():
    t_shapes = {"t1": (8, 8, 3), "t2": (4, 4, 5), "t3": (2, 2, 5)}
    s_shapes = {"s1": (6, 6, 3), "s2": (6, 6, 5), "s3": (3, 3, 5)}
    t, s = features(t_shapes, 5), features(s_shapes, 6)
    m = built(FSP(), t_shapes, s_shapes)

    def g(a, b):
        a, b = np_match(a, b)
        a, b = a.reshape(len(a), -1, a.shape[-1]), b.reshape(len(b), -1, b.shape[-1])
        return np.einsum("bpi,bpj->bij", a, b) / a.shape[1]

    tl, sl = list(f64(t).values()), list(f64(s).values())
    want = sum(np.mean((g(sl[i], sl[i + 1]) - g(tl[i], tl[i + 1])) ** 2) for i in range(2))
    np.testing.assert_allclose(loss_of(m, t, s), want, rtol=1e-5)


def test_fsp_needs_equal_channels_and_two_taps():
    with pytest.raises(ValueError, match=r"equal channel counts.*'t2'.*6.*'s2'.*3"):
        built(FSP(), T_SHAPES, {"s1": (4, 4, 6), "s2": (6, 6, 3)})
    with pytest.raises(ValueError, match="at least two"):
        built(FSP(), {"t1": (8, 8, 6)}, {"s1": (4, 4, 6)})


@pytest.mark.parametrize(
    "s_shape", [(8, 8, 3), (16, 16, 3), (12, 12, 3)], ids=["same", "stride2", "valid"]
)
def test_fitnet_matches_numpy(s_shape):
    t_shapes, s_shapes = {"t": (8, 8, 6)}, {"s": s_shape}
    t, s = features(t_shapes, 7), features(s_shapes, 8)
    m = built(FitNet(), t_shapes, s_shapes)
    r = m.regressors[0]
    randomize_bn(r)
    pred = np_bn(np_conv_layer(s["s"].astype("float64"), r.conv), r.bn)
    assert pred.shape[1:] == (8, 8, 6)
    want = np.mean((pred - t["t"]) ** 2)
    np.testing.assert_allclose(loss_of(m, t, s), want, rtol=1e-5)


def test_fitnet_regressor_upsamples_smaller_student_and_rejects_odd_sizes():
    m = built(FitNet(), {"t": (8, 8, 6)}, {"s": (4, 4, 3)})
    out = m.regressors[0](np.zeros((2, 4, 4, 3), "float32"))
    assert tuple(out.shape) == (2, 8, 8, 6)
    with pytest.raises(ValueError, match="Cannot regress a 3x3 map to 8x8"):
        built(FitNet(), {"t": (8, 8, 6)}, {"s": (3, 3, 3)})


def test_vid_matches_numpy():
    t, s = features(T_SHAPES, 9), features(S_SHAPES, 10)
    m = built(VID(), T_SHAPES, S_SHAPES)
    want = 0.0
    for (tk, sk), r in zip(zip(T_SHAPES, S_SHAPES), m.regressors):
        r.log_scale.assign(RNG.normal(0, 1, r.log_scale.shape))
        a, b = np_match(t[tk].astype("float64"), s[sk].astype("float64"))
        k = [np.asarray(c.kernel, "float64")[0, 0] for c in r.convs]
        mu = np.maximum(np.maximum(b @ k[0], 0) @ k[1], 0) @ k[2]
        var = np.log1p(np.exp(np.asarray(r.log_scale, "float64"))) + 1e-5
        want += np.mean(0.5 * ((mu - a) ** 2 / var + np.log(var)))
    np.testing.assert_allclose(loss_of(m, t, s), want, rtol=1e-5)


def test_vid_variance_starts_at_init_variance():
    m = built(VID(init_variance=5.0), T_SHAPES, S_SHAPES)
    np.testing.assert_allclose(m.regressors[0].variance(), np.full(6, 5.0), rtol=1e-5)


def np_paraphraser_factor(x, p):
    for layer in p.encoder:
        x = np_conv_layer(x, layer) if isinstance(layer, keras.layers.Conv2D) else np_lrelu(x)
    return x


def np_translator(x, tr):
    for layer in tr.stack:
        if isinstance(layer, keras.layers.Conv2D):
            x = np_conv_layer(x, layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            x = np_bn(x, layer)
        else:
            x = np_lrelu(x)
    return x


def test_ft_matches_numpy_and_reconstruction_loss():
    t_shapes, s_shapes = {"t": (4, 4, 6)}, {"s": (8, 8, 4)}
    t, s = features(t_shapes, 11, positive=True), features(s_shapes, 12, positive=True)
    m = built(FT(), t_shapes, s_shapes)
    p, tr = m.paraphrasers[0], m.translators[0]
    randomize_bn(tr)
    assert p.encoder[-2].filters == 3 and tr.stack[-3].filters == 3  # factor rate 0.5
    ft = np_paraphraser_factor(t["t"].astype("float64"), p)
    fs = np_translator(s["s"].astype("float64"), tr)
    a, b = np_match(ft, fs)
    want = np.mean(np.abs(np_attention(b) - np_attention(a)))
    np.testing.assert_allclose(loss_of(m, t, s), want, rtol=1e-5)

    rec = ft
    for layer in p.decoder:
        rec = np_conv_layer(rec, layer) if isinstance(layer, keras.layers.Conv2D) else np_lrelu(rec)
    want_rec = np.mean((rec - t["t"]) ** 2)
    para = m.paraphraser_term  # the init stage's term: the same paraphraser, weight 1
    assert para.paraphrasers[0] is p and para.weight == 1.0 and para.name == m.name
    np.testing.assert_allclose(loss_of(para, t, s), want_rec, rtol=1e-5)


def test_ft_init_stage_trains_the_paraphraser_ft_reads_frozen():
    m = built(FT(), {"t": (4, 4, 6)}, {"s": (8, 8, 4)})
    para = m.paraphraser_term
    assert {id(v) for v in m.trainable_weights} == {id(v) for v in m.translators[0].trainable_weights}
    [stage] = m.init_stages()
    assert stage.name == "ft_paraphraser" and stage.methods == (para,) and m.init_stages()[0].methods[0] is para
    assert not stage.train_student and stage.student_loss_weight == 0.0 and m.in_main_stage
    # the term holds the paraphraser's weights (which its stage trains), not the translator's
    assert {id(v) for v in para.weights} == {id(v) for v in m.paraphrasers[0].weights} != set()
    config = m.get_config()
    assert "stage" not in config and FT.from_config(config).factor_rate == 0.5


def test_ab_matches_numpy():
    t, s = features(T_SHAPES, 13), features(S_SHAPES, 14)
    m = built(AB(), T_SHAPES, S_SHAPES)
    n, want = 2, 0.0
    for i, ((tk, sk), c) in enumerate(zip(zip(T_SHAPES, S_SHAPES), m.connectors)):
        randomize_bn(c)
        a, b = np_match(t[tk].astype("float64"), s[sk].astype("float64"))
        z = np_bn(b @ np.asarray(c.conv.kernel, "float64")[0, 0], c.bn)
        loss = ((z + 1) ** 2 * ((z > -1) & (a <= 0)) + (z - 1) ** 2 * ((z <= 1) & (a > 0))).sum()
        want += 2.0 ** (i - n + 1) * loss
    want = want / 4 * 3 / 1000
    np.testing.assert_allclose(loss_of(m, t, s), want, rtol=1e-5)


def test_defaults_names_configs_and_at_modes():
    expected = {"fitnet": (FitNet, 100.0), "at": (AT, 1000.0), "nst": (NST, 50.0), "fsp": (FSP, 1.0),
                "vid": (VID, 1.0), "ft": (FT, 200.0), "ab": (AB, 1.0)}
    for name, (cls, weight) in expected.items():
        m = kdkeras.methods.get(name)
        assert type(m) is cls and m.weight == weight and m.name == name
        clone = cls.from_config(cls(weight=3.0, teacher_layers=["a"], student_layers="b").get_config())
        assert clone.weight == 3.0 and clone.teacher_layers == ["a"] and clone.student_layers == ["b"]
    assert AT().mode == "activation" and FT().factor_rate == 0.5 and AB().margin == 1.0
    assert VID().init_variance == 5.0
    assert FT.has_init_stage and AB.has_init_stage and FSP.has_init_stage
    assert FT.in_main_stage and not AB.in_main_stage and not FSP.in_main_stage
    with pytest.raises(ValueError, match=r"'bogus'.*\['activation', 'gradient'\]"):
        AT(mode="bogus")


def test_feature_method_on_vector_tap_fails_clearly():
    with pytest.raises(ValueError, match=r"AT needs 4-D.*'embedding'"):
        kdkeras.Distiller(tiny_cnn(), tiny_cnn(), [AT(teacher_layers=["embedding"], student_layers=["embedding"])])


# -- in a Distiller -------------------------------------------------------------------------


def deep_cnn(width=8, name="teacher", num_classes=3):
    """Three stages (8x8, 4x4, 2x2) with BN: a deeper teacher than tiny_cnn."""
    inp = keras.Input((8, 8, 1))
    x = inp
    for i, stride in enumerate((1, 2, 2), start=1):
        x = keras.layers.Conv2D(width, 3, strides=stride, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inp, keras.layers.Dense(num_classes, name="logits")(x), name=name)


def counted_student(name="student", width=4):
    inp = keras.Input((8, 8, 1))
    x = CallCounter(name=f"{name}_counter")(inp)
    x = keras.layers.Conv2D(width, 3, padding="same", name="conv1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="logits")(x), name=name)


def make_teacher(name):
    """FSP needs the student's channel counts, so it gets a same-width teacher."""
    return tiny_cnn(width=4, name="teacher") if name == "fsp" else deep_cnn()


def term(method, d, x, y, training):
    """The method's unweighted term on (x, y) through the Distiller's taps."""
    out = method.compute_loss(d.teacher_outputs(x), d._student_tap(x, training=training), y,
                              StepContext(training=training))
    return sum(out.values()) if isinstance(out, dict) else out


def check_gradients(method, d):
    """The method's term sends gradient to the student and to all its own parts,
    none to the teacher."""
    x, y = tiny_data(8)
    variables = list(d.teacher.weights) + list(d.student.trainable_weights) + list(method.trainable_weights)
    with tf.GradientTape() as tape:
        loss = term(method, d, x, y, training=True)
    grads = tape.gradient(loss, variables)
    n_t, n_s = len(d.teacher.weights), len(d.student.trainable_weights)
    assert all(g is None for g in grads[:n_t])
    assert any(g is not None and np.any(np.asarray(g) != 0) for g in grads[n_t : n_t + n_s])
    assert all(g is not None for g in grads[n_t + n_s :])


@pytest.mark.parametrize("name", ["fitnet", "at", "nst", "fsp", "vid", "ft", "ab"])
def test_gradients_reach_student_and_parts_never_teacher(name):
    method = kdkeras.methods.get(name)
    d = kdkeras.Distiller(make_teacher(name), tiny_cnn(width=4, name="student"), [method])
    trainable_ids = {id(v) for v in d.trainable_variables}
    assert not {id(v) for v in d.teacher.weights} & trainable_ids
    assert {id(v) for v in method.trainable_weights} <= trainable_ids
    assert (len(method.trainable_weights) > 0) == (name in ("fitnet", "vid", "ft", "ab"))
    check_gradients(method, d)


def check_short_fit(teacher, student, methods, steps=40, lr=1e-2, eval_names=()):
    """A short fit of `methods` together (one trace) lowers each term, leaves the
    teacher bit-identical and moves every trainable part. Terms are scored in
    training mode on the fixed set (connector BatchNorms have no useful moving
    statistics yet), and through `evaluate` for the methods in `eval_names`.
    Each weight is set so that every term starts at 1 in the total."""
    d = kdkeras.Distiller(teacher, student, methods, student_loss_weight=0.0)
    d.compile(optimizer=keras.optimizers.Adam(lr))
    x, y = tiny_data(32)

    def scores():
        out = {m.name: float(term(m, d, x, y, training=True)) for m in methods}
        if eval_names:
            logs = d.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
            out.update({f"eval_{n}": logs[n] for n in eval_names})
        return out

    before = scores()
    for m in methods:
        m.weight = 1.0 / max(before[m.name], 1e-6)
    teacher_before = [np.array(v) for v in d.teacher.weights]
    parts_before = {m.name: [np.array(v) for v in m.weights] for m in methods}
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    d.fit(ds, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    after = scores()
    for key in before:
        assert after[key] < before[key], (key, before[key], after[key])
    for b, v in zip(teacher_before, d.teacher.weights):
        np.testing.assert_array_equal(b, np.array(v), err_msg=v.path)
    trainable = {id(v) for m in methods for v in m.trainable_weights}
    for m in methods:
        for b, v in zip(parts_before[m.name], m.weights):
            if id(v) in trainable:
                assert not np.array_equal(b, np.array(v)), v.path
    return d, parts_before


def test_short_fit_lowers_each_term_teacher_frozen_parts_trained():
    methods = [FitNet(), AT(), NST(), FSP(), VID(), FT(), AB()]
    d, parts_before = check_short_fit(
        deep_cnn(width=8), tiny_cnn(width=8, name="student", batchnorm=False), methods
    )
    ft = methods[5]
    assert (d.plan.entry(ft).teacher, d.plan.entry(ft).student) == (("relu3",), ("relu2",))
    for b, v in zip(parts_before["ft"], ft.weights):
        if any(v is w for w in ft.paraphrasers[0].weights):  # frozen in the transfer stage
            np.testing.assert_array_equal(b, np.array(v))


def test_default_taps_are_paired_deepest_first():
    t, s = deep_cnn(), tiny_cnn(width=4, name="student")
    methods = [AT(), FitNet(), AB(), VID()]
    at, fitnet, ab, _ = (kdkeras.Distiller(t, s, methods).plan.entry(m) for m in methods)
    assert at.teacher == ("relu2", "relu3") and at.student == ("relu1", "relu2")
    assert fitnet.teacher == ("relu2",) and fitnet.student == ("relu1",)
    assert ab.teacher == ("bn2", "bn3") and ab.student == ("bn1", "conv2")
    assert [tuple(r.log_scale.shape) for r in methods[3].regressors] == [(8,), (8,)]


def test_with_kd_and_each_other_each_network_runs_once_per_step():
    methods = [KD(), FitNet(), AT(), NST(), FSP(), VID(), FT(), AB()]
    d = kdkeras.Distiller(counted_student("teacher"), counted_student(), methods, student_loss_weight=0.1)
    d.compile(optimizer="sgd", run_eagerly=True)
    x, y = tiny_data(8)
    CallCounter.counts.clear()
    logs = d.train_on_batch(x, y, return_dict=True)
    assert CallCounter.counts == {"teacher_counter": 1, "student_counter": 1}
    assert all(np.isfinite(logs[m.name]) for m in methods)


def test_save_load_keeps_parts(tmp_path):
    methods = [FitNet(), VID(), FT(), AB()]
    d = kdkeras.Distiller(deep_cnn(), tiny_cnn(width=4, name="student"), methods)
    x, y = tiny_data(16)
    d.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert loaded.plan.entries == d.plan.entries  # the same taps and shapes, planned again
    for m, lm in zip(d.methods, loaded.methods):
        assert type(lm) is type(m) and lm.tap_names() == m.tap_names()
        assert len(lm.weights) == len(m.weights) > 0
        for v, lv in zip(m.weights, lm.weights):
            np.testing.assert_array_equal(np.array(v), np.array(lv), err_msg=v.path)
    t_out, s_out = d.teacher_outputs(x), d._student_tap(x)
    lt, ls = loaded.teacher_outputs(x), loaded._student_tap(x)
    for m, lm in zip(d.methods, loaded.methods):
        np.testing.assert_allclose(float(m.compute_loss(t_out, s_out, y)), float(lm.compute_loss(lt, ls, y)), rtol=1e-5)
    # the connectors are not in the exported student
    assert len(loaded.student.weights) == len(d.student.weights)


# -- AT, gradient mode ------------------------------------------------------------------
def _np_unit(g):
    flat = g.reshape(g.shape[0], -1).astype("float64")
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def test_at_gradient_mode_matches_numpy_on_fixed_gradients():
    rng = np.random.default_rng(7)
    gt = rng.normal(size=(3, 6, 6, 2)).astype("float32")
    gs = rng.normal(size=(3, 6, 6, 2)).astype("float32")
    at = AT(mode="gradient")
    got = float(at.compute_loss({"grad:input": gt}, {"grad:input": gs}, None))
    np.testing.assert_allclose(got, np.mean((_np_unit(gs) - _np_unit(gt)) ** 2), rtol=1e-5)
    assert at.gradient_keys == ("input",)


def test_at_gradient_mode_in_a_distiller_uses_each_networks_input_gradient():
    import tensorflow as tf

    import kdkeras
    from tests.helpers import tiny_cnn, tiny_data

    teacher = tiny_cnn(width=8, name="teacher", batchnorm=False)
    student = tiny_cnn(width=4, name="student", batchnorm=False)
    d = kdkeras.Distiller(teacher, student, [AT(mode="gradient")], student_loss_weight=1.0)
    x, y = tiny_data(8)

    def input_grad(net):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, net(xt), from_logits=True))
        return tape.gradient(loss, xt).numpy()

    expected = np.mean((_np_unit(input_grad(student)) - _np_unit(input_grad(teacher))) ** 2)
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    logs = d.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["at"], expected, rtol=1e-4)
    t_before = [w.numpy().copy() for w in teacher.weights]
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for b, w in zip(t_before, teacher.weights):
        np.testing.assert_array_equal(b, w.numpy())


def test_at_gradient_mode_rejects_one_sided_taps_and_bad_modes():
    with pytest.raises(ValueError, match="both teacher_layers and student_layers"):
        AT(mode="gradient", teacher_layers=["relu1"])
    with pytest.raises(ValueError, match="'saliency'.*activation.*gradient"):
        AT(mode="saliency")

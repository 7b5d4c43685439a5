"""ReviewKD: the hierarchical context loss and the nearest resize against NumPy, the ABF
fusion, the review path, gradients, warm-up, and the method in a Distiller (fit, mix,
save/load, teacher cache)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras
from kdkeras.experiment import run_length_args
from kdkeras.methods import ABF, KD, ReviewKD, StepContext, from_spec
from kdkeras.methods.review import hcl_loss, resize_nearest
from tests.helpers import image_folder, tiny_cnn, tiny_data

# -- NumPy references (PyTorch's semantics, written out) ------------------------------------------


def np_adaptive_pool(x, size):
    """PyTorch's adaptive_avg_pool2d on NHWC: cell i spans [floor(i H / l), ceil((i + 1) H / l))."""
    n, h, w, c = x.shape
    out = np.zeros((n, size, size, c))
    for i in range(size):
        for j in range(size):
            rows = slice(math.floor(i * h / size), math.ceil((i + 1) * h / size))
            cols = slice(math.floor(j * w / size), math.ceil((j + 1) * w / size))
            out[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
    return out


def np_hcl(students, teachers):
    total = 0.0
    for s, t in zip(students, teachers):
        s, t = np.asarray(s, "float64"), np.asarray(t, "float64")
        loss, cnt, tot = np.mean((s - t) ** 2), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= s.shape[1]:
                continue
            cnt /= 2.0
            loss += cnt * np.mean((np_adaptive_pool(s, level) - np_adaptive_pool(t, level)) ** 2)
            tot += cnt
        total += loss / tot
    return total


def np_nearest(x, size):
    h, w = x.shape[1:3]
    rows = [math.floor(i * h / size[0]) for i in range(size[0])]
    cols = [math.floor(j * w / size[1]) for j in range(size[1])]
    return x[:, rows][:, :, cols]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# -- the loss and its helpers ---------------------------------------------------------------------


def test_hcl_equals_numpy_on_fixed_maps():
    rng = np.random.default_rng(0)
    shapes = [(2, 8, 8, 3), (2, 4, 4, 5), (2, 6, 6, 2), (2, 1, 1, 4)]
    s = [rng.normal(size=shape).astype("float32") for shape in shapes]
    t = [rng.normal(size=shape).astype("float32") for shape in shapes]
    for pair in zip(s, t):  # each size alone: 3, 2, 3 (pooled adaptively) and no pyramid levels
        np.testing.assert_allclose(float(hcl_loss([pair[0]], [pair[1]])), np_hcl([pair[0]], [pair[1]]), rtol=1e-5)
    np.testing.assert_allclose(float(hcl_loss(s, t)), np_hcl(s, t), rtol=1e-5)


@pytest.mark.parametrize("size, norm", [(8, 1 + 1 / 2 + 1 / 4 + 1 / 8), (4, 1 + 1 / 2 + 1 / 4), (2, 1 + 1 / 2), (1, 1)])
def test_hcl_levels_below_the_map_size_weigh_half_the_previous_one(size, norm):
    """A checkerboard difference of +-1 has MSE 1 and pools to 0 at every level, so the
    loss is 1 over the normaliser of the levels used; a constant difference c gives c^2."""
    board = np.indices((size, size)).sum(axis=0) % 2 * 2.0 - 1.0 if size > 1 else np.ones((1, 1))
    s = np.broadcast_to(board[None, :, :, None], (2, size, size, 3)).astype("float32")
    zeros = np.zeros_like(s)
    want = 1.0 / norm if size > 1 else 1.0
    np.testing.assert_allclose(float(hcl_loss([s], [zeros])), want, rtol=1e-6)
    np.testing.assert_allclose(float(hcl_loss([zeros + 0.5], [zeros])), 0.25, rtol=1e-6)


@pytest.mark.parametrize("size_in, size_out", [((4, 4), (8, 8)), ((8, 6), (3, 4)), ((1, 1), (4, 4)), ((5, 5), (5, 5)), ((8, 8), (2, 4)), ((4, 6), (8, 3))])
def test_resize_nearest_reads_the_rows_pytorch_reads(size_in, size_out):
    x = np.arange(2 * size_in[0] * size_in[1] * 3, dtype="float32").reshape(2, *size_in, 3)
    got = np.asarray(resize_nearest(x, size_out))
    np.testing.assert_array_equal(got, np_nearest(x, size_out))


def test_abf_fuses_with_attention_and_resizes_to_the_teachers_size():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    residual = rng.normal(size=(2, 2, 2, 6)).astype("float32")
    keras.utils.set_random_seed(2)
    abf = ABF(6, 5, fuse=True)
    out, fused = abf(x, residual, size=(8, 8), training=False)
    assert tuple(out.shape) == (2, 8, 8, 5) and tuple(fused.shape) == (2, 8, 8, 6)
    # NumPy: 1x1 conv, BN with fresh statistics (inference), attention on [x', up(r)], nearest to 8x8
    w1 = np.asarray(abf.conv1.kernel)[0, 0]
    xm = (x @ w1) / np.sqrt(1.0 + 1e-5)
    r = np_nearest(residual, (4, 4))
    att = _sigmoid(np.concatenate([xm, r], -1) @ np.asarray(abf.att_conv.kernel)[0, 0] + np.asarray(abf.att_conv.bias))
    want = np_nearest(xm * att[..., :1] + r * att[..., 1:], (8, 8))
    np.testing.assert_allclose(np.asarray(fused), want, rtol=1e-4, atol=1e-5)
    deepest = ABF(6, 5, fuse=False)
    out, fused = deepest(x, size=(4, 4))
    assert deepest.att_conv is None and tuple(out.shape) == (2, 4, 4, 5)
    with pytest.raises(ValueError, match="fuses a deeper stage"):
        ABF(6, 5, fuse=True)(x)
    clone = ABF.from_config(abf.get_config())
    assert (clone.mid_channels, clone.out_channels, clone.fuse) == (6, 5, True)


# -- the method ------------------------------------------------------------------------------------


def test_default_taps_are_stages_and_the_pooled_feature_as_mdistiller_reads_them():
    teacher = kdkeras.models.get("resnet32", (32, 32, 3), 10)
    student = kdkeras.models.get("resnet8", (32, 32, 3), 10)
    m = ReviewKD()
    assert m.default_taps(teacher, "teacher") == [
        "stage1_block5_preact", "stage2_block5_preact", "stage3_block5_preact", "embedding"]
    assert m.default_taps(student, "student") == [
        "stage1_block1_out", "stage2_block1_out", "stage3_block1_out", "embedding"]
    assert ReviewKD(pooled=False).default_taps(student, "student")[-1] == "stage3_block1_out"


def _distiller(methods, student_loss_weight=1.0, seed=0):
    keras.utils.set_random_seed(seed)
    return kdkeras.Distiller(tiny_cnn(width=6, name="teacher"), tiny_cnn(width=4, name="student"), methods,
                             student_loss_weight=student_loss_weight)


def _inputs(d, x, training=False):
    return d.teacher_outputs(x), d._student_tap(x, training=training)


def test_connectors_map_each_student_tap_to_its_teacher_tap_deepest_first():
    m = ReviewKD(warmup_epochs=0)
    d = _distiller([m])
    assert m.tap_names() == (["bn1", "conv2", "embedding"], ["relu1", "relu2", "embedding"])
    assert [a.fuse for a in m.abfs] == [True, True, False]  # the deepest has nothing deeper to fuse
    assert {a.mid_channels for a in m.abfs} == {4} and [a.out_channels for a in m.abfs] == [6, 6, 6]
    x, _ = tiny_data(4)
    teacher, student = _inputs(d, x)
    maps = [student["relu1"], student["relu2"], np.asarray(student["embedding"])[:, None, None, :]]
    sizes = [(8, 8), (4, 4), (1, 1)]
    base = [np.asarray(o) for o in m.review(maps, sizes)]
    assert [o.shape for o in base] == [(4, 8, 8, 6), (4, 4, 4, 6), (4, 1, 1, 6)]
    deep = [np.asarray(o) for o in m.review(maps[:2] + [maps[2] + 1.0], sizes)]
    shallow = [np.asarray(o) for o in m.review([maps[0] + 1.0] + maps[1:], sizes)]
    assert all(not np.allclose(a, b) for a, b in zip(base, deep))  # the deepest reaches every stage
    assert not np.allclose(base[0], shallow[0])
    assert all(np.array_equal(a, b) for a, b in zip(base[1:], shallow[1:]))  # never the other way
    np.testing.assert_allclose(float(m.compute_loss(teacher, student, None)),
                               np_hcl(base, [teacher["bn1"], teacher["conv2"],
                                             np.asarray(teacher["embedding"])[:, None, None, :]]), rtol=1e-5)


def test_gradients_reach_the_abfs_and_the_student_and_never_the_teacher():
    m = ReviewKD(warmup_epochs=0)
    d = _distiller([m])
    x, y = tiny_data(8)
    variables = list(d.teacher.weights) + list(d.student.trainable_weights) + list(m.trainable_weights)
    with tf.GradientTape() as tape:
        loss = m.compute_loss(*_inputs(d, x, training=True), y, StepContext(True))
    grads = tape.gradient(loss, variables)
    n_t, n_s = len(d.teacher.weights), len(d.student.trainable_weights)
    assert all(g is None for g in grads[:n_t])
    untouched = [v.path for v, g in zip(variables[n_t:], grads[n_t:]) if g is None or not np.any(np.asarray(g))]
    assert untouched == ["logits/kernel", "logits/bias"]  # every layer up to the pooled feature, every ABF
    assert len(m.trainable_weights) == 22 and n_s == 8
    teacher_before = [w.copy() for w in d.teacher.get_weights()]
    abf_before = [np.asarray(w).copy() for w in m.trainable_weights]
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    d.train_on_batch(x, y)
    assert all(np.array_equal(a, b) for a, b in zip(teacher_before, d.teacher.get_weights()))
    assert all(not np.array_equal(a, np.asarray(b)) for a, b in zip(abf_before, m.trainable_weights))


def test_warm_up_is_dkds_and_the_recipes_scale_it_with_the_run():
    m = ReviewKD(warmup_epochs=4)
    d = _distiller([m])
    x, y = tiny_data(4)
    full = float(m.compute_loss(*_inputs(d, x), y))
    at = lambda e, n=None, mm=m: float(mm.compute_loss(*_inputs(d, x), y, StepContext(False, None, e, n)))  # noqa: E731
    np.testing.assert_allclose([at(0), at(2), at(9)], [full / 4, 3 * full / 4, full], rtol=1e-5)
    m.warmup_fraction = 0.25  # 8 epochs: a 2-epoch ramp; without the run's length, warmup_epochs
    np.testing.assert_allclose([at(0, 8), at(1, 8), at(0)], [full / 2, full, full / 4], rtol=1e-5)
    args, added = run_length_args("reviewkd", None)
    assert added == {"reviewkd": {"warmup_fraction": pytest.approx(1 / 12)}}
    assert run_length_args("reviewkd", "reviewkd.warmup_epochs=5")[1] == {}


def test_bad_arguments_name_the_value_and_what_is_accepted():
    for args, match in [("reviewkd.warmup_epochs=-1", "warmup_epochs must be an integer >= 0, got -1"),
                        ("reviewkd.warmup_fraction=2.0", r"warmup_fraction must be in \(0, 1\] or None, got 2.0"),
                        ("reviewkd.max_mid_channels=0", "max_mid_channels must be an integer >= 1, got 0"),
                        ("reviewkd.pooled=yes", "pooled must be True or False, got 'yes'")]:
        with pytest.raises(ValueError, match=match):
            from_spec("reviewkd", args)
    m = ReviewKD(teacher_layers=["tokens"], student_layers=["map"])
    with pytest.raises(ValueError, match=r"tap 'tokens' has shape \(None, 4, 5\)"):
        m.build_parts({"tokens": (None, 4, 5)}, {"map": (None, 8, 8, 3)})


def test_a_tiny_fit_lowers_the_term_and_a_mix_with_kd_adds_the_weighted_terms(tmp_path):
    m = ReviewKD(warmup_epochs=0)
    d = _distiller([m], student_loss_weight=0.0)
    d.compile(optimizer=keras.optimizers.Adam(0.01))
    x, y = tiny_data(32)
    history = d.fit(x, y, batch_size=8, epochs=4, verbose=0).history["reviewkd"]
    assert all(np.isfinite(history)) and history[-1] < history[0]

    methods = from_spec("kd+reviewkd", "reviewkd.warmup_epochs=0")
    d = _distiller(methods, student_loss_weight=0.1)
    d.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    logs = d.test_on_batch(x[:8], y[:8], return_dict=True)
    np.testing.assert_allclose(logs["loss"], 0.1 * logs["student_loss"] + 0.9 * logs["kd"] + logs["reviewkd"],
                               rtol=1e-5)
    d.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    kd, review = loaded.methods
    assert type(kd) is KD and type(review) is ReviewKD and review.warmup_epochs == 0
    assert review.get_config() == methods[1].get_config()
    got = loaded.evaluate(x[:8], y[:8], verbose=0, return_dict=True)
    want = d.evaluate(x[:8], y[:8], verbose=0, return_dict=True)
    np.testing.assert_allclose(got["reviewkd"], want["reviewkd"], rtol=1e-5)


def test_a_teacher_cache_gives_the_online_step(tmp_path):
    """ReviewKD reads only the teacher's maps and pooled feature: a run from a cache of
    them trains the student and the ABFs exactly as the run with the teacher does."""
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
    taps, per_method = teacher_taps(teacher, [ReviewKD(warmup_epochs=2)])
    cache = build_teacher_cache(
        str(tmp_path / "cache"), teacher,
        lambda v: load(shuffle=False, with_index=True, replay=data_lib.ReplayClock(v), views=1),
        num_examples=n, views=1, data=spec, taps=taps, method_taps=per_method, verbose=False)
    assert {"bn1", "conv2", "embedding"} <= set(cache.entries)

    def train(cached):
        keras.utils.set_random_seed(3)
        student = tiny_cnn(width=3, num_classes=3, input_shape=(8, 8, 3), name="student")
        method = ReviewKD(warmup_epochs=2)
        if cached:
            ds = load(teacher_cache=cache)
            d = kdkeras.Distiller(None, student, [method], teacher_cache=cache)
        else:
            ds = load(replay=True, with_index=True, views=1)
            d = kdkeras.Distiller(teacher, student, [method])
        d.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), run_eagerly=True)
        return d.fit(ds, epochs=2, verbose=0).history, student.get_weights() + [
            np.asarray(w) for w in method.trainable_weights]

    (h_online, w_online), (h_cached, w_cached) = train(False), train(True)
    for key in ("loss", "reviewkd"):
        np.testing.assert_allclose(h_online[key], h_cached[key], rtol=1e-5)
    for a, b in zip(w_online, w_cached):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

"""MLKD: each level, the confidence masks and the temperatures against NumPy; the
weak and strong views from the pipeline, replayed exactly; one pass of each network
over both views; gradients that never reach the teacher; the teacher cache of both."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras
from kdkeras import data as data_lib
from kdkeras.cache import build_teacher_cache, teacher_taps
from kdkeras.keys import IMAGE, INDEX, LOGITS, STRONG_IMAGE, strong_key
from kdkeras.methods import MLKD
from kdkeras.methods.multilevel import confidence_masks, median
from kdkeras.two_views import run_on_views
from tests.helpers import image_folder, tiny_cnn, tiny_data

STRONG = strong_key(LOGITS)


# -- the loss against NumPy --------------------------------------------------------------
def _softmax(z, t):
    z = np.asarray(z, np.float64) / t
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _reference(zt, zs, temps, mask, zt_strong=None, zs_strong=None):
    """The three levels, written out from the paper's definitions and the reference's reductions."""
    p = _softmax(zt, 1.0)
    conf, per_class = p.max(1), p.sum(0)
    m = (conf <= np.percentile(conf, 50)).astype(float)
    c = (per_class <= np.percentile(per_class, 50)).astype(float)
    if mask == "none":
        m, c = np.ones_like(m), np.ones_like(c)
    b, k = zt.shape
    inst = batch = cls = 0.0
    for t in temps:
        pt, ps = _softmax(zt, t), _softmax(zs, t)
        kl = (pt * (np.log(pt) - np.log(ps))).sum(1) * t * t
        rows_b = ((pt @ pt.T - ps @ ps.T) ** 2).sum(1)
        rows_c = ((pt.T @ pt - ps.T @ ps) ** 2).sum(1)
        if mask == "reference":  # the released code: (scalar term * mask).mean()
            inst += kl.mean() * m.mean()
            batch += rows_b.sum() / b * m.mean()
            cls += rows_c.sum() / k * c.mean()
        else:
            inst += (kl * m).mean()
            batch += (rows_b * m).sum() / b
            cls += (rows_c * c).sum() / k
        if zt_strong is not None:
            qt, qs = _softmax(zt_strong, t), _softmax(zs_strong, t)
            inst += (qt * (np.log(qt) - np.log(qs))).sum(1).mean() * t * t
    return {"instance": inst, "batch": batch, "class": cls}


def _logits(seed, b=6, k=5):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(b, k)).astype("float32") * 3 for _ in range(4)]


@pytest.mark.parametrize("mask", ["reference", "sample", "none"])
@pytest.mark.parametrize("temps", [(4.0, 3.0, 5.0, 2.0, 6.0), (1.0,), (2.5, 8.0)])
@pytest.mark.parametrize("strong", [True, False])
def test_each_level_equals_numpy(mask, temps, strong):
    zt, zs, zt2, zs2 = _logits(len(temps))
    teacher, student = {LOGITS: zt}, {LOGITS: zs}
    if strong:
        teacher[STRONG], student[STRONG] = zt2, zs2
    got = MLKD(temperatures=temps, mask=mask).compute_loss(teacher, student, None)
    want = _reference(zt, zs, temps, mask, *((zt2, zs2) if strong else ()))
    assert set(got) == {"instance", "batch", "class"}
    for key in want:
        np.testing.assert_allclose(float(got[key]), want[key], rtol=2e-5, atol=1e-7, err_msg=key)
        assert want[key] > 0


def test_masks_and_median_follow_numpy_percentile():
    for n in (5, 6):
        v = np.random.default_rng(n).random(n).astype("float32")
        np.testing.assert_allclose(float(median(v)), np.percentile(v, 50), rtol=1e-6)
    zt = _logits(0, b=7, k=4)[0]
    sample, per_class = (np.asarray(v) for v in confidence_masks(zt))
    p = _softmax(zt, 1.0)
    np.testing.assert_array_equal(sample, p.max(1) <= np.percentile(p.max(1), 50))
    np.testing.assert_array_equal(per_class, p.sum(0) <= np.percentile(p.sum(0), 50))
    assert sample.sum() == 4 and 0 < per_class.sum() < 4  # the less confident half (median included)


def test_the_masks_change_what_the_weak_terms_weigh():
    zt, zs, _, _ = _logits(3)
    parts = {m: MLKD(mask=m).compute_loss({LOGITS: zt}, {LOGITS: zs}, None) for m in ("reference", "sample", "none")}
    assert float(parts["reference"]["instance"]) == pytest.approx(0.5 * float(parts["none"]["instance"]), rel=1e-5)
    assert float(parts["sample"]["instance"]) != pytest.approx(float(parts["reference"]["instance"]), rel=1e-3)


def test_bad_arguments_are_refused_naming_the_value():
    for bad in ([], [0.0], [2.0, -1.0], "4", [True], None):
        with pytest.raises(ValueError, match="MLKD temperatures must be"):
            MLKD(temperatures=bad)
    with pytest.raises(ValueError, match=r"mask must be one of \['reference', 'sample', 'none'\], got 'max'"):
        MLKD(mask="max")
    assert MLKD(temperatures=3).temperatures == (3.0,)
    with pytest.raises(ValueError, match="from the student only"):
        z = _logits(1)[0]
        MLKD().compute_loss({LOGITS: z}, {LOGITS: z, STRONG: z}, None)


def test_config_round_trip():
    m = MLKD(temperatures=[2.0, 4.0], mask="sample", weight=0.5)
    again = MLKD.from_config(m.get_config())
    assert (again.temperatures, again.mask, again.weight) == ((2.0, 4.0), "sample", 0.5)


# -- the two views in the Distiller -----------------------------------------------------
def _pair():
    keras.utils.set_random_seed(1)
    return (tiny_cnn(width=6, name="teacher", batchnorm=False),
            tiny_cnn(width=4, name="student", batchnorm=False))


def test_distiller_runs_both_views_as_one_batch_and_logs_what_separate_passes_give():
    teacher, student = _pair()
    d = kdkeras.Distiller(teacher, student, [MLKD()], student_loss_weight=0.1)
    d.compile(optimizer="sgd")
    x, y = tiny_data(8)
    xs = np.ascontiguousarray(x[:, ::-1])
    logs = d.evaluate({IMAGE: x, STRONG_IMAGE: xs}, y, batch_size=8, verbose=0, return_dict=True)
    t_out = {LOGITS: teacher(x).numpy(), STRONG: teacher(xs).numpy()}
    s_out = {LOGITS: student(x).numpy(), STRONG: student(xs).numpy()}
    want = MLKD().compute_loss(t_out, s_out, None)
    for key in ("instance", "batch", "class"):
        np.testing.assert_allclose(logs[f"mlkd_{key}"], float(want[key]), rtol=1e-4)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(logs["student_loss"], float(ce(y, s_out[LOGITS]) + ce(y, s_out[STRONG])), rtol=1e-5)

    calls = []
    tap = d._student_tap

    def counted(images, training=False):
        calls.append(int(images.shape[0]))
        return tap(images, training=training)

    object.__setattr__(d, "_student_tap", counted)
    d.compile(optimizer="sgd", run_eagerly=True)
    d.train_on_batch({IMAGE: x, STRONG_IMAGE: xs}, y)
    assert calls == [16]  # one pass over both views


def test_training_needs_the_strong_view_and_other_methods_are_unchanged():
    teacher, student = _pair()
    x, y = tiny_data(8)
    d = kdkeras.Distiller(teacher, student, [MLKD()], 0.1)
    d.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"\['mlkd'\].*strong_view=True"):
        d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    kd = kdkeras.Distiller(teacher, student, [kdkeras.methods.KD()], 0.1)
    kd.compile(optimizer="sgd")
    plain = kd.evaluate(x, y, verbose=0, return_dict=True)
    with_strong = kd.evaluate({IMAGE: x, STRONG_IMAGE: x[:, ::-1]}, y, verbose=0, return_dict=True)
    assert plain == with_strong  # a strong view nobody reads is ignored


def test_gradients_reach_the_student_never_the_teacher():
    keras.utils.set_random_seed(2)
    teacher, student = tiny_cnn(width=6, name="teacher"), tiny_cnn(width=4, name="student")
    d = kdkeras.Distiller(teacher, student, [MLKD()], 0.1)
    x, y = tiny_data(8)
    xs = x[:, ::-1]
    with tf.GradientTape(persistent=True) as tape:
        t_out = run_on_views(d.teacher_outputs, x, xs, y)
        s_out = run_on_views(lambda i, t: d._run(d._student_tap, i, t, training=True), x, xs, y)
        loss = sum(MLKD().compute_loss(t_out, s_out, None).values())
    assert all(g is None for g in tape.gradient(loss, teacher.weights))
    assert all(g is not None for g in tape.gradient(loss, student.trainable_weights))
    before = [w.numpy().copy() for w in teacher.weights]
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    d.fit({IMAGE: x, STRONG_IMAGE: xs}, y, batch_size=4, epochs=1, verbose=0)
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, teacher.weights))
    assert not any(w is v for w in teacher.weights for v in d.trainable_variables)


# -- the pipeline's views, replayed ------------------------------------------------------
N, BATCH, SEED = 27, 8, 5


@pytest.fixture
def folder(tmp_path):
    return image_folder(tmp_path / "images", size=(8, 8))


def _load(folder, **kw):
    return data_lib.load(folder, "train", **{**dict(batch_size=BATCH, seed=SEED, augment=True), **kw})


def _epoch(ds):
    batches = [(np.asarray(x[IMAGE]), np.asarray(x[STRONG_IMAGE]), np.asarray(x[INDEX])) for x, _ in ds]
    return [np.concatenate(part) for part in zip(*batches)]


def test_pipeline_makes_both_views_replayed_exactly_for_the_same_seed_and_epoch(folder):
    clock = data_lib.ReplayClock()
    ds = _load(folder, replay=clock, with_index=True, strong_view=True)
    first, second = _epoch(ds), _epoch(ds)  # epochs 0 and 1 of one run
    resumed = _epoch(_load(folder, replay=data_lib.ReplayClock(1), with_index=True, strong_view=True))
    for a, b in zip(second, resumed):  # a resume at epoch 1 rebuilds it exactly
        np.testing.assert_array_equal(a, b)
    weak, strong, index = first
    assert strong.shape == weak.shape and strong.min() >= 0 and strong.max() <= 1
    assert not np.array_equal(weak, strong)
    order = np.argsort(second[2])
    assert not np.array_equal(strong[np.argsort(index)], second[1][order])  # each epoch has its own view
    plain = _epoch_images(_load(folder, replay=data_lib.ReplayClock(0), with_index=True))
    np.testing.assert_array_equal(weak, plain)  # the weak view is the usual augmentation
    a = _epoch(_load(folder, seed=3, strong_view=True, with_index=True, shuffle=False))
    b = _epoch(_load(folder, seed=3, strong_view=True, with_index=True, shuffle=False))
    for u, v in zip(a, b):  # the unreplayed path is seeded too
        np.testing.assert_array_equal(u, v)


def _epoch_images(ds):
    return np.concatenate([np.asarray(x[IMAGE]) for x, _ in ds])


def test_the_teacher_cache_holds_both_views(folder, tmp_path):
    keras.utils.set_random_seed(3)
    teacher = tiny_cnn(width=6, input_shape=(8, 8, 3), name="teacher")
    spec = data_lib.data_spec(data_lib.info(folder), "train", None, None, True, None, SEED, None, True)
    taps, per_method = teacher_taps(teacher, [MLKD()])
    cache = build_teacher_cache(
        str(tmp_path / "cache"), teacher,
        lambda v: _load(folder, shuffle=False, with_index=True, replay=data_lib.ReplayClock(v), views=2,
                        strong_view=True),
        num_examples=N, views=2, data=spec, taps=taps, method_taps=per_method, verbose=False)
    assert set(cache.entries) == {LOGITS, STRONG}
    ds = _load(folder, teacher_cache=cache, strong_view=True)
    for x, _ in ds.take(2):
        np.testing.assert_allclose(x["teacher"][STRONG], teacher(x[STRONG_IMAGE], training=False), atol=1e-5)
        np.testing.assert_allclose(x["teacher"][LOGITS], teacher(x[IMAGE], training=False), atol=1e-5)
    assert STRONG in cache.select([]).read(0, [0, 1])
    student = tiny_cnn(width=4, input_shape=(8, 8, 3), name="student")
    d = kdkeras.Distiller(None, student, [MLKD()], 0.1, teacher_cache=cache)
    d.compile(optimizer="sgd")
    hist = d.fit(ds, epochs=1, verbose=0).history
    assert np.isfinite(hist["mlkd_instance"][0])
    with pytest.raises(Exception, match="strong_view"):
        _load(folder, teacher_cache=cache)  # data without the strong view is other data


def test_a_runs_data_carries_the_strong_view_and_its_cache_views_replay_both(folder, tmp_path):
    """The run layer: setup_data(strong_view=True) trains on both views, and the batches a
    cache view is built from are the training epoch's own, strong views included."""
    from kdkeras import experiment

    config = experiment.RunConfig(dataset=folder, batch_size=BATCH, epochs=2, augment=True, seed=SEED,
                                  output_dir=str(tmp_path / "out"))
    data = experiment.setup_data(config, with_index=True, strong_view=True)
    assert data.part("train")[1]["strong_view"] and "strong_view" not in data.part("test")[1]
    for view in range(2):
        epoch = _epoch(data.train)  # the training pipeline's next epoch
        built = _epoch(experiment.cache_view_pipeline(data, data.info.train_split, view, views=2))
        for a, b in zip(epoch, built):
            np.testing.assert_array_equal(a, b)
    assert not isinstance(next(iter(data.test))[0], dict)  # evaluation data has no strong view

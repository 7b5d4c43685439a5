"""Teacher-output caches: replayed epochs, exact cached training, and the cache
refusing what it must refuse (stale inputs, damaged files, unfinished builds)."""

import json
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras
from kdkeras import data as data_lib
from kdkeras.cache import (
    CacheCorruptError,
    CacheError,
    CacheMismatchError,
    TeacherCache,
    build_teacher_cache,
    teacher_taps,
    warn_views,
)
from kdkeras.cache.layout import decode, encode
from kdkeras.methods import AT, KD
from tests.helpers import image_folder, tiny_cnn

N, BATCH, SEED = 27, 8, 5  # 3 classes x 10 images, 3 held out for the test split
#: an AT cache's float32 bytes per example and view on `_teacher()`: logits (3) and its two taps
AT_BYTES_PER_EXAMPLE = 4 * (3 + 8 * 8 * 6 + 4 * 4 * 6)


@pytest.fixture
def folder(tmp_path):
    return image_folder(tmp_path / "images", size=(8, 8))


def _load(folder, **kw):
    args = dict(batch_size=BATCH, augment=True, seed=SEED)
    return data_lib.load(folder, "train", **{**args, **kw})


def _spec(folder, **kw):
    args = dict(image_size=None, channels=None, augment=True, limit=None, seed=SEED)
    args.update(kw)
    return data_lib.data_spec(data_lib.info(folder), "train", **args)


def _teacher():
    keras.utils.set_random_seed(11)
    return tiny_cnn(width=6, num_classes=3, input_shape=(8, 8, 3), name="teacher")


def _build(path, teacher, folder, methods, views=2, **kw):
    taps, per_method = teacher_taps(teacher, methods)
    return build_teacher_cache(
        str(path), teacher,
        lambda v: _load(folder, shuffle=False, with_index=True, replay=data_lib.ReplayClock(v), views=views),
        num_examples=N, views=views, data=_spec(folder), taps=taps, method_taps=per_method,
        verbose=False, **kw)


def _images(ds):
    return [(np.asarray(x["image"] if isinstance(x, dict) else x), np.asarray(y)) for x, y in ds]


def test_replayed_epochs_are_rebuilt_exactly_and_views_cycle(folder):
    clock = data_lib.ReplayClock()
    ds = _load(folder, replay=clock, with_index=True, views=2)
    assert int(ds.cardinality()) == 4  # 27 examples in batches of 8
    epochs = [_images(ds) for _ in range(3)]
    assert clock.epoch == 2
    again = [_images(_load(folder, replay=True, with_index=True, views=2)) for _ in range(1)]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(epochs[0], again[0]))
    # another epoch: another order and other crops; epoch 2 replays view 0's crops
    assert not np.array_equal(epochs[0][0][0], epochs[1][0][0])

    def by_index(ds_epoch_clock_start):
        ds = _load(folder, replay=data_lib.ReplayClock(ds_epoch_clock_start), with_index=True, views=2)
        return {int(i): img for x, _ in ds for i, img in zip(np.asarray(x["index"]), np.asarray(x["image"]))}

    e0, e1, e2 = by_index(0), by_index(1), by_index(2)
    assert all(np.array_equal(e0[i], e2[i]) for i in range(N))
    assert any(not np.array_equal(e0[i], e1[i]) for i in range(N))


def test_clock_callback_starts_a_resumed_fit_at_its_epoch(folder):
    clock = data_lib.ReplayClock()
    seen = []

    class Probe(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(keras.layers.Flatten()(x["image"]))

        def train_step(self, data):
            seen.append(data[0]["index"])
            return {"n": tf.constant(0.0)}

    model = Probe()
    model.compile(optimizer="sgd", run_eagerly=True)
    ds = _load(folder, replay=clock, with_index=True)
    model.fit(ds, epochs=3, initial_epoch=1, verbose=0, callbacks=[clock.callback()])
    assert clock.epoch == 2
    order = [np.asarray(i).tolist() for i in seen]
    fresh = [np.asarray(x["index"]).tolist() for x, _ in _load(folder, replay=data_lib.ReplayClock(1), with_index=True)]
    assert order[:4] == fresh  # the resumed run's first epoch is epoch 1, not epoch 0


class Recorder(KD):
    """KD that records the teacher outputs it is fed at every step."""

    log: list = []

    def compute_loss(self, teacher, student, y, context=None):
        Recorder.log.append({k: np.asarray(v) for k, v in teacher.items()})
        return super().compute_loss(teacher, student, y, context)


def _train(teacher, folder, cache=None, epochs=2):
    Recorder.log = []
    keras.utils.set_random_seed(3)
    student = tiny_cnn(width=3, num_classes=3, input_shape=(8, 8, 3), name="student")
    methods = [Recorder(name="kd"), AT(weight=10.0)]
    if cache is None:
        ds = _load(folder, replay=True, with_index=True, views=2)
        distiller = kdkeras.Distiller(teacher, student, methods, student_loss_weight=0.1)
    else:
        ds = _load(folder, teacher_cache=cache)
        distiller = kdkeras.Distiller(None, student, methods, student_loss_weight=0.1, teacher_cache=cache)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), run_eagerly=True)
    history = distiller.fit(ds, epochs=epochs, verbose=0).history
    return Recorder.log, student.get_weights(), history


def test_cached_training_feeds_the_methods_what_the_online_teacher_computes(folder, tmp_path):
    teacher = _teacher()
    before = [w.copy() for w in teacher.get_weights()]
    cache = _build(tmp_path / "cache", teacher, folder, [KD(), AT()], views=2)
    assert cache.views == 2 and cache.num_examples == N
    assert set(cache.entries) == {"logits", "relu1", "relu2"} and cache.method_taps["at"] == ["relu1", "relu2"]
    online, w_online, h_online = _train(teacher, folder)
    cached, w_cached, h_cached = _train(teacher, folder, cache)
    assert len(online) == len(cached) == 8  # 4 steps x 2 epochs
    for a, b in zip(online, cached):
        assert set(a) == set(b) == {"logits", "relu1", "relu2"}
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-5)
    for a, b in zip(w_online, w_cached):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h_online["loss"], h_cached["loss"], rtol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights()))


def test_a_valid_cache_is_reused_and_a_stale_one_refused(folder, tmp_path):
    teacher = _teacher()
    path = tmp_path / "cache"
    first = _build(path, teacher, folder, [KD()], views=1)
    stamp = os.path.getmtime(path / "manifest.json")
    assert _build(path, teacher, folder, [KD()], views=1).fingerprint == first.fingerprint
    assert os.path.getmtime(path / "manifest.json") == stamp  # reused, not rebuilt
    changed = _teacher()
    changed.get_layer("logits").kernel.assign(changed.get_layer("logits").kernel + 0.1)
    with pytest.raises(CacheMismatchError, match="teacher_weights"):
        _build(path, changed, folder, [KD()], views=1)
    with pytest.raises(CacheMismatchError, match="views: cache has 1, asked for 2"):
        _build(path, teacher, folder, [KD()], views=2)
    # a pipeline of other data is refused: another seed (augmented), another image size
    with pytest.raises(CacheMismatchError, match="seed: cache has 5, asked for 6"):
        _load(folder, seed=6, teacher_cache=first)
    with pytest.raises(CacheMismatchError, match=r"image_size: cache has \[8, 8\], asked for \[6, 6\]"):
        _load(folder, image_size=(6, 6), teacher_cache=first)
    rebuilt = _build(path, changed, folder, [KD()], views=1, rebuild=True)
    assert rebuilt.fingerprint["teacher_weights"] != first.fingerprint["teacher_weights"]


def test_truncated_or_damaged_files_are_refused(folder, tmp_path):
    path = tmp_path / "cache"
    _build(path, _teacher(), folder, [KD()], views=1)
    data_file = path / "view000" / "logits.values.bin"
    raw = data_file.read_bytes()
    data_file.write_bytes(raw[:-4])
    with pytest.raises(CacheCorruptError, match=f"{len(raw) - 4} bytes, the manifest says {len(raw)}"):
        TeacherCache.open(str(path))
    data_file.write_bytes(raw[:10] + bytes([raw[10] ^ 1]) + raw[11:])
    with pytest.raises(CacheCorruptError, match="CRC-32"):
        TeacherCache.open(str(path))
    data_file.write_bytes(raw)
    assert TeacherCache.open(str(path)).num_examples == N


def test_an_interrupted_build_leaves_nothing_valid_and_a_rerun_continues(folder, tmp_path):
    teacher, path, calls = _teacher(), tmp_path / "cache", []
    taps, per_method = teacher_taps(teacher, [KD()])

    def views(v, fail_at=None):
        calls.append(v)
        if v == fail_at:
            raise KeyboardInterrupt("killed")
        return _load(folder, shuffle=False, with_index=True, replay=data_lib.ReplayClock(v), views=3)

    common = dict(num_examples=N, views=3, data=_spec(folder), taps=taps, method_taps=per_method, verbose=False)
    with pytest.raises(KeyboardInterrupt):
        build_teacher_cache(str(path), teacher, lambda v: views(v, fail_at=2), **common)
    assert not (path / "manifest.json").exists()
    with pytest.raises(CacheError, match="interrupted build"):
        TeacherCache.open(str(path))
    calls.clear()
    cache = build_teacher_cache(str(path), teacher, views, **common)
    assert calls == [2]  # views 0 and 1 were kept
    assert not os.path.exists(str(path) + ".partial")
    whole = build_teacher_cache(str(tmp_path / "whole"), teacher, views, **common)
    for v in range(3):
        got, want = cache.read(v, np.arange(N)), whole.read(v, np.arange(N))
        np.testing.assert_array_equal(got["logits"], want["logits"])


def test_size_is_planned_before_building_and_a_limit_refused(folder, tmp_path, capsys):
    with pytest.raises(CacheError, match=r"relu1 \[8, 8, 6\].*above max_bytes=1000"):
        _build(tmp_path / "big", _teacher(), folder, [AT()], views=2, max_bytes=1000)
    assert not os.path.exists(tmp_path / "big.partial")
    assert f"x {AT_BYTES_PER_EXAMPLE} bytes" in capsys.readouterr().out


def test_a_cache_larger_than_the_free_disk_is_refused_before_writing(folder, tmp_path, monkeypatch):
    import collections
    import shutil
    total = AT_BYTES_PER_EXAMPLE * N * 2
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * total, 9 * total, total - 1))
    with pytest.raises(CacheError, match=rf"would take .*relu1 \[8, 8, 6\].*\({total - 1} bytes\) free"):
        _build(tmp_path / "big", _teacher(), folder, [AT()], views=2)
    assert not os.path.exists(tmp_path / "big.partial")
    assert not os.path.exists(tmp_path / "big")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * total, 9 * total, total))
    cache = _build(tmp_path / "big", _teacher(), folder, [AT()], views=2)
    assert cache.num_examples == N


def test_topk_with_every_class_is_float32_and_fewer_spread_the_rest():
    z = np.random.default_rng(0).normal(size=(5, 7)).astype("float32") * 3
    cols = {k: tf.constant(v) for k, v in encode("logits", z, "topk", 7).items()}
    np.testing.assert_array_equal(decode("logits", cols, "topk", (7,)).numpy(), z)
    cols = {k: tf.constant(v) for k, v in encode("logits", z, "topk", 3).items()}
    back = decode("logits", cols, "topk", (7,)).numpy()
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(back - back.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    top = np.argsort(-z, axis=-1)[:, :3]
    # the kept classes keep their probabilities; the others share the rest evenly
    np.testing.assert_allclose(np.take_along_axis(q, top, -1), np.take_along_axis(p, top, -1), rtol=1e-4)
    rest = 1 - np.take_along_axis(p, top, -1).sum(-1)
    others = np.ones_like(q, bool)
    np.put_along_axis(others, top, False, -1)
    np.testing.assert_allclose(q[others].reshape(5, 4), np.repeat(rest[:, None] / 4, 4, 1), rtol=1e-4)
    half = encode("relu1", z, "float16", None)["values"]
    assert half.dtype == np.float16 and np.allclose(half, z, rtol=1e-3)


def test_methods_the_cache_cannot_serve_are_refused(folder, tmp_path):
    teacher = _teacher()
    with pytest.raises(CacheError, match="gradients"):
        teacher_taps(teacher, [AT(mode="gradient")])
    cache = _build(tmp_path / "cache", teacher, folder, [KD()], views=1)
    student = tiny_cnn(width=3, num_classes=3, input_shape=(8, 8, 3), name="student")
    with pytest.raises(ValueError, match="without method 'at'"):
        kdkeras.Distiller(None, student, [KD(), AT()], teacher_cache=cache)
    with pytest.raises(ValueError, match=r"\['relu1'\], which the teacher cache"):
        kdkeras.Distiller(None, student, [AT(teacher_layers=["relu1"], student_layers=["relu1"])],
                          teacher_cache=cache)


def test_one_view_of_augmented_data_warns_and_fewer_views_say_they_cycle(capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_views(1, 5, augment=True)
        warn_views(1, 5, augment=False)
    assert len(caught) == 1 and "one fixed" in str(caught[0].message)
    warn_views(2, 5, augment=True)
    assert "epoch e replays view e mod 2" in capsys.readouterr().out


def test_distiller_with_a_cache_saves_and_loads(folder, tmp_path):
    cache = _build(tmp_path / "cache", _teacher(), folder, [KD()], views=2)
    student = tiny_cnn(width=3, num_classes=3, input_shape=(8, 8, 3), name="student")
    distiller = kdkeras.Distiller(None, student, [KD()], teacher_cache=cache)
    distiller.compile(optimizer="sgd", run_eagerly=True)
    distiller.fit(_load(folder, teacher_cache=cache), epochs=1, verbose=0)
    distiller.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert loaded.teacher is None and loaded.teacher_cache.path == cache.path
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(loaded.student(x), student(x), atol=1e-6)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["plan"]["total_bytes"] == N * 2 * 4 * 3


def test_a_sweep_cache_serves_a_run_that_reads_fewer_taps_only_those(folder, tmp_path):
    teacher, path = _teacher(), tmp_path / "cache"
    union = _build(path, teacher, folder, [KD(), AT()], views=1)
    stamp = os.path.getmtime(path / "manifest.json")
    logits_only = _build(path, teacher, folder, [KD()], views=1)  # fewer taps: reused, not stale
    assert os.path.getmtime(path / "manifest.json") == stamp
    assert set(logits_only.entries) == {"logits", "relu1", "relu2"}
    kd_view = union.select([])
    assert set(kd_view.entries) == {"logits"} and set(kd_view.method_taps) == {"kd"}
    assert kd_view.bytes_per_example_view == 3 * 4 < union.bytes_per_example_view
    assert set(kd_view.read(0, [0, 5])) == {"logits"}
    np.testing.assert_array_equal(kd_view.read(0, [0, 5])["logits"], union.read(0, [0, 5])["logits"])
    batch = next(iter(_load(folder, teacher_cache=union.select(["relu1"]))))[0]
    assert set(batch["teacher"]) == {"logits", "relu1"}
    with pytest.raises(CacheError, match=r"holds no \['conv9'\]"):
        union.select(["conv9"])
    _build(tmp_path / "kd_only", teacher, folder, [KD()], views=1)
    with pytest.raises(CacheMismatchError, match="taps"):  # more taps than it holds: stale
        _build(tmp_path / "kd_only", teacher, folder, [KD(), AT()], views=1)


def test_cache_views_are_built_over_the_batches_of_their_training_epoch(folder, tmp_path):
    """Epoch v's own batches (order, crops, batch size): a partial batch then holds the
    same images as in training, where CPU kernels may round its last image differently."""
    from kdkeras import experiment

    config = experiment.RunConfig(dataset=folder, batch_size=BATCH, epochs=2, augment=True, seed=SEED,
                                  output_dir=str(tmp_path / "out"))
    data = experiment.setup_data(config, with_index=True)
    train_split, test_split = data.info.train_split, data.info.test_split
    for view in range(2):
        epoch = _images_with_index(data.train)  # the training pipeline's next epoch
        built = _images_with_index(experiment.cache_view_pipeline(data, train_split, view, views=2))
        assert [i for i, _ in epoch] == [i for i, _ in built]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(epoch, built))
    test = [np.asarray(y) for _, y in data.test]
    built = [np.asarray(y) for _, y in experiment.cache_view_pipeline(data, test_split, 0, views=1)]
    assert all(np.array_equal(a, b) for a, b in zip(test, built))


def _images_with_index(ds):
    return [(np.asarray(x["index"]).tolist(), np.asarray(x["image"])) for x, _ in ds]

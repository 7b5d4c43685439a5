"""Bad input gets a clear error naming the value and what is accepted, never a
silently wrong model (issue 13, A): each case once trained to the end or failed
with a message that did not say what to do."""

import dataclasses
import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import kdkeras
from kdkeras import experiment, recipe_utils, training
from kdkeras.data import sources
from kdkeras.methods import CRD, FT, KD
from tests.helpers import TINY, image_folder, needs_fashion_mnist, run_recipe, tiny_cnn, tiny_data


def _dataset(x, y, batch=8, index=None):
    features = x if index is None else {"image": x, "index": index}
    return tf.data.Dataset.from_tensor_slices((features, y)).batch(batch)


def _distiller(methods=None, teacher=None, student=None, **kwargs):
    teacher = teacher or tiny_cnn(name="teacher")
    student = student or tiny_cnn(width=2, name="student")
    distiller = kdkeras.Distiller(teacher, student, methods or [KD()], **kwargs)
    distiller.compile(optimizer=keras.optimizers.SGD(0.01), run_eagerly=True)
    return distiller


# -- models and methods -------------------------------------------------------------------
def test_a_teacher_ending_in_softmax_is_refused():
    inp = keras.Input((8, 8, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    probabilities = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="probs")(x))
    with pytest.raises(ValueError, match=r"teacher .* ends in a softmax .*'probs'.*logits"):
        kdkeras.Distiller(probabilities, tiny_cnn(name="student"), [KD()])
    layer = keras.Model(inp, keras.layers.Softmax(name="sm")(keras.layers.Dense(3)(x)))
    with pytest.raises(ValueError, match="softmax"):
        kdkeras.Distiller(layer, tiny_cnn(name="student2"), [KD()])


def test_the_same_model_as_teacher_and_student_is_refused():
    net = tiny_cnn()
    with pytest.raises(ValueError, match="same model object.*clone_model"):
        kdkeras.Distiller(net, net, [KD()])


@pytest.mark.parametrize("make, match", [
    (lambda: KD(weight=float("nan")), r"kd weight must be a finite number >= 0, got nan"),
    (lambda: KD(weight=-1), r"kd weight .* got -1"),
    (lambda: kdkeras.methods.FitNet(weight=float("inf")), r"fitnet weight .* got inf"),
    (lambda: kdkeras.methods.from_spec("kd", "kd.weight=abc"), r"'kd'.*weight.*'abc'"),
    (lambda: _distiller(student_loss_weight=-1), r"student_loss_weight .* >= 0, got -1"),
    (lambda: CRD(num_examples=0), r"num_examples .* >= 1; got 0"),
    (lambda: kdkeras.models.get("resnet8", (8, 8, 1), 3, width_multiplier=0), r"width_multiplier .* > 0.*got 0"),
    (lambda: kdkeras.models.get("mobilenetv2", (32, 32, 3), 3, alpha=-1), r"alpha .* > 0.*got -1"),
    (lambda: experiment.RunConfig(epochs=0), r"epochs must be an int >= 1, got 0"),
    (lambda: training.TrainConfig(epochs=-1), r"epochs .* got -1"),
    (lambda: training.TrainConfig(lr=-1.0), r"lr must be a finite number > 0, got -1"),
    (lambda: training.TrainConfig(lr=float("nan")), r"lr .* got nan"),
])
def test_bad_numbers_of_the_python_api_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_init_epochs_zero_is_refused_not_replaced():
    with pytest.raises(ValueError, match=r"init_epochs .* >= 1, got 0"):
        experiment.distill(tiny_cnn(name="t"), tiny_cnn(name="s"), [FT()], None,
                           experiment.RunConfig(epochs=2), init_epochs=0)


@pytest.mark.parametrize("bad", ["--epochs=0", "--epochs=-1", "--lr=-1", "--init_epochs=0",
                                 "--student_loss_weight=-1"])
def test_bad_flags_are_refused_by_name(bad):
    fv = flags.FlagValues()
    recipe_utils.define_distill_flags(fv)
    recipe_utils.define_run_flags(fv)
    with pytest.raises(flags.IllegalFlagValueError, match=bad.split("=")[0].lstrip("-")):
        fv(["distill.py", bad])


# -- labels ------------------------------------------------------------------------------------
def test_float_labels_are_refused():
    x, y = tiny_data(16)
    with pytest.raises(ValueError, match=r"integer class ids in \[0, 3\), got dtype float32"):
        _distiller().fit(_dataset(x, y.astype("float32")), epochs=1, verbose=0)


def test_labels_outside_the_classes_fail_at_the_first_batch():
    x, y = tiny_data(16)
    y[3] = 7
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids in \[0, 3\)"):
        _distiller().fit(_dataset(x, y), epochs=1, verbose=0)


def test_one_hot_labels_with_the_sparse_loss_say_what_to_do():
    x, y = tiny_data(16)
    with pytest.raises(ValueError, match=r"one-hot.*CategoricalCrossentropy"):
        _distiller().fit(_dataset(x, np.eye(3, dtype="float32")[y]), epochs=1, verbose=0)


@pytest.mark.parametrize("bad", [20, -1])
def test_crd_index_outside_its_banks_is_named(bad):
    x, y = tiny_data(16)
    index = np.arange(16)
    index[5] = bad
    distiller = _distiller([CRD(num_examples=16, feat_dim=4, num_negatives=4)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must lie in \[0, 16\)"):
        distiller.fit(_dataset(x, y, index=index), epochs=1, verbose=0)


# -- non-finite losses -------------------------------------------------------------------------
def test_a_nan_pixel_stops_training_naming_epoch_and_batch(tmp_path):
    x, y = tiny_data(32)
    x[12, 3, 3, 0] = np.nan  # batch 2 of 4 (batches of 8)
    distiller = _distiller()
    before = [w.copy() for w in distiller.student.get_weights()]
    config = training.TrainConfig(epochs=2, lr=0.01, verbose=0, run_eagerly=True)
    with pytest.raises(training.NonFiniteLossError, match=r"epoch 1, batch 2"):
        training.compile_and_fit(distiller, _dataset(x, y), None, config, str(tmp_path))
    after = distiller.student.get_weights()
    assert all(np.isfinite(w).all() for w in after)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # the weights of epoch 1's start


@pytest.mark.e2e
@needs_fashion_mnist
def test_the_distill_recipe_saves_nothing_after_a_nan(tmp_path, monkeypatch):
    setup = experiment.setup_data

    def poisoned(*args, **kwargs):
        data = setup(*args, **kwargs)
        nan = tf.constant(np.nan, tf.float32)
        train = data.train.map(lambda x, y: (tf.tensor_scatter_nd_update(x, [[0, 0, 0, 0]], [nan]), y))
        return dataclasses.replace(data, train=train)

    monkeypatch.setattr(experiment, "setup_data", poisoned)
    with pytest.raises(training.NonFiniteLossError, match="epoch 1, batch 1"):
        run_recipe("distill", "--teacher=none", "--method=lsr", f"--output_dir={tmp_path}", *TINY)
    assert not (tmp_path / "student.keras").exists() and not (tmp_path / "metrics.json").exists()


# -- data ------------------------------------------------------------------------------------
def test_image_size_and_channels_overridden_by_the_teacher_are_warned(tmp_path):
    name = image_folder(tmp_path, classes=2, per_class=4)
    config = experiment.RunConfig(dataset=name, image_size=16, channels=1, batch_size=4)
    with pytest.warns(UserWarning, match=r"image_size=16 and channels=1 ignored.*8x8x3"):
        data = experiment.setup_data(config, input_shape=(8, 8, 3))
    assert data.input_shape == (8, 8, 3)


def test_train_limit_on_a_folder_keeps_every_class_and_the_same_subset(tmp_path):
    source = sources.get_source(image_folder(tmp_path, classes=3, per_class=10))
    labels = [source.raw("train", limit=6).dataset.map(lambda p, y: y) for _ in range(2)]
    first, second = ([int(v) for v in ds] for ds in labels)
    assert sorted(first) == [0, 0, 1, 1, 2, 2] and first == second
    paths = [p.numpy() for p, _ in source.raw("train", limit=6).dataset]
    assert paths == [p.numpy() for p, _ in source.raw("train", limit=6).dataset]


def test_a_truncated_jpeg_is_named(tmp_path):
    root = tmp_path / "data"
    image_folder(root, classes=2, per_class=3)
    bad = root / "class1" / "broken.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    bad.write_bytes(tf.io.encode_jpeg(noise).numpy()[:-10])
    with pytest.raises(ValueError, match=r"broken\.jpg.*truncated"):
        sources.get_source(f"folder:{root}")


def test_an_unprepared_tfds_dataset_offline_fails_at_once(monkeypatch):
    class Image:
        shape = (8, 8, 3)

    class ClassLabel:
        num_classes, names = 3, ["a", "b", "c"]

    def no_download():
        raise AssertionError("must not try to download offline")

    builder = types.SimpleNamespace(
        info=types.SimpleNamespace(splits={}, supervised_keys=("image", "label"),
                                   features={"image": Image(), "label": ClassLabel()}),
        download_and_prepare=no_download)
    fake = types.SimpleNamespace(builder=lambda name, data_dir=None: builder,
                                 features=types.SimpleNamespace(Image=Image, ClassLabel=ClassLabel))
    monkeypatch.setattr(sources.tfds, "_import_tfds", lambda: fake)
    monkeypatch.setattr(sources.tfds, "network_reachable", lambda *a, **k: False)
    with pytest.raises(sources.DatasetUnavailableError, match=r"'some_set' is not prepared.*unreachable"):
        sources.TfdsSource("some_set")


# -- files ---------------------------------------------------------------------------------------
def test_a_file_that_is_not_a_keras_model_is_named(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("not a model")
    with pytest.raises(ValueError, match=r"model\.keras' exists but is not a Keras model file"):
        training.load_model(str(path))


def test_exporting_the_distiller_points_at_its_student(tmp_path):
    from kdkeras.export import export_tflite

    with pytest.raises(TypeError, match=r"distiller\.student"):
        export_tflite(_distiller(), str(tmp_path / "d.tflite"))


def test_a_resume_with_other_settings_is_refused_naming_them(tmp_path):
    out = str(tmp_path)
    first = experiment.run_settings(experiment.RunConfig(epochs=2, lr=0.05), experiment.DistillSpec(init_epochs=1))
    experiment.check_output_dir(out, first)
    os.makedirs(tmp_path / "stages" / "00_init")
    experiment.check_output_dir(out, first)  # the same settings resume
    other = experiment.run_settings(experiment.RunConfig(epochs=3, lr=0.1), experiment.DistillSpec(init_epochs=2))
    with pytest.raises(ValueError, match=r"\['stages'\].*epochs: 2 then, 3 now.*init_epochs: 1 then, 2 now"
                                         r".*lr: 0.05 then, 0.1 now.*--overwrite"):
        experiment.check_output_dir(out, other)
    experiment.check_output_dir(out, other, overwrite=True)
    assert not (tmp_path / "stages").exists()
    experiment.check_output_dir(out, other)  # recorded: the new settings are the run's now

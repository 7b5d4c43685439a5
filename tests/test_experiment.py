"""The run layer (kdkeras.experiment), the recipe flags (recipe_utils) and the
data helpers the recipes share, on tiny image folders made here: fast, no e2e."""

import json

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import kdkeras
from kdkeras import data as data_lib
from kdkeras import experiment, recipe_utils, training
from kdkeras.methods.registry import parse_kwargs, parse_method_args
from tests.helpers import image_folder, tiny_cnn

CLASSES = 3


@pytest.fixture
def folder(tmp_path):
    """An unsplit RGB folder: 3 classes x 10 random 8x8 images (the last of each class held out)."""
    return image_folder(tmp_path / "images", classes=CLASSES)


def _config(folder, tmp_path, **kw):
    return experiment.RunConfig(dataset=folder, batch_size=8, epochs=1, run_eagerly=True,
                                output_dir=str(tmp_path / "out"), **kw)


def test_setup_data_sizes_channels_and_a_models_input_win(folder, tmp_path):
    data = experiment.setup_data(_config(folder, tmp_path, image_size=6, channels=1))
    x, y = next(iter(data.train))
    assert data.input_shape == (6, 6, 1) and x.shape[1:] == (6, 6, 1)
    assert data.num_train == 27 and data.num_classes == CLASSES  # 3 of 30 held out
    # a model's input wins over the flags
    data = experiment.setup_data(_config(folder, tmp_path, image_size=6, train_limit=5), (4, 4, 3),
                                 with_index=True)
    x, _ = next(iter(data.train))
    assert data.num_train == 5 and x["image"].shape[1:] == (4, 4, 3)
    assert sorted(x["index"].numpy().tolist()) == [0, 1, 2, 3, 4]
    cal = data.load(augment=False, shuffle=False, with_index=False)
    assert next(iter(cal))[0].shape[1:] == (4, 4, 3)


def test_distill_uses_the_methods_ce_weight_and_reports_a_true_top1(folder, tmp_path):
    config = _config(folder, tmp_path)
    data = experiment.setup_data(config)
    teacher = tiny_cnn(width=6, num_classes=CLASSES, input_shape=(8, 8, 3), name="teacher")
    student = tiny_cnn(width=3, num_classes=CLASSES, input_shape=(8, 8, 3), name="student")
    before = [w.copy() for w in teacher.get_weights()]
    out = experiment.distill(teacher, student, [kdkeras.methods.KD()], data, config)
    assert out["student_loss_weight"] == 0.1
    assert out["top1"] == pytest.approx(training.evaluate_top1(student, data.test))
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights()))
    out = experiment.distill(None, student, [kdkeras.methods.LSR()], data, config,
                             student_loss_weight=0.5)
    assert out["student_loss_weight"] == 0.5


def test_get_teacher_none_a_saved_one_and_an_adapted_input(folder, tmp_path):
    data = experiment.setup_data(_config(folder, tmp_path, image_size=12))
    assert experiment.get_teacher("none", data) is None and experiment.get_teacher(None, data) is None
    saved = tmp_path / "zoo" / f"{data.config.dataset}_tinynet" / "model.keras"
    saved.parent.mkdir(parents=True)
    tiny_cnn(width=4, num_classes=CLASSES, input_shape=(8, 8, 1), name="tinynet").save(saved)
    teacher = experiment.get_teacher("tinynet", data, saved_dir=str(tmp_path / "zoo"))
    assert teacher.source == str(saved) and teacher.trained_epochs is None
    assert teacher.model.input_shape[1:] == (12, 12, 3)
    assert teacher.top1 == pytest.approx(training.evaluate_top1(teacher.model, data.test))


def test_adapt_input_resizes_and_takes_luminance():
    model = tiny_cnn(width=4, num_classes=CLASSES, input_shape=(4, 4, 1))
    assert kdkeras.models.adapt_input(model, (4, 4, 1)) is model
    adapted = kdkeras.models.adapt_input(model, (8, 8, 3))
    x = np.random.default_rng(1).random((2, 8, 8, 3)).astype("float32")
    grey = np.tensordot(x, [0.2989, 0.5870, 0.1140], axes=([-1], [0]))[..., None]
    small = tf.image.resize(grey, (4, 4)).numpy()
    np.testing.assert_allclose(adapted(x), model(small), atol=1e-4)


def _parse(define, *argv):
    values = flags.FlagValues()
    define(values)
    values(["recipe", *argv])
    return values


def _define_all(values):
    recipe_utils.define_distill_flags(values)
    recipe_utils.define_run_flags(values)


def test_flags_become_configs():
    v = _parse(_define_all, "--channels=3", "--augment=off", "--epochs=3", "--lr=0.2",
               "--student_args=width_multiplier=0.5,dropout=0.1", "--method=kd+at",
               "--method_args=at.weight=500", "--run_eagerly")
    config, spec = recipe_utils.run_config(v), recipe_utils.distill_spec(v, input_shape=(8, 8, 3))
    assert (config.channels, config.augment, config.epochs, config.lr, config.run_eagerly) == (3, False, 3, 0.2, True)
    assert config.train_config().run_eagerly and config.train_config(7).epochs == 7
    assert spec.student_args == {"width_multiplier": 0.5, "dropout": 0.1}
    assert spec.method == "kd+at" and spec.input_shape == (8, 8, 3) and spec.student_loss_weight is None
    assert recipe_utils.run_config(_parse(_define_all)).augment is None


def test_deterministic_flag_turns_on_deterministic_kernels_after_seeding(tmp_path, monkeypatch):
    import tensorflow as tf

    calls = []
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism",
                        lambda: calls.append(np.random.get_state()[1][0]))
    experiment.start(recipe_utils.run_config(_parse(_define_all, f"--output_dir={tmp_path / 'a'}")))
    assert calls == []  # off by default: CPU runs are deterministic without it
    config = recipe_utils.run_config(_parse(_define_all, "--deterministic", "--seed=3",
                                            f"--output_dir={tmp_path / 'b'}"))
    assert config.deterministic
    experiment.start(config)
    np.random.seed(3)
    assert calls == [np.random.get_state()[1][0]]  # called once, with the seeds already set
    assert "deterministic" not in experiment.run_settings(config)  # resuming may switch it


@pytest.mark.parametrize("bad", ["--epochs=0", "--lr=-1", "--batch_size=0", "--channels=2",
                                 "--student_loss_weight=-0.5", "--init_epochs=0", "--optimizer=sgdd"])
def test_bad_flags_are_refused_by_name(bad):
    with pytest.raises(flags.IllegalFlagValueError, match=bad.split("=")[0].lstrip("-")):
        _parse(_define_all, bad)


def test_key_value_parsers():
    assert parse_kwargs("a=1, b=0.5,c=true,d=none,e=relu") == {"a": 1, "b": 0.5, "c": True, "d": None, "e": "relu"}
    assert parse_kwargs("") == {}
    assert parse_method_args("kd.temperature=2,AT.weight=500") == {"kd": {"temperature": 2}, "at": {"weight": 500}}
    with pytest.raises(ValueError, match="'width_multiplier'"):
        parse_kwargs("width_multiplier")
    with pytest.raises(ValueError, match="METHOD.ARG=VALUE"):
        parse_method_args("temperature=2")


def test_write_results_and_markdown_table(tmp_path):
    table = kdkeras.vis.markdown_table(["name", "value"], [["a|b", 0.5], ["c", 2]], align="lr")
    assert table.splitlines() == ["| name | value |", "|---|---:|", "| a\\|b | 0.5000 |", "| c | 2 |"]
    with pytest.raises(ValueError, match="'lrr'"):
        kdkeras.vis.markdown_table(["a", "b"], [], align="lrr")
    page = experiment.write_results(str(tmp_path), "exp", "Title", [("Results", [table])], {"x": np.float32(1.5)})
    assert open(page).read().startswith("# Title") and table in open(page).read()
    assert json.loads((tmp_path / "exp.json").read_text()) == {"x": 1.5}


def _indexed(n, batch=4):
    images = np.arange(n, dtype="float32").reshape(n, 1, 1, 1)
    ds = tf.data.Dataset.from_tensor_slices(({"image": images, "index": np.arange(n)}, np.zeros(n, "int32")))
    return ds.batch(batch)


def test_resampled_bootstrap_and_half_follow_their_seed():
    n, seed = 20, 3
    boot = data_lib.resampled(_indexed(n), n, "bootstrap", seed, batch_size=8)
    drawn = sorted(int(v) for x, _ in boot for v in x.numpy().reshape(-1))
    expected = sorted(np.random.default_rng(seed).integers(0, n, n).tolist())
    assert drawn == expected and tf.data.experimental.cardinality(boot.unbatch()) != 0
    half = [int(v) for x, _ in data_lib.resampled(_indexed(n), n, "half", seed, 8) for v in x.numpy().reshape(-1)]
    keep = np.flatnonzero(np.random.default_rng(seed).permutation(n) < (n + 1) // 2).tolist()
    assert half == keep
    with pytest.raises(ValueError, match="'jackknife'"):
        data_lib.resampled(_indexed(n), n, "jackknife", seed, 8)


def test_noisy_labels_flip_the_seeded_fraction():
    n, seed = 50, 4
    clean = data_lib.noisy_labels(_indexed(n), n, 10, 0.0, seed)
    assert [int(v) for _, y in clean for v in y] == [0] * n
    noisy = [int(v) for _, y in data_lib.noisy_labels(_indexed(n), n, 10, 1.0, seed) for v in y]
    rng = np.random.default_rng(seed)
    rng.random(n)
    assert noisy == rng.integers(0, 10, n).tolist()
    with pytest.raises(ValueError, match="1.5"):
        data_lib.noisy_labels(_indexed(n), n, 10, 1.5, seed)

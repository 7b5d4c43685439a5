"""The run layer (kdkeras.experiment), the recipe flags (recipe_utils) and the
data helpers the recipes share, on tiny image folders made here: fast, no e2e."""

import json

import keras
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


def test_model_input_shape_reads_the_saved_config_and_falls_back_to_loading(tmp_path, monkeypatch):
    functional = str(tmp_path / "f.keras")
    tiny_cnn(width=4, num_classes=CLASSES, input_shape=(8, 6, 1)).save(functional)
    sequential = str(tmp_path / "s.keras")
    keras.Sequential([keras.Input((5, 7, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]).save(sequential)
    loads = []
    monkeypatch.setattr(training, "load_model", lambda path: loads.append(path) or keras.models.load_model(path))
    assert experiment.model_input_shape(functional) == (8, 6, 1) and loads == []  # no model built
    assert experiment.model_input_shape(sequential) == (5, 7, 3) and loads == [sequential]


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
    nested = {"kd": {"temperature": 2}}
    parsed = parse_method_args(nested)  # the nested form as it is, each method's dict a copy
    assert parsed == nested and parsed["kd"] is not nested["kd"]
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


# -- settings declared once ------------------------------------------------------------------
def _flagged():
    from kdkeras.settings import flag_fields

    return {f.name: (cls, f, meta) for cls in (experiment.RunConfig, experiment.DistillSpec)
            for f, meta in flag_fields(cls)}


def test_every_flagged_setting_is_a_flag_with_its_help_and_bound():
    from kdkeras.settings import flag_kind

    values = flags.FlagValues()
    _define_all(values)
    declared = _flagged()
    assert set(values) == set(declared)  # each flag from one field, each flagged field a flag
    assert not {"momentum", "verbose", "input_shape", "teacher_args", "saved_dir"} & set(values)
    bounded = 0
    for name, (cls, field, meta) in declared.items():
        assert values[name].help.endswith(meta.help), name  # (an enum's help starts with its choices)
        if meta.lower_bound is None:
            continue
        below = meta.lower_bound - (0.5 if flag_kind(cls, field) == "float" else 1)
        with pytest.raises(flags.IllegalFlagValueError, match=name):
            _parse(_define_all, f"--{name}={below:g}")
        _parse(_define_all, f"--{name}={meta.lower_bound:g}")  # the bound itself is accepted
        bounded += 1
    assert bounded >= 10


def test_flag_text_becomes_the_fields_value_and_the_cache_settings_keep_their_flag_names():
    v = _parse(_define_all, "--channels=1", "--augment=on", "--teacher_cache=c", "--teacher_cache_views=2",
               "--teacher_cache_storage=topk", "--teacher_cache_top_k=3", "--teacher_cache_max_gb=0.5",
               "--rebuild_teacher_cache", "--teacher_cache_methods=kd,at")
    config, spec = recipe_utils.run_config(v), recipe_utils.distill_spec(v)
    assert (config.channels, config.augment) == (1, True)
    assert (spec.teacher_cache, spec.teacher_cache_views, spec.teacher_cache_storage, spec.teacher_cache_top_k,
            spec.teacher_cache_max_gb, spec.rebuild_teacher_cache, spec.teacher_cache_methods) == (
        "c", 2, "topk", 3, 0.5, True, "kd,at")
    assert recipe_utils.distill_spec(_parse(_define_all)).teacher_cache_methods == ""


def test_an_unknown_override_is_refused_by_name():
    v = _parse(_define_all, "--teacher_cache_views=3")
    with pytest.raises(TypeError, match=r"DistillSpec setting\(s\) \['cache_views'\].*teacher_cache_views"):
        recipe_utils.distill_spec(v, cache_views=2)
    with pytest.raises(TypeError, match=r"\['epoch'\]"):
        recipe_utils.run_config(v, epoch=2)
    assert recipe_utils.distill_spec(v).teacher_cache_views == 3
    assert recipe_utils.distill_spec(v, teacher_cache_views=2).teacher_cache_views == 2  # an override wins


def test_a_recipe_with_only_some_shared_flags_gets_the_rest_from_the_defaults():
    def define(fv):  # as recipes/visualize.py: the data flags and its own --output_dir
        recipe_utils.define_data_flags(fv)
        flags.DEFINE_string("output_dir", "runs/visual", "Where the report goes.", flag_values=fv)

    config = recipe_utils.run_config(_parse(define, "--channels=3", "--seed=4"), train_limit=1)
    assert (config.channels, config.seed, config.train_limit, config.output_dir) == (3, 4, 1, "runs/visual")
    assert config.epochs == experiment.RunConfig().epochs and config.lr == experiment.RunConfig().lr
    values = flags.FlagValues()
    recipe_utils.define_method_flags(values)  # as recipes/qat_distill.py
    values(["qat", "--method=kd+at"])
    spec = recipe_utils.distill_spec(values)
    assert spec.method == "kd+at" and spec.student == experiment.DistillSpec().student


def test_the_resume_fingerprint_leaves_out_exactly_the_fields_marked_so():
    import dataclasses

    config, spec = experiment.RunConfig(), experiment.DistillSpec()
    every = {f.name for part in (config, spec) for f in dataclasses.fields(part)}
    left_out = {"output_dir", "verbose", "tensorboard", "backup", "run_eagerly", "overwrite", "strategy",
                "deterministic", "sync_batchnorm", "baseline", "saved_dir", "teacher_cache_max_gb",
                "rebuild_teacher_cache", "teacher_cache_methods"}
    settings = experiment.run_settings(config, spec, {"model": "resnet8"})
    assert set(settings) == (every - left_out) | {"model"}
    for name, value in (("rebuild_teacher_cache", True), ("teacher_cache_methods", "at"), ("baseline", True)):
        assert experiment.run_settings(config, dataclasses.replace(spec, **{name: value})) == \
            experiment.run_settings(config, spec)
    changed = experiment.run_settings(config, dataclasses.replace(spec, teacher_cache_views=2))
    assert changed["teacher_cache_views"] == 2


# -- run-length defaults --------------------------------------------------------------------
def test_run_length_defaults_come_from_the_method_class(monkeypatch):
    from kdkeras.methods import DKD, KD

    assert experiment.run_length_args("dkd", "")[1] == {"dkd": {"warmup_fraction": pytest.approx(1 / 12)}}
    monkeypatch.setattr(DKD, "run_length_defaults", {"warmup_fraction": 0.5})
    assert experiment.run_length_args("kd+dkd", "")[1] == {"dkd": {"warmup_fraction": 0.5}}
    assert experiment.run_length_note("dkd", {"warmup_fraction": 0.5}, 5) == (
        "dkd: scaled to the run's length (5 epochs): {'warmup_fraction': 0.5} "
        "(set dkd.warmup_epochs or warmup_fraction to fix it instead)")
    # any class that declares one gets it, left unset when the user gives one of its arguments
    monkeypatch.setattr(KD, "run_length_defaults", {"temperature": 3.0})
    args, added = experiment.run_length_args("kd+dkd", "kd.temperature=2")
    assert added == {"dkd": {"warmup_fraction": 0.5}} and args["kd"] == {"temperature": 2}
    assert experiment.run_length_args("kd", "")[1] == {"kd": {"temperature": 3.0}}
    # names that are no method (bias_variance's "ce") are left to the caller
    assert experiment.run_length_args("ce+dkd", "")[1] == {"dkd": {"warmup_fraction": 0.5}}


# -- the teacher cache of a run --------------------------------------------------------------
def test_a_run_cache_leaves_the_methods_alone_and_serves_a_method_its_build_did_not_name(folder, tmp_path):
    from kdkeras.methods import AT, NST

    config = _config(folder, tmp_path)
    data = experiment.setup_data(config, with_index=True)
    teacher = tiny_cnn(width=6, num_classes=CLASSES, input_shape=(8, 8, 3), name="teacher")
    at = AT()
    cache = experiment.teacher_cache_for(str(tmp_path / "cache" / "train"), teacher, [at], data,
                                         data.info.train_split)
    assert at.teacher_layers is None  # the run layer resolves taps for the cache, never on the method
    assert cache.method_taps == {"at": at.default_taps(teacher, "teacher")}
    # NST taps the same layers: the AT cache serves it (named for it in the run's view of the cache)
    nst = NST()
    spec = experiment.DistillSpec(teacher="t", teacher_cache=str(tmp_path / "cache"))
    cached = experiment.with_teacher_cache(
        spec, config, experiment.Teacher(teacher, None, "t", input_shape=(8, 8, 3)), [nst], data)
    assert nst.teacher_layers is None and cached.train_cache.method_taps["nst"] == cache.method_taps["at"]
    student = tiny_cnn(width=3, num_classes=CLASSES, input_shape=(8, 8, 3), name="student")
    out = experiment.distill(None, student, [nst], cached.data, config, teacher_cache=cached.train_cache)
    assert np.isfinite(out["history"]["nst"]).all()

"""The validation split carved from the training data: stratified, seeded, disjoint,
of the asked size, from every source; and a run that chooses by it, never by the
test split (fits' val_* numbers, the weak-teacher margin, metrics.json, the cache)."""


import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from kdkeras import cache as cache_lib
from kdkeras import data as data_lib
from kdkeras import experiment, recipe_utils, training
from kdkeras.data import sources
from tests.helpers import HAVE_FASHION, collect_batches, tiny_cnn

# ----------------------------------------------------------------------- the carving
def test_the_split_is_stratified_disjoint_of_the_asked_size_and_follows_the_seed():
    labels = np.repeat(np.arange(4), [40, 20, 20, 120])  # imbalanced classes
    train, val = data_lib.carve(labels, 0.1, seed=0)
    assert len(val) == 20 and len(train) == 180
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(200))
    np.testing.assert_array_equal(np.bincount(labels[val]), [4, 2, 2, 12])  # each class its tenth
    again, other = data_lib.carve(labels, 0.1, seed=0)[1], data_lib.carve(labels, 0.1, seed=1)[1]
    np.testing.assert_array_equal(val, again)
    assert set(val) != set(other) and np.array_equal(np.bincount(labels[other]), [4, 2, 2, 12])
    counted = data_lib.carve(labels, 37, seed=0)[1]  # a count: exactly that many, in proportion
    assert len(counted) == 37 and np.abs(np.bincount(labels[counted]) - 37 * np.array([.2, .1, .1, .6])).max() < 1


@pytest.mark.parametrize("size, match", [
    (1.0, "not a fraction in \\(0, 1\\)"), (-3, "negative"), ("0.1", "not a number"), (True, "not a number"),
    (200, "asks for 200 validation examples but the training data has 200"),
    (0.01, "leaves class 1 \\('b'\\) \\(20 examples\\) with no validation example"),
    (0.99, "leaves class 1 \\('b'\\) \\(20 examples\\) with no training example"),
])
def test_bad_sizes_are_refused_naming_the_value_and_what_is_accepted(size, match):
    labels = np.repeat(np.arange(3), [80, 20, 100])
    with pytest.raises(ValueError, match=match) as error:
        data_lib.carve(labels, size, class_names=["a", "b", "c"])
    assert repr(size) in str(error.value) and "ccepted" in str(error.value)


def test_the_setting_is_a_flag_of_every_recipe_and_is_checked():
    values = flags.FlagValues()
    recipe_utils.define_data_flags(values)
    for text, value in (("0.1", 0.1), ("2000", 2000), ("0", 0)):
        values(["r", f"--validation_split={text}"])
        config = recipe_utils.run_config(values)
        assert config.validation_split == value and type(config.validation_split) is type(value)
    values(["r", "--validation_split=ten"])
    with pytest.raises(ValueError, match="'ten' is not a number"):
        recipe_utils.run_config(values)
    with pytest.raises(ValueError, match="validation_split=1.5"):
        experiment.RunConfig(validation_split=1.5)
    base = experiment.RunConfig()
    assert experiment.run_settings(base.replace(validation_split=0.1)) != experiment.run_settings(base)


def _split_folder(root, train=20, test=6, classes=3, seed=0, permute_test=False):
    """root/{train,test}/class<c>/*.png of random 8x8 RGB images; with `permute_test`
    the same test images with their labels shuffled (each class keeps its count)."""
    rng = np.random.default_rng(seed)
    images = {split: rng.integers(0, 256, (classes * n, 8, 8, 3), dtype=np.uint8)
              for split, n in (("train", train), ("test", test))}
    labels = {split: np.repeat(np.arange(classes), n) for split, n in (("train", train), ("test", test))}
    if permute_test:
        labels["test"] = np.random.default_rng(99).permutation(labels["test"])
    for split in images:
        for i, (pixels, label) in enumerate(zip(images[split], labels[split])):
            path = root / split / f"class{label}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tf.io.encode_png(pixels).numpy())
    return f"folder:{root}"


def test_a_folder_splits_into_disjoint_parts_whose_union_is_the_limited_split(tmp_path):
    name = _split_folder(tmp_path / "d")
    common = dict(batch_size=7, shuffle=False, augment=False, limit=45)
    every, every_y = collect_batches(data_lib.load(name, "train", **common))
    parts = {s: collect_batches(data_lib.load(name, "train", validation_split=0.2, subset=s, seed=3, **common))
             for s in ("training", "validation")}
    (train, train_y), (val, val_y) = parts["training"], parts["validation"]
    assert len(val) == 9 and len(train) == 36 and np.array_equal(np.bincount(val_y), [3, 3, 3])
    key = [x.tobytes() for x in every]
    assert sorted(key) == sorted([x.tobytes() for x in train] + [x.tobytes() for x in val])
    assert not {x.tobytes() for x in train} & {x.tobytes() for x in val}
    assert np.array_equal(np.sort(np.concatenate([train_y, val_y])), np.sort(every_y))  # labels travel along
    # indices count the part's own examples; the count is what load yields
    x, _ = collect_batches(data_lib.load(name, "train", validation_split=0.2, subset="validation", seed=3,
                                  with_index=True, **common))
    assert x["index"].tolist() == list(range(9))
    part = data_lib.ValidationSplit(0.2, 3, "validation")
    assert data_lib.num_examples(name, "train", 45, validation=part) == 9
    with pytest.raises(ValueError, match="subset='validation' needs a validation_split"):
        data_lib.load(name, "train", subset="validation")


@pytest.mark.skipif(not HAVE_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_validation_comes_out_of_the_train_limit(monkeypatch):
    monkeypatch.delenv("KDKERAS_FASHION_MNIST_DIR", raising=False)
    source = sources.get_source("fashion_mnist")
    val = [int(y) for _, y in source.raw("train", 300, data_lib.ValidationSplit(0.1, 0, "validation")).dataset]
    train = source.raw("train", 300, data_lib.ValidationSplit(0.1, 0, "training"))
    assert np.array_equal(np.bincount(val, minlength=10), [3] * 10) and train.num_examples == 270


def test_a_tfds_split_is_carved_from_its_own_positions():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=60):
        every = sources.tfds._tfds_labels(sources.get_source("cifar10"), "train")
        full, _ = collect_batches(data_lib.load("cifar10", "train", batch_size=60, shuffle=False, augment=False))
        val, val_y = collect_batches(data_lib.load("cifar10", "train", batch_size=8, validation_split=0.25,
                                            subset="validation", seed=5))
    train_at, val_at = data_lib.carve(every, 0.25, seed=5)
    np.testing.assert_array_equal(val_y, every[val_at])
    np.testing.assert_allclose(val, full[val_at])  # not shuffled, not augmented: its own images


# -------------------------------------------------------------------------- a run
def _run(name, tmp_path, tag, teacher_path, seed=0, **spec):
    config = experiment.RunConfig(dataset=name, batch_size=16, epochs=1, lr=0.05, run_eagerly=True,
                                  validation_split=0.25, seed=seed, output_dir=str(tmp_path / tag))
    spec = experiment.DistillSpec(teacher=teacher_path, student="resnet8",
                                  student_args={"width_multiplier": 0.25}, baseline=True, **spec)
    return experiment.run_distillation(config, spec, command="test")


@pytest.fixture
def teacher_path(tmp_path):
    path = str(tmp_path / "teacher.keras")
    tiny_cnn(width=4, num_classes=3, input_shape=(8, 8, 3), name="teacher").save(path)
    return path


VALIDATION_KEYS = ("student_val_top1", "baseline_val_top1", "teacher_val_top1", "teacher_margin")


def test_a_run_chooses_by_validation_and_never_reads_the_test_labels_for_it(tmp_path, teacher_path):
    run = _run(_split_folder(tmp_path / "d"), tmp_path, "a", teacher_path)
    m = run.metrics
    assert (m["validation_split"], m["validation_examples"], run.data.num_train) == (0.25, 15, 45)
    validation = run.data.validation
    # val_* of the history are the validation split's numbers, not the test split's
    assert m["history"]["val_accuracy"][-1] == pytest.approx(m["student_val_top1"])
    assert m["student_val_top1"] == pytest.approx(training.evaluate_top1(run.student, validation))
    assert m["student_top1"] == pytest.approx(training.evaluate_top1(run.student, run.data.test))
    assert m["baseline_val_top1"] == pytest.approx(training.evaluate_top1(run.baseline, validation))
    assert m["teacher_val_top1"] == pytest.approx(training.evaluate_top1(run.teacher.model, validation))
    # the weak-teacher margin is measured on validation
    assert m["teacher_margin"] == pytest.approx(m["teacher_val_top1"] - m["baseline_val_top1"])
    # the same run with the test split's labels shuffled: no validation number moves
    shuffled = _run(_split_folder(tmp_path / "s", permute_test=True), tmp_path, "b", teacher_path).metrics
    for key in VALIDATION_KEYS:
        assert shuffled[key] == m[key], key
    for key in ("val_accuracy", "val_loss"):
        assert shuffled["history"][key] == m["history"][key]
        assert shuffled["baseline_history"][key] == m["baseline_history"][key]
    assert (shuffled["student_top1"], shuffled["teacher_top1"]) != (m["student_top1"], m["teacher_top1"])


def test_without_a_validation_split_the_keys_and_numbers_are_as_before(tmp_path, teacher_path):
    name = _split_folder(tmp_path / "d")
    config = experiment.RunConfig(dataset=name, batch_size=16, epochs=1, run_eagerly=True,
                                  output_dir=str(tmp_path / "o"))
    data = experiment.setup_data(config)
    assert data.validation is None and data.validation_data is data.test and data.num_validation == 0
    run = experiment.run_distillation(config, experiment.DistillSpec(
        teacher=teacher_path, student="resnet8", student_args={"width_multiplier": 0.25}), command="test")
    assert not {"validation_split", "validation_examples", "student_val_top1", "teacher_val_top1"} & set(run.metrics)
    assert run.metrics["history"]["val_accuracy"][-1] == pytest.approx(run.metrics["student_top1"])


def test_a_cache_holds_the_rows_the_run_reads_and_is_refused_for_another_split(tmp_path, teacher_path):
    name = _split_folder(tmp_path / "d")
    online = _run(name, tmp_path, "online", teacher_path).metrics
    cached = _run(name, tmp_path, "cached", teacher_path, teacher_cache=str(tmp_path / "cache")).metrics
    train = cache_lib.TeacherCache.open(str(tmp_path / "cache" / "train"))
    validation = cache_lib.TeacherCache.open(str(tmp_path / "cache" / "validation"))
    assert (train.num_examples, validation.num_examples) == (45, 15)
    assert cached["teacher_val_top1"] == pytest.approx(online["teacher_val_top1"])  # read from the cache
    assert cached["teacher_margin"] == pytest.approx(cached["teacher_val_top1"] - cached["baseline_val_top1"])
    assert cached["student_val_top1"] == pytest.approx(online["student_val_top1"], abs=1 / 15 + 1e-6)
    with pytest.raises(cache_lib.CacheMismatchError, match="split_seed: cache has 0, asked for 1"):
        _run(name, tmp_path, "other", teacher_path, seed=1, teacher_cache=str(tmp_path / "cache"))
    data = experiment.setup_data(experiment.RunConfig(dataset=name, batch_size=16, validation_split=0.2))
    with pytest.raises(cache_lib.CacheMismatchError, match="validation_split: cache has 0.25, asked for 0.2"):
        data.load(teacher_cache=train)


def test_teacher_cache_for_names_a_part_and_keeps_split_names(tmp_path, teacher_path):
    name = _split_folder(tmp_path / "d")
    data = experiment.setup_data(experiment.RunConfig(dataset=name, batch_size=16, validation_split=6))
    assert (data.num_train, data.num_validation) == (54, 6)
    teacher = training.load_model(teacher_path)
    by_part = experiment.teacher_cache_for(str(tmp_path / "v"), teacher, [], data, part="validation")
    by_split = experiment.teacher_cache_for(str(tmp_path / "t"), teacher, [], data, data.info.train_split)
    assert (by_part.num_examples, by_split.num_examples) == (6, 54)
    assert by_part.fingerprint["data"]["subset"] == "validation"
    with pytest.raises(ValueError, match="No part 'dev'"):
        data.part("dev")


@pytest.mark.e2e
@pytest.mark.skipif(not HAVE_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_the_recipes_take_the_flag_and_record_the_split(tmp_path):
    from tests.helpers import TINY, run_recipe

    m = run_recipe("distill", "--teacher=none", "--method=lsr", "--baseline", "--validation_split=0.25",
                   f"--output_dir={tmp_path / 'd'}", *TINY).metrics
    assert (m["validation_split"], m["validation_examples"]) == (0.25, 32)
    assert {"student_val_top1", "baseline_val_top1"} <= set(m) and "teacher_val_top1" not in m
    assert m["history"]["val_accuracy"][-1] == pytest.approx(m["student_val_top1"])
    t = run_recipe("train_teacher", "--model=resnet8", "--model_args=width_multiplier=0.25",
                   "--validation_split=16", f"--output_dir={tmp_path / 't'}", *TINY)
    assert t["validation_examples"] == 16 and t["history"]["val_accuracy"][-1] == pytest.approx(t["val_top1"])


def test_validation_keys_and_top1s_are_empty_without_a_split_and_name_each_top1_with_one(tmp_path):
    name = _split_folder(tmp_path / "d")
    without = experiment.setup_data(experiment.RunConfig(dataset=name, batch_size=16))
    assert experiment.validation_keys(without, student_val_top1=0.5) == {}
    data = experiment.setup_data(experiment.RunConfig(dataset=name, batch_size=16, validation_split=6))
    assert experiment.validation_keys(data, student_val_top1=0.5, teacher_val_top1=None) == {
        "validation_split": 6, "validation_examples": 6, "student_val_top1": 0.5}
    assert experiment.validation_top1s(without, student_val_top1=0.5) == {}  # a point's or row's keys
    assert experiment.validation_top1s(data, student_val_top1=0.5, teacher_val_top1=None) == {"student_val_top1": 0.5}


#: {recipe: keys of its JSON that must be there with a split}; the runs are
#: tests/test_recipes_soft_labels.py's, which pass VALIDATION and call check_the_split_is_recorded
#: (one run of each recipe carries both files' assertions)
VALIDATION = ["--validation_split=32"]
RECIPE_VALIDATION_KEYS = {
    "teacher_free": ["baseline_val_top1"],
    "reversed_kd": ["weak_val_top1", "strong_val_top1", "rekd_val_top1"],
    "defective_kd": ["baseline_val_top1"],
    "bias_variance": [],
}


def check_the_split_is_recorded(recipe, out):
    """Every recipe that trains records the validation keys distill.py records, and each
    of its fits (the student alone's too) watched the validation split, not the test split."""
    import json

    keys = RECIPE_VALIDATION_KEYS[recipe]
    payload = json.loads((out / f"{recipe}.json").read_text())
    assert (payload["validation_split"], payload["validation_examples"]) == (32, 32)
    assert all(0 <= payload[k] <= 1 for k in keys), keys
    rows = payload.get("results", {})
    for row in rows.values():  # each fit's last val_* is the validation split's top-1
        if "history" in row:
            assert row["history"]["val_accuracy"][-1] == pytest.approx(row["val_top1"])
        else:
            assert len(row["val_top1_per_model"]) == 2 and row["val_top1"] == np.mean(row["val_top1_per_model"])
    for point in payload.get("points", []):
        assert {"student_val_top1", "teacher_val_top1"} <= set(point)
    if recipe == "teacher_free":
        assert payload["baseline_val_top1"] == rows["baseline"]["val_top1"]
    if recipe == "reversed_kd":
        assert payload["rekd_val_top1"] == rows["Re-KD"]["val_top1"]

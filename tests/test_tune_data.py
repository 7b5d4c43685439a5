"""A tuning trial's data: a stratified subset of the run's training part to train on
(`RunConfig.train_part_limit`, set from `--trial_train_limit`), scored on the run's
whole validation split (the same examples for every trial and for the final run)."""

import numpy as np
import pytest
import tensorflow as tf

from kdkeras import cache as cache_lib
from kdkeras import data as data_lib
from kdkeras import experiment
from kdkeras.experiment import DistillSpec, RunConfig
from kdkeras.tune import TuneOptions, trial_inputs
from kdkeras.tune.final import final_inputs
from tests.helpers import collect_batches, tiny_cnn

CLASSES = 3
PER_CLASS = (40, 20, 30)  # imbalanced, so stratification shows


def _folder(root):
    """root/{train,test}/class<c>/*.png: every training image distinct (its pixels name it)."""
    rng = np.random.default_rng(0)
    for split, counts in (("train", PER_CLASS), ("test", (4,) * CLASSES)):
        for label, count in enumerate(counts):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                (folder / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    return f"folder:{root}"


def _examples(ds):
    """(image bytes, label) of every example of a pipeline, in its order."""
    x, y = collect_batches(ds)
    x = x["image"] if isinstance(x, dict) else x
    return [(image.tobytes(), int(label)) for image, label in zip(x, y)]


def _parts(config):
    """The (training, validation) examples a run of `config` reads, as sets."""
    data = experiment.setup_data(config)
    train = _examples(data.load(augment=False, shuffle=False))
    return train, _examples(data.validation), data


@pytest.fixture
def dataset(tmp_path):
    return _folder(tmp_path / "d")


def _run_config(dataset, **changes):
    return RunConfig(dataset=dataset, batch_size=16, epochs=3, train_limit=80, validation_split=0.25, seed=2,
                     output_dir="unused", **changes)


def test_a_trial_trains_on_a_stratified_subset_of_the_training_part_and_scores_on_the_whole_validation(dataset):
    config = _run_config(dataset)
    trial, _ = trial_inputs(config, DistillSpec(teacher="none", method="lsr"),
                            TuneOptions(trial_train_limit=24, trial_epochs=1), ["lsr"], "lsr", {}, 0)
    assert (trial.train_limit, trial.validation_split, trial.train_part_limit) == (80, 0.25, 24)
    run_train, run_val, run_data = _parts(config)
    trial_train, trial_val, trial_data = _parts(trial)
    # the very validation examples of the run, in the same order: every trial is scored on them
    assert trial_val == run_val and len(run_val) == 20 == trial_data.num_validation
    # the trial trains on 24 of the run's 60 training examples, never on a validation one
    assert (len(run_train), len(trial_train), trial_data.num_train, run_data.num_train) == (60, 24, 24, 60)
    assert set(trial_train) <= set(run_train) and len(set(trial_train)) == 24
    assert not set(trial_train) & set(run_val)
    # stratified: each class its share of the training part (60 = 27 + 13 + 20 here)
    run_counts = np.bincount([y for _, y in run_train], minlength=CLASSES)
    trial_counts = np.bincount([y for _, y in trial_train], minlength=CLASSES)
    assert np.abs(trial_counts - 24 * run_counts / run_counts.sum()).max() < 1
    # the same subset on every call (and whatever the trial's number)
    again, _ = trial_inputs(config, DistillSpec(teacher="none", method="lsr"),
                            TuneOptions(trial_train_limit=24, trial_epochs=1), ["lsr"], "lsr", {}, 7)
    assert _parts(again)[0] == trial_train
    # the winner retrained on the training part reads the same validation examples
    final, _ = final_inputs(config, DistillSpec(teacher="none", method="lsr"), "lsr", {})
    assert final.train_part_limit is None and _parts(final)[1] == run_val


def test_the_cap_carves_positions_from_the_training_part_only():
    labels = np.repeat(np.arange(4), [40, 20, 20, 120])
    train, val = data_lib.carve(labels, 0.1, seed=3)
    capped = data_lib.ValidationSplit(0.1, 3, "training", train_part_limit=45).positions(labels)
    assert len(capped) == 45 and set(capped) <= set(train) and not set(capped) & set(val)
    shares = np.bincount(labels[train]) / len(train)  # 36, 18, 18, 108 of 180: 45 x these each within 1
    assert np.abs(np.bincount(labels[capped]) - 45 * shares).max() <= 1
    np.testing.assert_array_equal(  # the validation part ignores the cap
        data_lib.ValidationSplit(0.1, 3, "validation", train_part_limit=45).positions(labels), val)
    # above the training part: all of it
    np.testing.assert_array_equal(data_lib.ValidationSplit(0.1, 3, train_part_limit=10**6).positions(labels), train)
    with pytest.raises(ValueError, match="train_part_limit=0; accepted"):
        data_lib.ValidationSplit(0.1, 3, train_part_limit=0)


def test_the_cap_needs_a_validation_split_and_is_a_setting_of_its_own(dataset):
    with pytest.raises(ValueError, match="train_part_limit=24 caps the training part.*--validation_split"):
        RunConfig(train_part_limit=24)
    with pytest.raises(ValueError, match="train_part_limit=24 needs a validation_split"):
        data_lib.load(dataset, "train", train_part_limit=24)
    base = _run_config(dataset)
    assert experiment.run_settings(base.replace(train_part_limit=24)) != experiment.run_settings(base)


def test_a_teacher_cache_of_another_cap_is_refused(dataset, tmp_path):
    teacher = tiny_cnn(width=4, num_classes=CLASSES, input_shape=(8, 8, 3), name="teacher")
    data = experiment.setup_data(_run_config(dataset, train_part_limit=24))
    cache = experiment.teacher_cache_for(str(tmp_path / "c"), teacher, [], data, part="train")
    assert cache.num_examples == 24 and cache.fingerprint["data"]["train_part_limit"] == 24
    for other in (30, None):
        with pytest.raises(cache_lib.CacheMismatchError, match="train_part_limit"):
            experiment.setup_data(_run_config(dataset, train_part_limit=other)).load(teacher_cache=cache)
    # the validation split's cache is the same whatever the cap: a trial's is the run's
    spec = data_lib.ValidationSplit(0.25, 2, "validation", train_part_limit=24).spec()
    assert spec == data_lib.ValidationSplit(0.25, 2, "validation").spec()

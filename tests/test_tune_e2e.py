"""kdkeras.tune on real training (tiny image folders, one-epoch trials): the choice
depends on the validation split only, and both recipes run a sweep to its report."""

import json
import os

import keras
import numpy as np
import pytest

from kdkeras.experiment import DistillSpec, RunConfig, build_model, setup_data
from kdkeras.tune import TuneOptions, tune_distillation
from tests.helpers import TINY, needs_fashion_mnist, run_recipe

pytestmark = pytest.mark.e2e


def split_folder(root, classes=3, train=16, test=4, size=(8, 8), seed=0):
    """root/train/class<c>/*.png and root/test/class<c>/*.png of random RGB images."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            os.makedirs(root / split / f"class{c}", exist_ok=True)
            for i in range(count):
                pixels = (rng.integers(0, 256, (*size, 3)) // (c + 1)).astype(np.uint8)  # a learnable hint
                (root / split / f"class{c}" / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    return f"folder:{root}"


def shuffle_test_labels(root, seed=0):
    """Move each test image into a class folder drawn at random (the same count per folder)."""
    files = sorted((root / "test").glob("*/*.png"))
    moved = [(f, f.read_bytes()) for f in files]
    order = np.random.default_rng(seed).permutation(len(moved))
    for f in files:
        f.unlink()
    for target, (_, payload) in zip(files, [moved[i] for i in order]):
        target.write_bytes(payload)


def test_the_same_settings_are_chosen_when_the_test_labels_are_shuffled(tmp_path):
    dataset = split_folder(tmp_path / "data")
    base = RunConfig(dataset=dataset, epochs=1, batch_size=8, validation_split=6, run_eagerly=True, verbose=0)
    teacher = tmp_path / "teacher.keras"
    build_model("resnet8", setup_data(base), seed=3).save(teacher)
    results = []
    for run in ("plain", "shuffled"):
        if run == "shuffled":
            shuffle_test_labels(tmp_path / "data")
        keras.backend.clear_session()
        config = base.replace(output_dir=str(tmp_path / run))
        # the choice is all the shuffled run is compared on: no retrained winner (it reads the test split)
        options = TuneOptions(trials=3, pruner="none", candidates=("kd", "dkd"), retrain=run == "plain")
        results.append(tune_distillation(config, DistillSpec(teacher=str(teacher), method="auto"), options))
        rows = json.loads((tmp_path / run / "trials.json").read_text())
        assert [r["state"] for r in rows] == ["complete"] * 3
        assert os.path.isdir(tmp_path / run / "teacher_cache")
    tables = [[(r["method"], r["settings"], r["val_top1"]) for r in json.loads((tmp_path / run / "trials.json")
               .read_text())] for run in ("plain", "shuffled")]
    assert tables[0] == tables[1]
    assert (results[0].method, results[0].settings) == (results[1].method, results[1].settings)
    assert results[1].final is None
    final = results[0].final.metrics
    assert final["epochs"] == 1 and final["validation_examples"] == 6 and "baseline_top1" in final
    # the full-budget check on the validation split, from the retrain's two validation top-1s
    assert results[0].report["final_beats_student_alone"] == (final["student_val_top1"] > final["baseline_val_top1"])
    assert results[0].report["student_top1"] == final["student_top1"]


#: the tune recipes' flags of the two tests below
AUTO = ["--method=auto", "--candidates=kd,lsr", "--validation_split=32", "--trials=2", "--trial_train_limit=96",
        "--pruner=none", *TINY]


@needs_fashion_mnist
def test_the_tune_recipe_writes_the_report(tiny_teacher, tmp_path):
    out = tmp_path / "tune"
    result = run_recipe("tune", f"--teacher={tiny_teacher.path}", f"--output_dir={out}", *AUTO)
    report = json.loads((out / "tune.json").read_text())
    assert report["method"] == result.method in ("kd", "lsr") and report["trials"] == 2
    assert {"student_top1", "baseline_top1", "val_top1", "gain_over_baseline"} <= set(report)
    table = (out / "trials.md").read_text().splitlines()
    assert len(table) == 6 and table[-1].startswith("Student alone") and (out / "trials.png").stat().st_size > 0
    assert report["student_alone_val_top1"] is not None and isinstance(report["beats_student_alone"], bool)
    assert json.loads((out / "final" / "metrics.json").read_text())["validation_examples"] == 32
    assert all(r["settings"]["student_loss_weight"] is not None for r in json.loads((out / "trials.json").read_text()))


def test_distill_auto_runs_the_tune_recipes_sweep(tmp_path, monkeypatch):
    """`distill.py --method=auto` hands the sweep the config, spec and options that
    `tune.py` gives it on the same flags, and returns its result (the sweep itself:
    the test above; no training here)."""
    import kdkeras.tune

    calls = []

    def spy(*args):
        calls.append(args)
        return f"result {len(calls)}"

    monkeypatch.setattr(kdkeras.tune, "tune_distillation", spy)
    flags = ["--teacher=resnet8", f"--output_dir={tmp_path}", *AUTO]
    assert run_recipe("tune", *flags) == "result 1" and run_recipe("distill", *flags) == "result 2"
    (config, spec, options), again = calls
    assert again == (config, spec, options)
    assert spec.method == "auto" and options.candidates == ("kd", "lsr") and options.trials == 2
    assert config.validation_split == 32 and options.trial_train_limit == 96

@needs_fashion_mnist
def test_tune_speed_benchmark_prints_its_ratio(capsys):
    from tests.test_benchmarks import benchmark

    with benchmark("tune_speed.py", "--teacher=resnet8", "--train_limit=192", "--test_limit=64", "--trials=2",
                   "--trial_epochs=1", "--validation_split=32", "--trial_train_limit=96") as module:
        out = module.measure()
    printed = capsys.readouterr().out
    line = [ln for ln in printed.splitlines() if ln.startswith("tune_sweep_over_student_runs")]
    assert line and float(line[0].split()[-1]) == pytest.approx(out["tune_sweep_over_student_runs"], abs=5e-4)
    assert out["tune_sweep_over_student_runs"] == pytest.approx(
        out["sweep_seconds"] / (2 * np.mean(out["student_run_seconds"])))
    assert out["cache_build_seconds"] > 0 and out["reference_seconds"] > 0
    assert len(out["trial_run_seconds"]) == 2 and out["trial_over_student_run_median"] == pytest.approx(
        np.median(out["trial_run_seconds"]) / np.median(out["student_run_seconds"]))
    # each trial's run is part of the sweep, which also holds the study and the report
    assert sum(out["trial_run_seconds"]) < out["sweep_seconds"]

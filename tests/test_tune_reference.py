"""The sweep's reference (kdkeras.tune.reference): the student trained alone at the trial
fidelity on the trials' data, run once per study (never an Optuna trial), reported beside
the choice with a warning when the choice does not beat it; `--noreference` runs none."""

import dataclasses
import json

import keras
import optuna
import pytest

from kdkeras.experiment import DistillSpec, RunConfig, build_model, run_distillation, setup_data
from kdkeras.tune import TuneOptions, final_check, reference_inputs, run_student_alone, trial_inputs, tune_distillation
from tests.helpers import image_folder, run_recipe


@dataclasses.dataclass
class ValConfig(RunConfig):
    """A RunConfig with a validation split, for sweeps whose runners are stubs."""

    validation_split: float = 0.1


class FakeRun:
    def __init__(self, metrics):
        self.metrics = metrics


def fixed_trials(score, seen=None):
    """A trial runner whose every trial scores `score` on validation."""
    def run(config, spec, callbacks=()):
        if seen is not None:
            seen.append((config, spec))
        for cb in callbacks:
            cb.on_epoch_end(0, {"val_accuracy": score})
        return FakeRun({"student_val_top1": score, "student_top1": 0.99})
    return run


def fixed_reference(score, seen):
    """A reference runner scoring `score`, recording what it was asked to train."""
    def run(config, spec, callbacks=()):
        seen.append((config, spec))
        return FakeRun({"student_val_top1": score})
    return run


def _sweep(tmp_path, trial_score, reference_score, **options):
    trials, references = [], []
    config = ValConfig(output_dir=str(tmp_path), epochs=30, train_limit=1000, seed=4)
    result = tune_distillation(
        config, DistillSpec(teacher="t.keras", method="kd"),
        TuneOptions(**{"trials": 2, "trial_epochs": 2, "trial_train_limit": 200, "retrain": False,
                       "pruner": "none", **options}),
        runner=fixed_trials(trial_score, trials), reference_runner=fixed_reference(reference_score, references))
    return result, trials, references


def test_the_reference_trains_the_student_alone_on_the_trials_data(tmp_path):
    _, trials, references = _sweep(tmp_path, 0.5, 0.4)
    assert len(references) == 1 and len(trials) == 2
    (config, spec), (trial_config, trial_spec) = references[0], trials[0]
    fields = ("epochs", "train_limit", "train_part_limit", "validation_split", "test_limit", "seed", "batch_size",
              "lr", "dataset")
    assert {f: getattr(config, f) for f in fields} == {f: getattr(trial_config, f) for f in fields}
    assert (config.epochs, config.train_part_limit, config.validation_split) == (2, 200, 0.1)
    assert config.output_dir == str(tmp_path / "student_alone")
    assert (spec.teacher, spec.method, spec.method_args, spec.teacher_cache, spec.baseline) == (
        "none", "none", "", None, False)
    assert spec.student == trial_spec.student and spec.student_loss_weight == 1.0


def test_the_reference_runs_once_and_a_resumed_sweep_keeps_it_outside_the_trials(tmp_path):
    first, _, references = _sweep(tmp_path, 0.5, 0.4)
    again, trials, more = _sweep(tmp_path, 0.5, 0.3, trials=3)
    assert len(references) == 1 and more == [] and len(trials) == 1  # the third trial only
    assert again.report["student_alone_val_top1"] == first.report["student_alone_val_top1"] == 0.4
    study = optuna.load_study(study_name="kdkeras", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 3 and study.user_attrs["student_alone_val_top1"] == 0.4  # not a trial
    assert study.user_attrs["student_alone_fidelity"]["train_part_limit"] == 200


def test_a_choice_below_the_student_alone_is_warned_about_and_recorded(tmp_path, capsys):
    result, _, _ = _sweep(tmp_path, 0.5, 0.6)
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "tune.json").read_text())
    assert report == result.report
    assert report["beats_student_alone"] is False and report["student_alone_val_top1"] == 0.6
    assert report["margin_over_student_alone_points"] == pytest.approx(-10.0)
    assert report["student_alone_seconds"] >= 0
    warning = [line for line in out.splitlines() if line.startswith("[tune] WARNING")]
    assert len(warning) == 1 and "0.5000" in warning[0] and "0.6000" in warning[0]
    assert "did not beat the student alone on the validation split" in warning[0] and "--trials" in warning[0]
    assert "at the trials' fidelity (2 epochs)" in warning[0] and "--final_data=training" in warning[0]
    assert report["warnings"] == [warning[0].removeprefix("[tune] WARNING: ")]
    line = (tmp_path / "trials.md").read_text().splitlines()[-1]
    assert line.startswith("Student alone") and "0.6000" in line and "-10.00 points" in line


def test_a_choice_above_the_student_alone_says_so_without_a_warning(tmp_path, capsys):
    result, _, _ = _sweep(tmp_path, 0.5, 0.4)
    out = capsys.readouterr().out
    assert result.report["beats_student_alone"] is True and "warnings" not in result.report
    assert result.report["margin_over_student_alone_points"] == pytest.approx(10.0)
    assert "WARNING" not in out and "student alone 0.4000, +10.00 points" in out


def test_noreference_runs_none_and_reports_as_before(tmp_path):
    result, trials, references = _sweep(tmp_path, 0.5, 0.6, reference=False)
    assert references == [] and len(trials) == 2
    assert not {k for k in result.report if "student_alone" in k} and "warnings" not in result.report
    assert len((tmp_path / "trials.md").read_text().splitlines()) == 4  # the table alone
    study = optuna.load_study(study_name="kdkeras", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.user_attrs == {}


def test_both_recipes_take_noreference(tmp_path, monkeypatch):
    import kdkeras.tune

    options = []
    monkeypatch.setattr(kdkeras.tune, "tune_distillation", lambda config, spec, opts: options.append(opts))
    common = ["--teacher=resnet8", f"--output_dir={tmp_path}", "--method=auto", "--validation_split=0.1"]
    run_recipe("tune", *common)
    run_recipe("tune", *common, "--noreference")
    run_recipe("distill", *common, "--noreference")
    assert [o.reference for o in options] == [True, False, False]


def test_the_plot_draws_the_student_alone(tmp_path):
    from matplotlib.image import imread

    from kdkeras.tune import plot_trials

    rows = [{"trial": 0, "method": "kd", "settings": {}, "val_top1": 0.5, "state": "complete", "epochs": 1,
             "seconds": 1.0}]
    plain = imread(plot_trials(str(tmp_path / "plain.png"), rows))
    marked = imread(plot_trials(str(tmp_path / "marked.png"), rows, {"val_top1": 0.45, "seconds": 2.0}))
    assert plain.shape == marked.shape and (plain != marked).any()


def test_the_reference_equals_the_baseline_of_a_trial_run(tmp_path):
    """Real tiny training: the reference's validation top-1 is the `--baseline` student
    alone's of a run on the trial's data (same seed, data, student and epochs), and it
    records no test top-1."""
    dataset = image_folder(tmp_path / "data", classes=3, per_class=12)
    config = RunConfig(dataset=dataset, epochs=2, batch_size=8, validation_split=6, seed=3, run_eagerly=True,
                       verbose=0, output_dir=str(tmp_path / "sweep"))
    teacher = str(tmp_path / "teacher.keras")
    build_model("resnet8", setup_data(config), seed=1, width_multiplier=0.25).save(teacher)
    spec = DistillSpec(teacher=teacher, student="resnet8", student_args={"width_multiplier": 0.25}, method="kd")
    options = TuneOptions(trial_epochs=1, trial_train_limit=15)
    keras.backend.clear_session()
    reference = run_student_alone(*reference_inputs(config, spec, options)).metrics
    keras.backend.clear_session()
    trial_config, trial_spec = trial_inputs(config, spec, options, ["kd"], "kd", {}, 0)
    trial = run_distillation(trial_config, dataclasses.replace(trial_spec, baseline=True, teacher_cache=None))
    assert reference["student_val_top1"] == pytest.approx(trial.metrics["baseline_val_top1"], abs=1e-9)
    # the same training, step for step: its losses too (a val top-1 on 6 examples could agree by chance)
    assert reference["history"]["loss"] == pytest.approx(trial.metrics["baseline_history"]["loss"], rel=1e-6)
    assert (reference["train_part_limit"], reference["validation_examples"], reference["epochs"]) == (15, 6, 1)
    assert "student_top1" not in reference
    record = json.loads((tmp_path / "sweep" / "student_alone" / "student_alone.json").read_text())
    assert record["student_val_top1"] == reference["student_val_top1"]


@pytest.mark.parametrize("distilled, alone, beats", [(0.91, 0.90, True), (0.89, 0.90, False), (0.90, 0.90, False)])
def test_the_full_budget_check_reads_the_retrains_validation_tops(distilled, alone, beats):
    keys, warning = final_check({"student_val_top1": distilled, "baseline_val_top1": alone, "student_top1": 0.5})
    assert keys == {"final_beats_student_alone": beats,
                    "final_margin_over_student_alone_points": pytest.approx(100 * (distilled - alone))}
    assert (warning is None) == beats
    if not beats:
        assert f"{distilled:.4f}" in warning and f"{alone:.4f}" in warning and "final/" in warning
    # no check without both validation top-1s (a retrain on every example, or without the student alone)
    assert final_check({"student_val_top1": distilled, "baseline_val_top1": None}) == ({}, None)
    assert final_check({"student_top1": 0.9, "baseline_top1": 0.8}) == ({}, None)


def test_a_memory_bank_method_on_subset_trials_is_warned_about_and_on_the_whole_part_is_not(tmp_path, capsys):
    def sweep(folder, method, **options):
        config = ValConfig(output_dir=str(tmp_path / folder), epochs=30, train_limit=1000, seed=4)
        return tune_distillation(
            config, DistillSpec(teacher="t.keras", method=method),
            TuneOptions(**{"trials": 1, "trial_epochs": 2, "retrain": False, "pruner": "none", **options}),
            runner=fixed_trials(0.5), reference_runner=fixed_reference(0.4, []))

    subset = sweep("crd_subset", "crd", trial_train_limit=200).report
    warning = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[tune] WARNING")]
    assert len(warning) == 1 and "Candidate method(s) crd keep a slot per training example" in warning[0]
    assert "trials on 200 examples" in warning[0] and "--trial_train_limit" in warning[0]
    assert subset["warnings"] == [warning[0].removeprefix("[tune] WARNING: ")]
    # CRD on the whole training part, and KD (no per-example state) on a subset: no warning
    for folder, method, options in (("crd_whole", "crd", {}), ("kd_subset", "kd", {"trial_train_limit": 200})):
        assert "warnings" not in sweep(folder, method, **options).report
        assert "WARNING" not in capsys.readouterr().out, folder

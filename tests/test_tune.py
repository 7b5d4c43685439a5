"""kdkeras.tune: search spaces in the method contract, the study (resume after kill -9,
processes sharing SQLite), pruning, the validation-only choice, the reports."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from kdkeras import methods as methods_lib
from kdkeras.experiment import DistillSpec, RunConfig
from kdkeras.methods.registry import _init_arguments
from kdkeras.search_space import Choice, Float, Int, method_space, student_loss_weight_space
from kdkeras.tune import (
    PruningCallback, TuneOptions, candidate_space, open_study, plot_trials, trial_rows, tune_distillation,
    write_trials,
)
from tests.helpers import ROOT


@dataclasses.dataclass
class ValConfig(RunConfig):
    """A RunConfig with a validation split, for tests that never train."""

    validation_split: float = 0.1


def published_default(name, arg):
    """The value method `name` takes for argument `arg` when not given: a run-length
    default where the run layer sets one, else what an instance built bare holds."""
    cls = methods_lib.method_class(name)
    if arg in cls.run_length_defaults:
        return cls.run_length_defaults[arg]
    value = getattr(methods_lib.from_spec(name, num_examples=64)[0], arg)
    assert value is not None, f"{name} has no default for {arg!r}"
    return value


def ends(dim):
    return list(dim.values) if isinstance(dim, Choice) else [dim.low, dim.high]


@pytest.mark.parametrize("name", methods_lib.registered_methods())
def test_every_method_has_a_space_of_its_own_arguments_around_its_defaults(name):
    cls = methods_lib.method_class(name)
    space = method_space(cls)
    assert space, f"{name} declares nothing to tune"
    accepted = _init_arguments(cls)
    for arg, dim in space.items():
        assert isinstance(dim, (Float, Int, Choice))
        assert arg in accepted, f"{name}.search_space names {arg!r}, which {cls.__name__} does not accept"
        assert published_default(name, arg) in dim, (name, arg, dim, published_default(name, arg))
        for value in ends(dim):  # the class builds at each end of its space
            methods_lib.from_spec(name, {name: {arg: value}}, num_examples=64)
    assert cls.default_student_loss_weight in student_loss_weight_space(cls.default_student_loss_weight)
    assert set(candidate_space(name)) == {f"{name}.{a}" for a in space} | {"student_loss_weight"}


def test_a_new_method_is_tunable_without_touching_the_tuner():
    class Plain(methods_lib.Method):
        default_weight = 3.0

    class Tempered(methods_lib.Method):
        search_space = {"weight": None, "temperature": Float(1.0, 8.0, log=True)}

    assert method_space(Plain) == {"weight": Float(0.75, 12.0, log=True)}
    assert method_space(Tempered) == {"temperature": Float(1.0, 8.0, log=True)}
    with pytest.raises(TypeError, match="temperature"):
        method_space(type("Bad", (methods_lib.Method,), {"search_space": {"temperature": (1, 2)}}))


def test_the_tuner_refuses_a_config_without_a_validation_split(tmp_path):
    with pytest.raises(ValueError, match="validation split.*never on the test split"):
        tune_distillation(RunConfig(output_dir=str(tmp_path)), DistillSpec(teacher="t.keras", method="kd"),
                          TuneOptions(trials=1))
    assert not os.path.exists(tmp_path / "study.db")


class FakeRun:
    def __init__(self, metrics):
        self.metrics = metrics


def fake_runner(seen, test_seed):
    """A run_distillation stand-in: validation top-1 a fixed function of the settings, a
    test top-1 drawn from `test_seed` (a different test split each sweep)."""
    rng = np.random.default_rng(test_seed)

    def run(config, spec, callbacks=()):
        seen.append((config, spec))
        args = dict(kv.split("=") for kv in spec.method_args.split(","))
        val = 1.0 / (1.0 + abs(float(args["kd.temperature"]) - 3.0)) - 0.01 * spec.student_loss_weight
        for cb in callbacks:
            cb.on_epoch_end(0, {"val_accuracy": val})
        return FakeRun({"student_val_top1": val, "student_top1": float(rng.uniform())})
    return run


def test_the_choice_reads_the_validation_split_only(tmp_path):
    """Two sweeps that see different test results choose the same settings; each trial
    runs at the trial fidelity, in its own folder, from one shared teacher cache."""
    chosen, seen = [], []
    for test_seed in (0, 1):
        config = ValConfig(output_dir=str(tmp_path / f"sweep{test_seed}"), epochs=30, train_limit=1000)
        options = TuneOptions(trials=6, trial_epochs=2, trial_train_limit=200, retrain=False, pruner="none",
                              reference=False)
        result = tune_distillation(config, DistillSpec(teacher="t.keras", method="kd"), options,
                                   runner=fake_runner(seen, test_seed))
        chosen.append((result.method, result.settings))
    assert chosen[0] == chosen[1]
    configs = [c for c, _ in seen]
    # 200 training examples of the run's training part; the run's whole validation split (train_limit kept)
    assert {(c.epochs, c.train_limit, c.train_part_limit, c.test_limit, c.validation_split, c.backup)
            for c in configs} == {(2, 1000, 200, 64, 0.1, False)}  # and no backups: a trial is never resumed
    assert len({c.output_dir for c in configs}) == 12  # a folder per trial
    assert {s.teacher_cache for _, s in seen[:6]} == {str(tmp_path / "sweep0" / "teacher_cache")}
    assert {s.baseline for _, s in seen} == {False}
    rows = json.loads((tmp_path / "sweep0" / "trials.json").read_text())
    assert len(rows) == 6 and {r["state"] for r in rows} == {"complete"}
    best = max(rows, key=lambda r: r["val_top1"])
    assert best["settings"] == chosen[0][1]
    report = json.loads((tmp_path / "sweep0" / "tune.json").read_text())
    assert report["method"] == "kd" and report["val_top1"] == best["val_top1"] and "student_top1" not in report


def test_auto_chooses_among_candidates_each_in_its_own_space(tmp_path):
    seen = []

    def run(config, spec, callbacks=()):
        seen.append(spec)
        return FakeRun({"student_val_top1": {"kd": 0.5, "dkd": 0.7, "kd+at": 0.6}[spec.method]})

    options = TuneOptions(trials=8, candidates=("kd", "dkd", "kd+at"), retrain=False, pruner="none",
                          reference=False)
    result = tune_distillation(ValConfig(output_dir=str(tmp_path)), DistillSpec(teacher="t.keras", method="auto"),
                               options, runner=run)
    assert result.method == "dkd" and set(result.settings) == set(candidate_space("dkd"))
    assert {s.method for s in seen} >= {"kd", "dkd"}
    assert {s.teacher_cache_methods for s in seen} == {"kd,dkd,kd+at"}
    for spec in seen:  # each trial's arguments are its own method's
        assert {k.split(".")[0] for k in spec.method_args.split(",")} <= set(spec.method.split("+"))


def test_a_pruned_trial_stops_early():
    x, y = np.random.default_rng(0).normal(size=(32, 4)), np.arange(32) % 2
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    study.add_trial(optuna.trial.create_trial(
        value=1.0, intermediate_values={i: 1.0 for i in range(10)},
        params={}, distributions={}))
    epochs_run = []

    def objective(trial):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        counter = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: epochs_run.append(e))
        model.fit(x, y, validation_data=(x, y), epochs=10, verbose=0, callbacks=[counter, PruningCallback(trial)])
        return 0.0

    study.optimize(objective, n_trials=1)
    trial = study.trials[-1]
    assert trial.state == TrialState.PRUNED
    assert epochs_run == [0] and list(trial.intermediate_values) == [0]


def _sweep(url, trials, seconds, epochs=3, heartbeat=1, grace=2):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-m", "tests.tune_sweep_check", url, str(trials), str(seconds),
                             str(epochs), str(heartbeat), str(grace)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trials(url):
    return optuna.load_study(study_name="sleepy", storage=url).get_trials()


def test_a_sweep_killed_mid_trial_resumes_with_every_finished_trial_kept(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = _sweep(url, trials=5, seconds=0.5)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.1)
        try:
            trials = _trials(url)
        except KeyError:  # the study is not created yet
            continue
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        if done >= 2 and trials[-1].state == TrialState.RUNNING and len(trials[-1].intermediate_values) == 1:
            break  # mid-trial: one epoch reported, a second of work left
    else:
        proc.kill()
        pytest.fail("the sweep never got two trials done")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: t.value for t in _trials(url) if t.state == TrialState.COMPLETE}
    killed = [t.number for t in _trials(url) if t.state == TrialState.RUNNING]
    assert len(before) >= 2 and len(killed) == 1
    time.sleep(2.5)  # the killed trial's heartbeat goes stale
    out, _ = _sweep(url, trials=5, seconds=0.05).communicate(timeout=120)
    after = _trials(url)
    assert [t for t in after if t.state == TrialState.COMPLETE and t.number in before] and \
        {t.number: t.value for t in after if t.number in before} == before
    assert sum(t.state == TrialState.COMPLETE for t in after) == 5, out
    assert [t.state for t in after if t.number in killed] == [TrialState.FAIL]
    assert not [t for t in after if t.state == TrialState.RUNNING]


def test_two_processes_share_one_sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_study("sleepy", url)  # created once, so neither process races to create it
    procs = [_sweep(url, trials=10, seconds=0.15) for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    done = [t for t in _trials(url) if t.state == TrialState.COMPLETE]
    assert len(done) >= 10
    assert len({t.user_attrs["pid"] for t in done}) == 2, outs


def test_trials_table_and_plot(tmp_path):
    study = optuna.create_study(direction="maximize")
    for value, state in ((0.4, TrialState.COMPLETE), (0.2, TrialState.PRUNED), (0.6, TrialState.COMPLETE)):
        study.add_trial(optuna.trial.create_trial(
            value=value, state=state, intermediate_values={0: value},
            params={"method": "kd", "kd/kd.temperature": 2.0},
            distributions={"method": optuna.distributions.CategoricalDistribution(["kd", "dkd"]),
                           "kd/kd.temperature": optuna.distributions.FloatDistribution(1, 10)},
            user_attrs={"seconds": 1.5}))
    rows = trial_rows(study.trials, ["kd", "dkd"])
    assert [(r["method"], r["settings"], r["state"]) for r in rows] == [
        ("kd", {"kd.temperature": 2.0}, "complete"), ("kd", {"kd.temperature": 2.0}, "pruned"),
        ("kd", {"kd.temperature": 2.0}, "complete")]
    md, js = write_trials(str(tmp_path), rows)
    table = open(md).read().splitlines()
    assert len(table) == 5 and "| 1 | kd | kd.temperature=2 | 0.2 | pruned | 1 | 1.5 |" in table
    assert json.load(open(js)) == rows
    from matplotlib.image import imread
    png = imread(plot_trials(str(tmp_path / "trials.png"), rows))
    assert png.shape[:2] == (400, 700) and png[..., :3].std() > 0.05


def test_public_names_resolve_and_sharing_a_study_loads_no_tensorflow():
    import importlib

    import kdkeras.tune as tune

    for name in tune.__all__:
        module, attribute = tune._EXPORTS[name]
        assert getattr(tune, name) is getattr(importlib.import_module(module), attribute), name
    code = ("import sys, kdkeras.tune.study, kdkeras.tune.options, kdkeras.search_space\n"
            "assert not {'tensorflow', 'keras'} & set(sys.modules), sorted(sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_methods_page_lists_every_space_as_the_code_declares_it():
    from kdkeras.tune.spaces import space_table

    text = open(os.path.join(ROOT, "docs", "methods.md")).read()
    assert space_table() in text


def test_a_trial_killed_before_its_first_heartbeat_is_failed_too(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study("sleepy", url, heartbeat=1, grace=1)
    silent = study.ask()  # RUNNING, never beating: its process "died" at once
    time.sleep(1.5)
    live = study.ask()  # just created: not stale yet
    open_study("sleepy", url, heartbeat=1, grace=1)
    states = {t.number: t.state for t in _trials(url)}
    assert states == {silent.number: TrialState.FAIL, live.number: TrialState.RUNNING}


def test_the_users_method_args_are_fixed_and_a_zoo_teacher_is_trained_once(tmp_path, monkeypatch):
    import kdkeras.experiment.data as data_module
    import kdkeras.experiment.teacher as teacher_module

    trained = []

    def get_teacher(name, data, **kwargs):
        trained.append(name)
        return type("T", (), {"source": str(tmp_path / "teacher" / "teacher.keras")})()

    monkeypatch.setattr(teacher_module, "get_teacher", get_teacher)
    monkeypatch.setattr(data_module, "setup_data", lambda config, shape=None: None)
    seen = []
    spec = DistillSpec(teacher="resnet20", method="kd", method_args="kd.temperature=2")
    options = TuneOptions(trials=3, retrain=False, pruner="none", reference=False)
    result = tune_distillation(ValConfig(output_dir=str(tmp_path)), spec, options, runner=fake_runner(seen, 0))
    assert trained == ["resnet20"]
    assert {s.teacher for _, s in seen} == {str(tmp_path / "teacher" / "teacher.keras")}
    assert {s.method_args.count("kd.temperature=2") for _, s in seen} == {1}
    assert "kd.temperature" not in result.settings and set(result.settings) == {"kd.weight", "student_loss_weight"}


def test_a_new_study_runs_each_candidates_published_defaults_first(tmp_path):
    seen = []

    def run(config, spec, callbacks=()):
        seen.append(spec)
        return FakeRun({"student_val_top1": 0.5 + 0.01 * len(seen)})

    options = TuneOptions(trials=3, candidates=("kd", "dkd"), retrain=False, pruner="none", reference=False)
    tune_distillation(ValConfig(output_dir=str(tmp_path)), DistillSpec(teacher="t.keras", method="auto"),
                      options, runner=run)
    assert [s.method for s in seen[:2]] == ["kd", "dkd"]
    for spec in seen[:2]:
        name = spec.method
        cls = methods_lib.method_class(name)
        args = dict(kv.split("=") for kv in spec.method_args.split(","))
        expected = {f"{name}.{arg}": (cls.default_weight if arg == "weight" else published_default(name, arg))
                    for arg in method_space(cls)}
        assert {k: float(v) for k, v in args.items()} == pytest.approx(expected)
        assert spec.student_loss_weight == pytest.approx(cls.default_student_loss_weight)
    # a resumed study is not queued again: the third trial is sampled
    tune_distillation(ValConfig(output_dir=str(tmp_path)), DistillSpec(teacher="t.keras", method="auto"),
                      options.replace(trials=4), runner=run)
    assert len(seen) == 4


def test_the_winner_retrains_on_training_part_or_all_examples():
    from kdkeras.tune.final import final_inputs

    config, spec = ValConfig(output_dir="out", train_limit=1000), DistillSpec(teacher="t.keras", method="kd")
    held, held_spec = final_inputs(config, spec, "kd", {"kd.temperature": 2.0})
    assert (held.validation_split, held_spec.baseline, held.output_dir) == (0.1, True, os.path.join("out", "final"))
    every, every_spec = final_inputs(config, spec, "kd", {"kd.temperature": 2.0},
                                     TuneOptions(final_data="all", final_baseline=False))
    assert (every.validation_split, every.train_limit, every_spec.baseline) == (0, 1000, False)
    assert every_spec.method_args == "kd.temperature=2"
    with pytest.raises(ValueError, match="final_data='both'.*training, all"):
        final_inputs(config, spec, "kd", {}, TuneOptions(final_data="both"))

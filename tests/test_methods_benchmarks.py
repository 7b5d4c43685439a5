"""The per-method and CRD speed benchmarks write ratios that equal what their
own raw timings give, and the results-table script runs end to end on tiny
settings (no speed or accuracy asserted)."""

import collections
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT
from tests.test_benchmarks import benchmark, count_calls


@pytest.mark.e2e
def test_methods_speed_json_matches_its_timings(tmp_path, monkeypatch, capsys):
    out = tmp_path / "methods_speed.json"
    rounds, steps, warmup = 3, 2, 1  # three rounds: a median of ratios, not a ratio of medians
    counts = collections.Counter()
    with benchmark(
        "methods_speed.py", "--teacher=resnet8", "--student=resnet8", "--feature_teacher=resnet8",
        "--feature_student=resnet8", "--image_size=8", "--channels=1", "--batch_size=8",
        "--methods=at,fitnet", f"--rounds={rounds}", f"--steps={steps}", f"--warmup={warmup}",
        f"--json={out}",
    ) as methods_speed:
        measure = methods_speed.measure
        monkeypatch.setattr(methods_speed, "measure", lambda variants, *a: measure(count_calls(variants, counts), *a))
        methods_speed.main([])
    data = json.loads(out.read_text())
    method_group = {"kd", "at", "fitnet"}
    keras_group = {"kdkeras_fitnet", "keras_feature", "keras_logits", "student_alone", "teacher_to_tap"}
    ratio_keys = {"at_over_kd", "fitnet_over_kd", "fitnet_over_keras_feature",
                  "keras_feature_over_keras_logits", "fitnet_over_floor", "floor_over_keras_feature"}
    assert set(data) == ratio_keys | {"targets", "target_notes", "skipped", "median_step_seconds",
                                      "step_seconds", "wall_seconds", "config"}
    assert data["skipped"] == {}
    # the warm-up steps, then `steps` steps of every variant in each round
    assert counts == {name: warmup + rounds * steps for name in method_group | keras_group}
    t = {name: np.asarray(v) for name, v in data["step_seconds"].items()}
    assert set(t) == set(data["median_step_seconds"]) == method_group | keras_group
    for name, times in t.items():
        assert times.shape == (rounds,), name
        assert data["median_step_seconds"][name] == pytest.approx(np.median(times), rel=1e-12), name
    # every ratio is the median over rounds of the per-round ratio
    floor = t["student_alone"] + t["teacher_to_tap"]
    expected = {
        "at_over_kd": t["at"] / t["kd"],
        "fitnet_over_kd": t["fitnet"] / t["kd"],
        "fitnet_over_keras_feature": t["kdkeras_fitnet"] / t["keras_feature"],
        "keras_feature_over_keras_logits": t["keras_feature"] / t["keras_logits"],
        "fitnet_over_floor": t["kdkeras_fitnet"] / floor,
        "floor_over_keras_feature": floor / t["keras_feature"],
    }
    for key, per_round in expected.items():
        assert data[key] == pytest.approx(np.median(per_round), rel=1e-12), key
    cfg = data["config"]
    assert (cfg["rounds"], cfg["steps"], cfg["warmup"], cfg["quick"]) == (rounds, steps, warmup, False)
    assert cfg["feature_taps"]["teacher_layer"] == cfg["feature_taps"]["student_layer"]
    printed = capsys.readouterr().out
    value = re.search(r"^fitnet_over_keras_feature\s+([0-9.]+)", printed, re.M)
    assert value is not None, printed
    assert float(value.group(1)) == pytest.approx(data["fitnet_over_keras_feature"], abs=5e-4)


@pytest.mark.e2e
def test_methods_speed_times_each_term_alone_with_its_gradient(tmp_path, monkeypatch):
    """`--term_alone`: `<method>_term_over_kd` is the median per-round ratio of the
    term's own timings to KD's step; the timed call differentiates the term to the
    student's taps and the method's weights; a term it cannot run alone is listed."""
    out = tmp_path / "methods_speed.json"
    rounds, steps, warmup = 3, 2, 1
    counts = collections.Counter()
    with benchmark(
        "methods_speed.py", "--teacher=resnet8", "--student=resnet8", "--image_size=8", "--channels=1",
        "--batch_size=8", "--methods=fitnet,at_gradient", "--term_alone", "--nokeras_comparison",
        f"--rounds={rounds}", f"--steps={steps}", f"--warmup={warmup}", f"--json={out}",
    ) as methods_speed:
        measure = methods_speed.measure
        monkeypatch.setattr(methods_speed, "measure", lambda variants, *a: measure(count_calls(variants, counts), *a))
        methods_speed.main([])
        *_, terms = methods_speed.method_variants(methods_speed.fixed_batch())
        grads = terms["fitnet_term"]()
    data = json.loads(out.read_text())
    assert counts == {name: warmup + rounds * steps for name in ("kd", "fitnet", "at_gradient", "fitnet_term")}
    t = {name: np.asarray(v) for name, v in data["step_seconds"].items()}
    assert data["fitnet_term_over_kd"] == pytest.approx(np.median(t["fitnet_term"] / t["kd"]), rel=1e-12)
    assert set(data["skipped"]) == {"at_gradient_term"}  # its term reads gradient taps of a second pass
    # the student's logits (FitNet reads none: zero), its tap, then FitNet's regressor (conv kernel
    # and bias, BN gamma and beta): all reached
    assert len(grads) == 6 and grads[0].shape == (8, 10) and not np.any(grads[0])
    assert all(float(np.abs(g).sum()) > 0 for g in grads[1:])


@pytest.mark.e2e
def test_crd_speed_json_matches_its_timings(tmp_path, capsys):
    out = tmp_path / "crd_speed.json"
    spec = importlib.util.spec_from_file_location("_benchmark_crd_speed", f"{ROOT}/benchmarks/crd_speed.py")
    crd_speed = importlib.util.module_from_spec(spec)  # argparse flags: no absl clash
    spec.loader.exec_module(crd_speed)
    n, k, dim, batch, repetitions, steps = 64, 16, 8, 8, 2, 2
    result = crd_speed.main([
        "--teacher=resnet8", "--student=resnet8", f"--batch_size={batch}", "--image_size=8",
        "--num_classes=10", f"--num_examples={n}", f"--num_negatives={k}", f"--feat_dim={dim}",
        f"--repetitions={repetitions}", f"--steps={steps}", f"--json={out}",
    ])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))
    t = {name: np.asarray(v) for name, v in data["step_seconds_all"].items()}
    assert set(t) == {"kd", "crd_shared", "crd_exact"}
    for name, times in t.items():
        # one step of every configuration per round, repetitions x steps rounds
        assert times.shape == (repetitions * steps,), name
        assert data["step_seconds"][name] == pytest.approx(np.median(times), rel=1e-12), name
        assert data["over_kd"][name] == pytest.approx(np.median(times / t["kd"]), rel=1e-12), name
        assert data["over_kd_min"][name] == pytest.approx(times.min() / t["kd"].min(), rel=1e-12), name
    assert data["over_kd"]["kd"] == 1.0
    assert data["crd_over_kd"] == data["over_kd"]["crd_shared"]
    assert data["crd_exact_over_kd"] == data["over_kd"]["crd_exact"]
    # two N x D float32 banks, N int32 labels, two float32 log-normalisers, the int32 (seed, draws)
    assert data["bank_bytes"] == n * (2 * dim * 4 + 4) + 2 * 4 + 2 * 4
    assert data["bank_read_bytes_per_step"]["shared"] == 2 * (k + batch) * dim * 4
    assert data["reference_gather_bytes_per_step"] == 2 * batch * (k + 1) * dim * 4
    cfg = data["config"]
    assert (cfg["repetitions"], cfg["steps"], cfg["num_examples"]) == (repetitions, steps, n)
    assert f"crd_over_kd = {data['crd_over_kd']:.3f}" in capsys.readouterr().out


def _table(monkeypatch, *args):
    """benchmarks/methods_table.py's main on `args` in this process (its distill.py runs are still
    processes of their own): one TensorFlow start-up fewer per table than running the script."""
    monkeypatch.setattr(sys, "argv", ["benchmarks/methods_table.py", *args])  # the table's command line
    with benchmark("methods_table.py", *args) as table:
        table.main([])


@pytest.mark.e2e
def test_methods_table_writes_markdown_and_json(tmp_path, monkeypatch, capsys):
    import kdkeras

    teacher = tmp_path / "teacher.keras"
    kdkeras.models.get("resnet8", (8, 8, 1), 10).save(teacher)
    out = tmp_path / "table" / "table.md"
    args = [f"--teacher={teacher}", "--student=resnet8", "--dataset=fashion_mnist", "--methods=at",
            "--epochs=1", "--train_limit=32", "--test_limit=32", "--batch_size=16",
            f"--output={out}", "--extra_args=--run_eagerly"]
    _table(monkeypatch, *args)
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["method"] for r in data["rows"]] == ["baseline", "kd", "at"]
    for key in ("command", "baseline_top1", "kd_top1", "teacher_top1", "config"):
        assert key in data, key
    for row in data["rows"]:
        for key in ("student_top1", "gain_over_baseline", "gain_over_kd", "train_seconds"):
            assert row[key] is not None, (row["method"], key)
    table = out.read_text()
    assert "methods_table.py" in table and "| at |" in table and "| baseline |" in table
    # both runs read one cache, built by the first with AT's taps as well as the logits
    metrics_path = {m: tmp_path / "table" / m / "seed0" / "metrics.json" for m in ("kd", "at")}
    runs = {m: json.loads(path.read_text()) for m, path in metrics_path.items()}
    cache_dir = tmp_path / "table" / "teacher_cache" / "seed0"
    assert runs["kd"]["teacher_cache"] == runs["at"]["teacher_cache"] == str(cache_dir)
    manifest = json.loads((cache_dir / "train" / "manifest.json").read_text())
    assert set(manifest["method_taps"]) == {"kd", "at"} and len(manifest["entries"]) > 1
    assert "[cache] reusing" in (tmp_path / "table" / "at" / "seed0" / "log.txt").read_text()
    for m in runs.values():  # the teacher's top-1 from the run equals the cached test logits'
        cache = json.loads((Path(m["teacher_cache"]) / "test" / "manifest.json").read_text())
        assert cache["teacher_top1"] == pytest.approx(m["teacher_top1"])
    finished = {m: (path.stat().st_mtime_ns, path.read_text()) for m, path in metrics_path.items()}

    # One more table, with --resume: it reads the finished runs (KD, AT) back instead of training
    # them again; and, a later group of the sweep (RKD: a layer the cache lacks), it replaces the
    # cache with one holding every listed method's layers, instead of failing on it.
    capsys.readouterr()
    group = [a if not a.startswith("--methods=") else "--methods=at,rkd" for a in args]
    _table(monkeypatch, *group, "--teacher_cache_methods=at,rkd", "--resume")
    printed = capsys.readouterr().out
    assert "[at] resumed" in printed and "[kd] resumed" in printed
    assert {m: (path.stat().st_mtime_ns, path.read_text()) for m, path in metrics_path.items()} == finished
    assert (tmp_path / "table" / "rkd" / "seed0" / "metrics.json").exists()
    manifest = json.loads((cache_dir / "train" / "manifest.json").read_text())
    assert set(manifest["method_taps"]) == {"kd", "at", "rkd"}


def test_methods_table_seeds_layout_resume_and_table(tmp_path, monkeypatch):
    """--seeds runs every (method, seed) into OUTPUT_DIR/<method>/seed<S>/ with that
    seed, the baseline only with KD; an old single-seed run is moved into its seed
    folder and resumed; the table holds means over seeds of gains paired by seed,
    the same numbers benchmarks/results_doc.py makes of the folder. No training:
    distill.py's process is replaced by one that writes a metrics.json."""
    import subprocess

    out = tmp_path / "table"
    baseline = {0: 0.80, 1: 0.83}
    top1 = {("kd", 0): 0.82, ("kd", 1): 0.84, ("at", 0): 0.79, ("at", 1): 0.835}
    calls = []

    def fake_distill(cmd, stdout, **kwargs):
        args = dict(a[2:].split("=", 1) for a in cmd[2:] if "=" in a)
        method, seed = args["method"], int(args["seed"])
        calls.append((method, seed, args["output_dir"], "--baseline" in cmd))
        metrics = {"method": method, "seed": seed, "student_top1": top1[method, seed], "teacher_top1": 0.805,
                   "train_seconds": 1.0 + seed, "dataset": "fashion_mnist", "teacher": "resnet8",
                   "student": "resnet8", "epochs": 1, "train_limit": 32, "batch_size": 64, "lr": 0.05,
                   "command": " ".join(cmd)}
        if "--baseline" in cmd:
            metrics.update(baseline_top1=baseline[seed], baseline_train_seconds=0.5)
        Path(args["output_dir"], "metrics.json").write_text(json.dumps(metrics))
        return subprocess.CompletedProcess(cmd, 0)

    legacy = out / "kd"  # the old layout: OUTPUT_DIR/kd/metrics.json, seed 0
    legacy.mkdir(parents=True)
    (legacy / "metrics.json").write_text(json.dumps(
        {"method": "kd", "seed": 0, "student_top1": top1["kd", 0], "teacher_top1": 0.805,
         "baseline_top1": baseline[0], "train_seconds": 1.0, "baseline_train_seconds": 0.5,
         "dataset": "fashion_mnist", "teacher": "resnet8", "student": "resnet8", "epochs": 1,
         "train_limit": 32, "batch_size": 64, "lr": 0.05}))
    (legacy / "log.txt").write_text("old log")
    with benchmark("methods_table.py", "--teacher=resnet8", "--methods=at", "--seeds=0,1", "--epochs=1",
                   "--train_limit=32", f"--output_dir={out}", "--teacher_cache=none", "--resume") as table:
        monkeypatch.setattr(table.subprocess, "run", fake_distill)
        table.main([])
    # kd seed 0 came from the moved old run; every other run went to its own seed folder
    assert calls == [("at", 0, str(out / "at" / "seed0"), False), ("kd", 1, str(out / "kd" / "seed1"), True),
                     ("at", 1, str(out / "at" / "seed1"), False)]
    assert not (legacy / "metrics.json").exists() and (legacy / "seed0" / "log.txt").read_text() == "old log"
    data = json.loads((out / "table.json").read_text())
    assert data["seeds"] == [0, 1] and data["config"]["seeds"] == ["0", "1"]
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == ["baseline", "kd", "at"]
    gains = np.array([top1["at", s] - baseline[s] for s in (0, 1)])
    assert rows["at"]["gain_over_baseline"] == pytest.approx(gains.mean())
    assert rows["at"]["gain_over_baseline_std"] == pytest.approx(gains.std(ddof=1))
    assert rows["at"]["gain_over_kd"] == pytest.approx(np.mean([top1["at", s] - top1["kd", s] for s in (0, 1)]))
    assert rows["baseline"]["student_top1"] == pytest.approx(np.mean(list(baseline.values())))
    assert rows["at"]["seeds"] == [0, 1] and rows["at"]["train_seconds"] == pytest.approx(1.5)
    text = (out / "table.md").read_text()
    assert f"| at | {100 * np.mean([0.79, 0.835]):.2f} ± " in text and "seeds 0,1" in text
    assert "**Warning:** the teacher is under 1 point better" in text  # 0.805 vs 0.815 alone
    # the results page reads the same runs to the same paired gain
    spec = importlib.util.spec_from_file_location("_benchmark_results_doc", f"{ROOT}/benchmarks/results_doc.py")
    results_doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results_doc)
    page = results_doc.main([str(out), f"--output={tmp_path / 'results.md'}"])
    [section] = page["sections"]
    at = next(r for r in section["rows"] if r["method"] == "at")
    assert at["gain_over_baseline"]["mean"] == pytest.approx(rows["at"]["gain_over_baseline"])


def test_methods_table_runs_a_method_with_dot_beside_the_plain_kd_and_baseline(tmp_path, monkeypatch):
    """METHOD@dot runs distill.py with --optimizer=dot and no --baseline; the archived
    plain KD runs (with the baseline) are resumed, never rerun with DOT; the table and
    the results page pair the DOT rows with them. No training: a fake distill.py."""
    import subprocess

    out = tmp_path / "table"
    baseline = {0: 0.80, 1: 0.83}
    top1 = {("kd", 0): 0.82, ("kd", 1): 0.84}
    dot = {("kd", 0): 0.83, ("kd", 1): 0.86, ("dkd", 0): 0.815, ("dkd", 1): 0.845}
    calls = []

    def write(folder, metrics, optimizer, **settings):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({
            "teacher_top1": 0.9, "train_seconds": 1.0, "dataset": "fashion_mnist", "teacher": "resnet8",
            "student": "resnet8", "epochs": 1, "train_limit": 32, "batch_size": 64, "lr": 0.05, **metrics}))
        (folder / "run_config.json").write_text(json.dumps({"optimizer": optimizer, "momentum": 0.9,
                                                             "dot_delta": None, **settings}))

    for seed in (0, 1):  # the archived plain KD runs, with their baselines
        write(out / "kd" / f"seed{seed}", {"method": "kd", "seed": seed, "student_top1": top1["kd", seed],
                                            "baseline_top1": baseline[seed]}, "sgd")

    def fake_distill(cmd, stdout, **kwargs):
        args = dict(a[2:].split("=", 1) for a in cmd[2:] if "=" in a)
        method, seed = args["method"], int(args["seed"])
        calls.append(cmd[2:])
        write(Path(args["output_dir"]), {"method": method, "seed": seed, "student_top1": dot[method, seed]},
              args.get("optimizer", "sgd"), dot_delta=float(args["dot_delta"]) if "dot_delta" in args else None)
        return subprocess.CompletedProcess(cmd, 0)

    with benchmark("methods_table.py", "--teacher=resnet8", "--methods=kd@dot,dkd@dot", "--seeds=0,1",
                   "--epochs=1", "--train_limit=32", f"--output_dir={out}", "--teacher_cache=none",
                   "--dot_delta=0.05", "--resume") as table:
        assert table.split_entry("dkd@dot") == ("dkd", "dot") and table.split_entry("kd") == ("kd", None)
        with pytest.raises(ValueError, match=r"'kd@adamw'.*\['dot'\]"):
            table.split_entry("kd@adamw")
        monkeypatch.setattr(table.subprocess, "run", fake_distill)
        table.main([])
    # only the DOT entries ran: DOT with the given gap, no baseline, each in its own folder
    assert [(a[3], a[7], a[8]) for a in calls] == [
        (f"--method={m}", f"--seed={s}", f"--output_dir={out / (m + '@dot') / f'seed{s}'}")
        for s in (0, 1) for m in ("kd", "dkd")]
    for args in calls:
        assert "--baseline" not in args and args[-2:] == ["--optimizer=dot", "--dot_delta=0.05"]
    rows = {r["method"]: r for r in json.loads((out / "table.json").read_text())["rows"]}
    assert list(rows) == ["baseline", "kd", "kd@dot", "dkd@dot"]
    for m in ("kd", "dkd"):
        gains = [dot[m, s] - baseline[s] for s in (0, 1)]
        assert rows[f"{m}@dot"]["gain_over_baseline"] == pytest.approx(np.mean(gains))
    # the results page: one section, the DOT rows labelled, paired with the SGD baseline and KD
    spec = importlib.util.spec_from_file_location("_benchmark_results_doc", f"{ROOT}/benchmarks/results_doc.py")
    results_doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results_doc)
    [section] = results_doc.main([str(out), f"--output={tmp_path / 'results.md'}"])["sections"]
    page = {r["method"]: r for r in section["rows"]}
    assert list(page) == ["baseline", "kd", "dkd (optimizer=dot, dot_delta=0.05)",
                          "kd (optimizer=dot, dot_delta=0.05)"]
    kd_dot = page["kd (optimizer=dot, dot_delta=0.05)"]
    assert kd_dot["gain_over_baseline"]["mean"] == pytest.approx(rows["kd@dot"]["gain_over_baseline"])
    assert kd_dot["gain_over_kd"]["mean"] == pytest.approx(np.mean([dot["kd", s] - top1["kd", s] for s in (0, 1)]))

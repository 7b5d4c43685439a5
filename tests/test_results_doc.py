"""The results page generator reproduces, from fixture metrics.json files, the
means, sample stds and seed-paired gains NumPy computes; flags a method that
loses to the baseline; makes one section per teacher/student/budget; refuses a
root without runs. Also the recipes' teacher-margin warning and DKD's warm-up
scaled to the run (no training anywhere)."""

import importlib.util
import json
import os
import re

import numpy as np
import pytest

from tests.helpers import ROOT

TEACHER = "saved_models/fashion_mnist_resnet20/model.keras"


def _load():
    spec = importlib.util.spec_from_file_location("_benchmark_results_doc",
                                                  os.path.join(ROOT, "benchmarks", "results_doc.py"))
    module = importlib.util.module_from_spec(spec)  # argparse: no absl flags to clash
    spec.loader.exec_module(module)
    return module


results_doc = _load()


def write_run(root, method, seed, top1, *, baseline=None, teacher_top1=0.92, teacher=TEACHER,
              student="resnet8", train_limit=10000, epochs=5, seconds=10.0, test_limit=None, folder=None):
    """A metrics.json as recipes/distill.py writes it (and its run_config.json), in methods_table's
    layout (ROOT/METHOD/seedN) unless `folder` says where."""
    folder = folder or root / method / f"seed{seed}"
    folder.mkdir(parents=True)
    metrics = {"method": method, "method_args": "", "dataset": "fashion_mnist", "teacher": teacher,
               "student": student, "student_args": {}, "student_top1": top1, "teacher_top1": teacher_top1,
               "epochs": epochs, "train_limit": train_limit, "test_limit": test_limit, "batch_size": 64,
               "lr": 0.05, "seed": seed, "train_seconds": seconds,
               "command": f"python recipes/distill.py --method={method} --seed={seed}"}
    if baseline is not None:
        metrics.update(baseline_top1=baseline, baseline_train_seconds=seconds / 2)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "run_config.json").write_text(json.dumps({"optimizer": "sgd", "schedule": "cosine", "seed": seed}))
    return folder / "metrics.json"


BASELINE = [0.861, 0.855, 0.866]
TOP1 = {"kd": [0.872, 0.869, 0.874], "dkd": [0.880, 0.861], "at": [0.850, 0.857, 0.852]}  # dkd: no seed 2


def write_pair(root, **kwargs):
    for method, values in TOP1.items():
        for seed, top1 in enumerate(values):
            write_run(root, method, seed, top1, baseline=BASELINE[seed] if method == "kd" else None,
                      seconds=10.0 + seed + len(method), **kwargs)


def _row(section, method):
    return next(r for r in section["rows"] if r["method"] == method)


def test_generator_reproduces_means_stds_and_paired_gains(tmp_path):
    runs = tmp_path / "runs"
    write_pair(runs)
    (runs / "teacher").mkdir()  # a teacher's metrics.json is not a distillation run: skipped
    (runs / "teacher" / "metrics.json").write_text(json.dumps({"top1": 0.92}))
    page = tmp_path / "docs" / "results.md"
    readme = tmp_path / "readme_block.md"
    payload = results_doc.main([str(runs), f"--output={page}", f"--readme_output={readme}"])
    assert payload == json.loads(page.with_suffix(".json").read_text())
    assert payload["skipped_not_distillation_runs"] == [str(runs / "teacher" / "metrics.json")]
    [section] = payload["sections"]
    base, kd = np.array(BASELINE), np.array(TOP1["kd"])
    expected = {"baseline": (base, None, base - kd), "kd": (kd, kd - base, None)}
    for method in ("dkd", "at"):
        top1 = np.array(TOP1[method])
        n = len(top1)  # gains paired by seed: dkd's two seeds against those seeds' baseline and KD
        expected[method] = (top1, top1 - base[:n], top1 - kd[:n])
    for method, (top1, gain_b, gain_kd) in expected.items():
        row = _row(section, method)
        assert row["n"] == len(top1), method
        assert row["top1"]["mean"] == pytest.approx(top1.mean(), abs=1e-12), method
        assert row["top1"]["std"] == pytest.approx(top1.std(ddof=1), abs=1e-12), method
        for key, values in (("gain_over_baseline", gain_b), ("gain_over_kd", gain_kd)):
            if values is None:
                assert row[key]["mean"] is None, (method, key)
                continue
            assert row[key]["mean"] == pytest.approx(values.mean(), abs=1e-12), (method, key)
            assert row[key]["std"] == pytest.approx(values.std(ddof=1), abs=1e-12), (method, key)
    assert [r["method"] for r in section["rows"]] == ["baseline", "kd", "at", "dkd"]
    assert _row(section, "at")["train_seconds"] == pytest.approx(np.mean([12.0, 13.0, 14.0]))
    assert _row(section, "baseline")["train_seconds"] == pytest.approx(np.mean([12.0, 13.0, 14.0]) / 2)
    assert section["teacher_top1"] == pytest.approx(0.92)
    assert section["teacher_margin"]["mean"] == pytest.approx((0.92 - base).mean(), abs=1e-12)
    assert section["baseline_spread"] == pytest.approx(base.std(ddof=1), abs=1e-12)
    # the losing method (at: mean paired gain < 0) is flagged, the others are not
    assert {r["method"]: r["below_baseline"] for r in section["rows"]} == {
        "baseline": False, "kd": False, "at": True, "dkd": False}
    text = page.read_text()
    at_gain = TOP1["at"] - base
    at_line = next(line for line in text.splitlines() if line.startswith("| **at** ⚠"))
    assert f"{100 * at_gain.mean():+.2f} ± {100 * at_gain.std(ddof=1):.2f}" in at_line
    assert "below baseline" in at_line and "**Below the baseline** (mean paired gain < 0): `at` (within the seeds' noise" in text
    dkd_line = next(line for line in text.splitlines() if line.startswith("| dkd |"))
    assert "below" not in dkd_line and f"{100 * np.mean(TOP1['dkd']):.2f} ± " in dkd_line
    assert "**Budget too small:**" in text  # this baseline's spread is 0.55 point
    # every row names its metrics.json files and the commands that made them
    runs_of_dkd = _row(section, "dkd")["runs"]
    assert [r["path"] for r in runs_of_dkd] == [str(runs / "dkd" / f"seed{s}" / "metrics.json") for s in (0, 1)]
    assert runs_of_dkd[1]["command"] == "python recipes/distill.py --method=dkd --seed=1"
    assert f"`{runs / 'dkd' / 'seed1' / 'metrics.json'}`: `python recipes/distill.py --method=dkd --seed=1`" in text
    assert [r["path"] for r in _row(section, "baseline")["runs"]] == [
        str(runs / "kd" / f"seed{s}" / "metrics.json") for s in range(3)]
    # the README block: the short table, linking the full page
    block = readme.read_text()
    assert f"]({os.path.relpath(page, ROOT)})" in block and "| at ⚠ |" in block


def test_each_row_states_the_hyper_parameters_it_ran_with(tmp_path):
    """Recorded settings are shown as recorded; a run from before they were recorded
    gets its method rebuilt from its method arguments (and the run-length defaults
    the recipe added), and says so."""
    runs = tmp_path / "runs"
    write_run(runs, "kd", 0, 0.87, baseline=0.86)
    recorded = write_run(runs, "at", 0, 0.86)
    metrics = json.loads(recorded.read_text())
    metrics.update(student_loss_weight=1.0, method_settings={"at": {"weight": 250.0, "mode": "activation",
                                                                     "teacher_layers": ["s1", "s2"]}})
    recorded.write_text(json.dumps(metrics))
    old = write_run(runs, "dkd", 0, 0.865)
    metrics = json.loads(old.read_text())
    metrics.update(student_loss_weight=1.0, method_args="dkd.beta=2",
                   run_length_defaults={"dkd": {"warmup_fraction": 20 / 240}})
    old.write_text(json.dumps(metrics))
    page = tmp_path / "results.md"
    [section] = results_doc.main([str(runs), f"--output={page}"])["sections"]
    at = _row(section, "at (weight=250.0; earlier default)")["settings"]  # AT's default is 1000
    assert at == "CE weight 1.0; at: weight=250.0, mode=activation, teacher_layers=['s1', 's2']"
    dkd = _row(section, "dkd (dkd.beta=2)")["settings"]
    assert "beta=2" in dkd and "temperature=4.0" in dkd and "warmup_fraction=0.0833" in dkd
    assert "scaled to the run's length" in dkd and dkd.endswith("this commit's defaults)")
    assert f"- at (weight=250.0; earlier default): {at}" in page.read_text()
    assert "**Earlier defaults:** `at (weight=250.0; earlier default)` ran with a default that has changed" \
        in page.read_text()


def test_a_row_below_the_baseline_carries_what_its_histories_say(tmp_path):
    """The method's term first/last epoch and last-epoch fall, and the student's final
    training accuracy against its seed's baseline, means over seeds (NumPy here)."""
    runs = tmp_path / "runs"
    crd_terms = {0: [20.0, 14.0, 11.0], 1: [24.0, 15.0, 12.5]}
    crd_acc, base_acc, kd_acc = {0: 0.85, 1: 0.86}, {0: 0.88, 1: 0.885}, {0: 0.884, 1: 0.89}
    for seed in (0, 1):
        for method, top1, extra in (
                ("kd", 0.87, {"history": {"kd": [3.0, 1.0, 0.9], "accuracy": [0.7, 0.8, kd_acc[seed]]},
                              "baseline_history": {"accuracy": [0.7, 0.8, base_acc[seed]]}}),
                ("crd", 0.84, {"history": {"crd": crd_terms[seed], "accuracy": [0.6, 0.8, crd_acc[seed]]}})):
            path = write_run(runs, method, seed, top1, baseline=0.86 if method == "kd" else None)
            metrics = json.loads(path.read_text())
            metrics.update(extra)
            path.write_text(json.dumps(metrics))
    page = tmp_path / "results.md"
    [section] = results_doc.main([str(runs), f"--output={page}"])["sections"]
    d = _row(section, "crd")["diagnosis"]
    terms = np.array(list(crd_terms.values()))
    assert d["term"] == "crd"
    assert d["first"] == pytest.approx(terms[:, 0].mean()) and d["last"] == pytest.approx(terms[:, -1].mean())
    assert d["last_epoch_fall"] == pytest.approx(np.mean((terms[:, -2] - terms[:, -1]) / terms[:, -2]))
    assert d["train_accuracy_gap"] == pytest.approx(np.mean([crd_acc[s] - base_acc[s] for s in (0, 1)]))
    text = page.read_text()
    below = next(line for line in text.splitlines() if line.startswith("**Below the baseline**"))
    assert "`crd` 22 → 11.8" in below and "-2.75 points" in below and "holds the student back" in below
    overfit = [base_acc[s] - 0.86 for s in (0, 1)]  # the baseline's train accuracy above its test top-1
    assert section["baseline_overfit"]["mean"] == pytest.approx(np.mean(overfit))
    assert section["baseline_overfit"]["std"] == pytest.approx(np.std(overfit, ddof=1))
    gap_line = next(line for line in text.splitlines() if "generalisation gap" in line)
    assert f"+{100 * np.mean(overfit):.2f} ± {100 * np.std(overfit, ddof=1):.2f} points" in gap_line
    kd = _row(section, "kd")["diagnosis"]  # KD fits its data as well as the baseline: no such inference
    assert "holds the student back" not in results_doc.diagnosis_text(kd)
    assert "fits its training data as well and loses on test data" in results_doc.diagnosis_text(kd, below=True)
    assert "loses on test data" not in results_doc.diagnosis_text(kd) + results_doc.diagnosis_text(d, below=True)
    fsp = {"method": "fsp", "seed": 0, "history": {"loss": [0.6, 0.3], "accuracy": [0.7, 0.84],
                                                    "stages": {"init": {"fsp": [0.4]}}}}
    base = {"baseline_history": {"accuracy": [0.7, 0.88]}}
    staged = results_doc.diagnosis([fsp], {0: base})  # FSP: its term trains only in the init stage
    assert staged["term"] == "loss" and staged["init_stage_only"] is True
    assert results_doc.diagnosis([{**fsp, "history": {"fsp": [0.4, 0.2], "accuracy": [0.7, 0.84]}}],
                                 {0: base})["init_stage_only"] is False
    assert "started from its init stage's weights" in results_doc.diagnosis_text(staged, below=True)
    rising = results_doc.diagnosis([{**fsp, "history": {"fsp": [0.4, 0.5], "accuracy": [0.7, 0.84]}}], {0: base})
    assert "(+25% in the last epoch)" in results_doc.diagnosis_text(rising)  # a term that rose says so
    assert "the term holds" not in results_doc.diagnosis_text(staged, below=True)


def test_archive_keeps_the_records_the_page_cites(tmp_path):
    runs = tmp_path / "outside" / "pair"
    write_pair(runs)
    archive = tmp_path / "docs" / "runs"
    payload = results_doc.main([str(runs), f"--output={tmp_path / 'docs' / 'results.md'}",
                                f"--archive={archive}"])
    copied = sorted(p.relative_to(archive) for p in archive.rglob("*.json") if p.parent != archive)
    assert len(copied) == 2 * sum(len(v) for v in TOP1.values())  # metrics.json and run_config.json
    assert (archive / results_doc.MethodDefaults.FILE).exists()  # the page regenerates without TensorFlow
    assert (archive / "pair" / "at" / "seed2" / "run_config.json").exists()
    cited = [run["path"] for row in payload["sections"][0]["rows"] for run in row["runs"]]
    assert cited and all(path.startswith(str(archive)) for path in cited)
    again = results_doc.main([str(archive / "pair"), f"--output={tmp_path / 'c.md'}"])
    assert [r["top1"] for r in again["sections"][0]["rows"]] == [r["top1"] for r in payload["sections"][0]["rows"]]


def test_new_runs_join_an_archived_root_of_the_same_name(tmp_path):
    """The archive itself can be a root: a later run folder of the same name adds its
    rows to it (nothing copied onto itself), and the page counts every seed once."""
    archive = tmp_path / "docs" / "runs"
    old = tmp_path / "old" / "pair"
    write_pair(old)
    results_doc.main([str(old), f"--output={tmp_path / 'a.md'}", f"--archive={archive}"])
    new = tmp_path / "new" / "pair"
    for seed, top1 in enumerate([0.875, 0.870, 0.873]):
        write_run(new, "sp", seed, top1)
    payload = results_doc.main([str(archive / "pair"), str(new), f"--output={tmp_path / 'b.md'}",
                                f"--archive={archive}"])
    assert payload["roots"] == [str(archive / "pair")]
    [section] = payload["sections"]
    assert {r["method"]: r["n"] for r in section["rows"]} == {"baseline": 3, "kd": 3, "at": 3, "dkd": 2, "sp": 3}
    sp = np.array([0.875, 0.870, 0.873]) - np.array(BASELINE)
    assert _row(section, "sp")["gain_over_baseline"]["mean"] == pytest.approx(sp.mean(), abs=1e-12)
    assert all(run["path"].startswith(str(archive)) for row in section["rows"] for run in row["runs"])


def test_two_pairs_make_two_sections(tmp_path):
    same, wide = tmp_path / "r20_r8", tmp_path / "wrn"
    write_pair(same)
    write_pair(wide, teacher="saved_models/fashion_mnist_wrn_40_2/model.keras", student="wrn_16_1",
               teacher_top1=0.93)
    write_run(same / "short", "kd", 0, 0.80, baseline=0.79, epochs=1)  # another budget: its own section
    page = tmp_path / "results.md"
    payload = results_doc.main([str(same), str(wide), f"--output={page}"])
    sections = payload["sections"]
    assert sorted((s["student"], s["budget"]["epochs"]) for s in sections) == [
        ("resnet8", 1), ("resnet8", 5), ("wrn_16_1", 5)]
    wrn = next(s for s in sections if s["student"] == "wrn_16_1")
    assert wrn["teacher_top1"] == pytest.approx(0.93)
    assert _row(wrn, "kd")["n"] == 3 and _row(wrn, "dkd")["n"] == 2
    short = next(s for s in sections if s["budget"]["epochs"] == 1)
    assert [r["method"] for r in short["rows"]] == ["baseline", "kd"]
    assert _row(short, "kd")["gain_over_baseline"]["mean"] == pytest.approx(0.01)
    assert "**No baseline spread:**" in page.read_text()  # one seed: the noise is unmeasured
    headings = [line for line in page.read_text().splitlines() if line.startswith("## ")]
    assert headings == [f"## {results_doc.section_title(s)}" for s in sections] and len(set(headings)) == 3
    assert any("fashion_mnist_wrn_40_2 -> wrn_16_1" in h for h in headings)


def test_newest_run_of_a_seed_wins(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "kd", 0, 0.85, baseline=0.84)
    newer = write_run(runs / "again", "kd", 0, 0.87, baseline=0.84)
    os.utime(newer, (os.path.getmtime(newer) + 10,) * 2)
    payload = results_doc.main([str(runs), f"--output={tmp_path / 'r.md'}"])
    assert _row(payload["sections"][0], "kd")["top1"]["values"] == [0.87]
    assert payload["superseded"] == [str(runs / "kd" / "seed0" / "metrics.json")]


def test_refuses_a_root_without_runs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(results_doc.NoRunsError, match=f"{empty}.*holds no distillation run"):
        results_doc.main([str(empty), f"--output={tmp_path / 'r.md'}"])
    teacher_only = tmp_path / "teacher_only"
    teacher_only.mkdir()
    (teacher_only / "metrics.json").write_text(json.dumps({"top1": 0.9}))
    good = tmp_path / "good"
    write_run(good, "kd", 0, 0.85, baseline=0.84)
    with pytest.raises(results_doc.NoRunsError, match="teacher_only"):  # even next to a root with runs
        results_doc.main([str(good), str(teacher_only), f"--output={tmp_path / 'r.md'}"])
    with pytest.raises(results_doc.NoRunsError, match="not a folder"):
        results_doc.main([str(tmp_path / "missing"), f"--output={tmp_path / 'r.md'}"])
    assert not (tmp_path / "r.md").exists()


# -- the recipes' teacher margin and run-length defaults -----------------------------------------
def test_weak_teacher_warning_only_when_the_teacher_gets_most_of_the_loss():
    from kdkeras.experiment import teacher_margin, weak_teacher_warning

    assert teacher_margin(0.867, 0.860) == pytest.approx(0.007)
    assert teacher_margin(0.867, None) is None and teacher_margin(None, 0.86) is None
    warning = weak_teacher_warning(0.867, 0.860, 0.1)  # the kept-aside case: KD lost 1.8 points
    assert warning is not None and "+0.70 points" in warning and "weight 0.1" in warning
    assert weak_teacher_warning(0.867, 0.860, 1.0) is None  # CE keeps most of the loss (DKD's 1)
    assert weak_teacher_warning(0.90, 0.86, 0.1) is None  # a 4-point margin
    assert weak_teacher_warning(0.85, 0.86, 0.1) is not None  # a teacher worse than the student alone
    assert weak_teacher_warning(None, 0.86, 0.1) is None


def test_recipes_scale_dkd_warmup_with_the_run():
    from kdkeras import methods
    from kdkeras.experiment import run_length_args

    args, added = run_length_args("kd+dkd", "kd.temperature=2")
    assert added == {"dkd": {"warmup_fraction": pytest.approx(1 / 12)}}
    assert args["kd"] == {"temperature": 2}
    _, dkd = methods.from_spec("kd+dkd", args)
    five_epochs = [float(dkd.warmup_factor(methods.StepContext(epoch=e, epochs=5))) for e in range(5)]
    assert five_epochs == [1.0] * 5  # ceil(5 / 12) = 1 epoch of warm-up, not 20
    sixty = [float(dkd.warmup_factor(methods.StepContext(epoch=e, epochs=60))) for e in (0, 4, 5)]
    assert sixty == pytest.approx([0.2, 1.0, 1.0])  # 5 of 60 epochs, the published 20 of 240
    plain = methods.from_spec("dkd")[0]  # the class itself keeps its published 20-epoch count
    assert float(plain.warmup_factor(methods.StepContext(epoch=4, epochs=5))) == pytest.approx(0.25)
    for given in ("dkd.warmup_epochs=3", "dkd.warmup_fraction=0.5"):  # the user's value is kept
        args, added = run_length_args("dkd", given)
        assert added == {} and len(args["dkd"]) == 1, given
    assert run_length_args("kd", "") == ({}, {})


def test_a_narrower_student_gets_its_own_titled_section(tmp_path):
    for seed in range(2):
        write_run(tmp_path / "full", "kd", seed, 0.90, baseline=0.89)
        write_run(tmp_path / "half", "kd", seed, 0.88, baseline=0.87)
        folder = tmp_path / "half" / "kd" / f"seed{seed}"
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["student_args"] = {"width_multiplier": 0.5}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    runs, _ = results_doc.load_runs([str(tmp_path / "full"), str(tmp_path / "half")])
    sections, _ = results_doc.summarize(runs)
    titles = {json.dumps(s["student_args"]): results_doc.section_title(s) for s in sections}
    assert len(titles) == 2 and "-> resnet8 (width_multiplier=0.5)," in titles['{"width_multiplier": 0.5}']
    assert "-> resnet8, 10,000 train" in titles["{}"]


def test_sections_follow_the_order_of_the_roots(tmp_path):
    for root, top1 in (("b_second", 0.90), ("a_first", 0.88)):
        write_run(tmp_path / root, "kd", 0, top1, baseline=0.87, train_limit=20000 if root == "a_first" else 10000)
    for order in (["b_second", "a_first"], ["a_first", "b_second"]):
        runs, _ = results_doc.load_runs([str(tmp_path / r) for r in order])
        sections, _ = results_doc.summarize(runs)
        limits = [s["budget"]["train_limit"] for s in sections]
        assert limits == [20000 if r == "a_first" else 10000 for r in order]


def test_clear_losses_and_clear_wins_over_kd_follow_the_rule(tmp_path):
    """A loss to the baseline is called clear only when its paired mean exceeds its std,
    and a row beats KD clearly only when its paired gain over KD does (NumPy here)."""
    runs = tmp_path / "runs"
    base, kd = [0.860, 0.856, 0.864], [0.870, 0.868, 0.873]
    rows = {"sp": [0.878, 0.874, 0.882],    # over KD +0.008, +0.006, +0.009: clear win
            "pkt": [0.880, 0.866, 0.874],   # over KD +0.010, -0.002, +0.001: mean below std
            "crd": [0.850, 0.846, 0.855],   # below the baseline by about a point each seed: clear loss
            "cc": [0.861, 0.850, 0.863]}    # -> +0.001, -0.006, -0.001: a loss within the noise
    for seed in range(3):
        write_run(runs, "kd", seed, kd[seed], baseline=base[seed])
        for method, values in rows.items():
            write_run(runs, method, seed, values[seed])
    page = tmp_path / "results.md"
    [section] = results_doc.main([str(runs), f"--output={page}"])["sections"]

    def clear(diff, sign=1):
        diff = sign * np.asarray(diff)
        return diff.mean() > 0 and diff.mean() > diff.std(ddof=1)

    for method, values in rows.items():
        row = _row(section, method)
        assert row["beats_kd_clearly"] == clear(np.subtract(values, kd))
        assert row["clear_loss"] == clear(np.subtract(values, base), sign=-1)
    assert [r["method"] for r in section["rows"] if r["beats_kd_clearly"]] == ["sp"]
    assert [r["method"] for r in section["rows"] if r["clear_loss"]] == ["crd"]
    lines = page.read_text().splitlines()
    below = next(line for line in lines if line.startswith("**Below the baseline**"))
    assert "`cc` (within the seeds' noise" in below and "`crd` (a clear loss" in below
    wins = next(line for line in lines if line.startswith("**Beats KD clearly**"))
    assert "`sp` +0.77 ± 0.15" in wins and "pkt" not in wins
    assert next(line for line in lines if line.startswith("| sp ")).endswith("beats KD clearly |")


def test_a_section_without_kd_compares_with_the_baseline_only(tmp_path):
    """A section whose runs hold no KD row (e.g. a ViT student with its own method) gets
    its gains over the baseline and no sentence about KD."""
    runs = tmp_path / "runs"
    for seed, (top1, base) in enumerate(zip([0.853, 0.849, 0.857], BASELINE)):
        write_run(runs, "deit", seed, top1, baseline=base, student="deit_micro")
    page = tmp_path / "results.md"
    [section] = results_doc.main([str(runs), f"--output={page}"])["sections"]
    row = _row(section, "deit")
    assert row["gain_over_baseline"]["mean"] == pytest.approx(np.mean(np.subtract([0.853, 0.849, 0.857], BASELINE)))
    assert row["gain_over_kd"]["mean"] is None
    assert "KD clearly" not in page.read_text()


def test_a_run_made_under_an_earlier_default_is_its_own_row(tmp_path):
    """A run whose recorded hyper-parameters differ from this commit's defaults (FSP
    recorded at weight 50) is never averaged with runs at the current default."""
    from kdkeras import methods as methods_lib

    current = methods_lib.method_settings(methods_lib.from_spec("fsp", {}, num_examples=10000))
    old = {"fsp": {**current["fsp"], "weight": current["fsp"]["weight"] * 50}}
    runs = tmp_path / "runs"
    for seed in range(2):
        write_run(runs, "kd", seed, 0.87, baseline=0.86)
        for settings, top1, folder in ((current, 0.865, "fsp"), (old, 0.84, "fsp_old")):
            path = write_run(runs / folder, "fsp", seed, top1 + seed / 1000)
            metrics = json.loads(path.read_text())
            metrics["method_settings"] = settings
            path.write_text(json.dumps(metrics))
    [section] = results_doc.main([str(runs), f"--output={tmp_path / 'r.md'}"])["sections"]
    rows = {r["method"]: r for r in section["rows"]}
    old_name = f"fsp (weight={old['fsp']['weight']}; earlier default)"
    assert set(rows) == {"baseline", "kd", "fsp", old_name}
    assert rows["fsp"]["n"] == rows[old_name]["n"] == 2
    assert rows[old_name]["top1"]["mean"] == pytest.approx(0.8405)
    assert rows["fsp"]["top1"]["mean"] == pytest.approx(0.8655)


def test_the_committed_page_regenerates_from_its_archive(tmp_path):
    """docs/results.md is what its own command makes from docs/results_runs (here written
    to tmp_path, so the command and the checkout the runs were made in are set aside)."""
    committed = open(os.path.join(ROOT, "docs", "results.md"), encoding="utf-8").read()
    first, rest = committed.split("\n", 3)[2], committed.split("\n", 3)[3]
    command = first.split("`")[1].split()
    assert command[:2] == ["python", "benchmarks/results_doc.py"], first
    argv = [a if os.path.isabs(a) or not a.startswith("docs/") else os.path.join(ROOT, a) for a in command[2:]
            if not a.startswith(("--output=", "--readme_output=", "--archive="))]
    page = tmp_path / "results.md"
    results_doc.main([*argv, f"--output={page}", f"--readme_output={tmp_path / 'readme.md'}"])
    made = page.read_text(encoding="utf-8").split("\n", 3)[3]
    # the archived runs record distill.py by the absolute path of the checkout they ran in
    made = re.sub(r"`python /\S+/recipes/", "`python recipes/", made)
    committed_rest = re.sub(r"`python /\S+/recipes/", "`python recipes/", rest)
    made = made.replace(ROOT + os.sep, "")
    assert made == committed_rest
    assert sorted(os.listdir(tmp_path / "results_plots")) == sorted(
        os.listdir(os.path.join(ROOT, "docs", "results_plots")))


def test_the_archived_method_defaults_are_this_commits():
    """docs/results_runs/method_defaults.json (what lets the page regenerate without
    TensorFlow) holds what the methods' code gives for every entry; after a default
    changes, rerun the page's command with --refresh_method_defaults."""
    path = os.path.join(ROOT, "docs", "results_runs", results_doc.MethodDefaults.FILE)
    stored = json.load(open(path))
    assert stored, path
    for key, settings in stored.items():
        method, method_args, run_length, train_limit = json.loads(key)
        run = {"method": method, "method_args": method_args, "run_length_defaults": run_length,
               "budget": {"train_limit": train_limit}}
        assert results_doc.computed_settings(run) == settings, key


def test_method_defaults_are_read_from_the_archive_and_computed_when_missing(tmp_path):
    run = {"method": "kd", "method_args": "", "budget": {"train_limit": 100}}
    path = tmp_path / results_doc.MethodDefaults.FILE
    key = results_doc.MethodDefaults.key(run)
    path.write_text(json.dumps({key: {"kd": {"weight": 0.123}}}))
    read = results_doc.MethodDefaults(str(path))
    assert read.settings(run) == {"kd": {"weight": 0.123}}  # the archive's, not the code's
    other = {**run, "method": "dkd"}
    assert read.settings(other) == results_doc.computed_settings(other)
    refreshed = results_doc.MethodDefaults(str(path), refresh=True)
    assert refreshed.settings(run)["kd"]["weight"] == 0.9
    refreshed.write(str(path))
    assert json.loads(path.read_text()) == {key: refreshed.settings(run)}


def write_sweep(root, method, seed, top1, settings, *, candidates=None, val_top1=0.9, seconds=120.0,
                scored_on="the run's whole validation split", folder_name=None, trial_train_limit=4000):
    """A recipes/tune.py output folder: tune.json and the retrained winner under final/
    (`scored_on=None`: a sweep of the earlier protocol, which did not record it)."""
    folder = root / (folder_name or "tuned") / (method if candidates is None else "auto") / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "tune.json").write_text(json.dumps({
        "method": method, "settings": settings, "val_top1": val_top1, "candidates": candidates or [method],
        "trials": 6, "trial_epochs": 2, "trial_train_limit": trial_train_limit, "sweep_seconds": seconds,
        "validation_split": 0.1, "final_data": "all", "states": {"complete": 5, "pruned": 1},
        "student_top1": top1, **({"trials_scored_on": scored_on} if scored_on else {}),
        **({"student_alone_val_top1": 0.8, "beats_student_alone": seed != 1} if scored_on else {})}))
    (folder / "trials.md").write_text("| trial |\n")
    write_run(root, method, seed, 0.5, epochs=2, folder=folder / "trials" / "trial_0000")  # left out
    write_run(root, method, seed, top1, folder=folder / "final")


def test_tuned_rows_pair_each_seeds_choice_with_its_baseline_and_cite_the_sweep(tmp_path):
    runs = tmp_path / "runs"
    write_pair(runs)
    tuned = [0.868, 0.860, 0.871]
    for seed, top1 in enumerate(tuned):
        write_sweep(runs, "crd", seed, top1, {"crd.weight": 0.2 + seed / 10, "student_loss_weight": 1.0},
                    seconds=60.0 * (seed + 1))
    write_sweep(runs, "kd+at", 0, 0.88, {"kd.weight": 0.9}, candidates=["kd", "kd+at"])
    # a sweep of the earlier protocol (trials scored on a split of their own examples) is its own row
    write_sweep(runs, "crd", 0, 0.5, {"crd.weight": 0.9}, scored_on=None, folder_name="tuned_earlier")
    page, archive = tmp_path / "docs" / "results.md", tmp_path / "archive"
    payload = results_doc.main([str(runs), f"--output={page}", f"--archive={archive}"])
    [section] = payload["sections"]
    row = _row(section, "crd (tuned)")
    gain = np.array(tuned) - np.array(BASELINE)
    assert row["n"] == 3 and row["gain_over_baseline"]["mean"] == pytest.approx(gain.mean(), abs=1e-12)
    assert row["gain_over_baseline"]["std"] == pytest.approx(gain.std(ddof=1), abs=1e-12)
    assert not row["earlier_default"] and row["note"] == "chosen on validation"
    assert "seed 1: crd: crd.weight=0.3, student_loss_weight=1" in row["settings"]
    assert _row(section, "auto (tuned)")["n"] == 1  # a sweep among candidates is the auto row
    earlier = _row(section, "crd (tuned; trials scored on their own split)")
    assert earlier["n"] == 1 and earlier["top1"]["mean"] == pytest.approx(0.5)
    # sweeps whose trials ran on other examples than most of the section's are their own row
    for seed, top1 in enumerate((0.90, 0.91)):
        write_sweep(runs, "crd", seed, top1, {"crd.weight": 0.1}, folder_name="tuned_whole", trial_train_limit=None)
    section = results_doc.main([str(runs), f"--output={page}"])["sections"][0]
    whole = _row(section, "crd (tuned; trials of 2 epochs on the whole training part)")
    assert whole["n"] == 2 and whole["top1"]["mean"] == pytest.approx(0.905)
    assert _row(section, "crd (tuned)")["n"] == 3 and _row(section, "crd (tuned)")["top1"]["values"] == tuned
    payload = results_doc.main([str(runs), f"--output={page}", f"--archive={archive}"])
    text = page.read_text()
    assert ("`crd (tuned)`: 6 trials of 2 epochs on 4,000 examples per seed (3 of 18 pruned, 1.0-3.0 min of "
            "sweep per seed), chosen on a 10% validation split") in text
    assert ("the choice beat the student alone trained at the trials' fidelity on the validation split in 2 of 3 "
            "seeds") in text
    # the archive keeps the sweep's report beside its final run, and the page cites the copies
    assert (archive / "runs" / "tuned" / "crd" / "seed2" / "tune.json").exists()
    assert (archive / "runs" / "tuned" / "crd" / "seed2" / "trials.md").exists()
    assert str(archive / "runs" / "tuned" / "crd" / "seed2" / "final" / "metrics.json") in text
    assert "trial_0000" not in text and not (archive / "runs" / "tuned" / "crd" / "seed2" / "trials").exists()


def _set_optimizer(metrics_path, optimizer, **settings):
    """Rewrite a fake run's run_config.json with another optimiser (and its settings)."""
    config = metrics_path.parent / "run_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "optimizer": optimizer, **settings}))


def test_a_dot_run_is_a_labelled_row_of_the_sgd_section_paired_with_the_sgd_baseline(tmp_path):
    runs = tmp_path / "runs"
    write_pair(runs)
    dot_top1 = {"kd": [0.878, 0.871, 0.880], "dkd": [0.884, 0.870, 0.869]}
    dot_baseline = [0.70, 0.71, 0.72]  # a student alone trained with DOT (older runs): never the section's
    for method, values in dot_top1.items():
        for seed, top1 in enumerate(values):
            path = write_run(runs, method, seed, top1, baseline=dot_baseline[seed] if seed == 2 else None,
                             folder=runs / f"{method}@dot" / f"seed{seed}")
            _set_optimizer(path, "dot", dot_delta=0.075 if method == "kd" else 0.05)
    # a DOT run alone for seed 3: its DOT-trained baseline is not taken, a recorded SGD one is
    path = write_run(runs, "kd", 3, 0.87, baseline=0.60, folder=runs / "kd@dot" / "seed3")
    _set_optimizer(path, "dot", dot_delta=None)
    adamw = write_run(runs, "kd", 0, 0.85, baseline=0.84, folder=runs / "kd_adamw" / "seed0")
    _set_optimizer(adamw, "adamw")
    payload = results_doc.main([str(runs), f"--output={tmp_path / 'results.md'}"])
    sgd, own = payload["sections"]  # adamw: a section of its own, as before
    assert own["other"]["optimizer"] == "adamw" and [r["method"] for r in own["rows"]] == ["baseline", "kd"]
    assert sgd["other"]["optimizer"] == "sgd" and sgd["other"]["dot_delta"] is None
    assert [r["method"] for r in sgd["rows"]] == [
        "baseline", "kd", "at", "dkd", "dkd (optimizer=dot, dot_delta=0.05)", "kd (optimizer=dot)"]
    base, kd = np.array(BASELINE), np.array(TOP1["kd"])
    assert _row(sgd, "baseline")["n"] == 3  # seed 3 (DOT only, its baseline DOT-trained) adds none
    for name, method in (("kd (optimizer=dot)", "kd"), ("dkd (optimizer=dot, dot_delta=0.05)", "dkd")):
        row, top1 = _row(sgd, name), np.array(dot_top1[method])
        assert row["seeds"] == ([0, 1, 2, 3] if method == "kd" else [0, 1, 2])
        gain_b, gain_kd = top1 - base, top1 - kd
        assert row["gain_over_baseline"]["n"] == 3 and row["gain_over_kd"]["n"] == 3
        assert row["gain_over_baseline"]["mean"] == pytest.approx(gain_b.mean(), abs=1e-12), name
        assert row["gain_over_baseline"]["std"] == pytest.approx(gain_b.std(ddof=1), abs=1e-12), name
        assert row["gain_over_kd"]["mean"] == pytest.approx(gain_kd.mean(), abs=1e-12), name
    text = (tmp_path / "results.md").read_text()
    assert "| kd (optimizer=dot) |" in text and "| dkd (optimizer=dot, dot_delta=0.05) |" in text
    # a DOT run that recorded its student alone trained with SGD gives the section that seed's baseline
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps({**metrics, "baseline_optimizer": "sgd"}))
    sgd = results_doc.main([str(runs), f"--output={tmp_path / 'results.md'}"])["sections"][0]
    assert _row(sgd, "baseline")["n"] == 4 and _row(sgd, "baseline")["top1"]["values"][3] == pytest.approx(0.60)
    assert _row(sgd, "kd (optimizer=dot)")["gain_over_baseline"]["values"][3] == pytest.approx(0.27)


def test_the_distillation_optimisers_rule_is_the_codes_and_the_page_needs_no_tensorflow():
    import dataclasses
    import subprocess
    import sys

    from kdkeras import training
    from kdkeras.distillation_optimizers import DISTILLATION_OPTIMIZERS

    for name, (base, own) in DISTILLATION_OPTIMIZERS.items():
        config = training.TrainConfig(optimizer=name, **{k: v / 2 for k, v in own.items()})
        assert config.one_loss() == dataclasses.replace(config, optimizer=base, **{k: None for k in own})
        built = training.make_optimizer(name, 0.1)
        assert {k: getattr(built, k.removeprefix(f"{name}_")) for k in own} == pytest.approx(own)
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import results_doc, methods_table; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).returncode == 0

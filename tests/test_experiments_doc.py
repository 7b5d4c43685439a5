"""The experiments' summaries over seeds (kdkeras.analysis.experiments) equal
NumPy's means, sample stds and seed-paired differences on fixture recipe JSON;
their verdicts follow the stated rule (the claimed direction by more than the
paired std); the results page carries them with a plot per section; a seed run
twice counts once (no training anywhere)."""

import importlib.util
import json
import os
import time

import numpy as np
import pytest

from kdkeras.analysis import experiments as ex
from tests.helpers import ROOT


def write(root, stem, seed, payload, setting=None, folder=None):
    folder = root / stem / (folder or f"seed{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    data = {"dataset": "fashion_mnist", "epochs": 5, "train_limit": 10000, "seed": seed,
            "command": f"python recipes/{stem}.py --seed={seed}", **(setting or {}), **payload}
    (folder / f"{stem}.json").write_text(json.dumps(data))
    return folder / f"{stem}.json"


def train_accuracy(row: str, top1: float) -> float:
    """The fixture's final training accuracy: Tf-KD self fits its data less."""
    return top1 - 0.01 if row == "Tf-KD self" else top1 + 0.02


def rows_payload(values: dict, seed: int) -> dict:
    return {"results": {row: {"top1": v[seed], "train_seconds": 10.0 + seed,
                              "history": {"accuracy": [0.5, train_accuracy(row, v[seed])]}}
                        for row, v in values.items()}}


def std(x):
    return float(np.std(np.asarray(x, dtype=float), ddof=1))


TF = {"baseline": [0.880, 0.884, 0.879],
      "LSR": [0.893, 0.893, 0.890],        # +1.1 clear, within its spread of KD
      "Tf-KD self": [0.881, 0.882, 0.883],  # +0.1 +- 0.4: not clear
      "Tf-KD reg": [0.886, 0.889, 0.885],  # clear over baseline but clearly behind KD
      "KD": [0.892, 0.894, 0.891]}


def test_teacher_free_matches_numpy_and_the_rule(tmp_path):
    for seed in range(3):
        write(tmp_path, "teacher_free", seed, rows_payload(TF, seed),
              {"student": "resnet8", "teacher": "t.keras"})
    [section] = ex.load_experiments([str(tmp_path)])
    assert section["seeds"] == [0, 1, 2]
    rows = {r["row"]: r for r in section["rows"]}
    for name, values in TF.items():
        assert rows[name]["top1"]["mean"] == pytest.approx(np.mean(values))
        assert rows[name]["top1"]["std"] == pytest.approx(std(values))
        if name != "baseline":
            gain = np.subtract(values, TF["baseline"])
            assert rows[name]["gain"]["mean"] == pytest.approx(gain.mean())
            assert rows[name]["gain"]["std"] == pytest.approx(std(gain))
            train_gap = [train_accuracy(name, v) - train_accuracy("baseline", b)
                         for v, b in zip(values, TF["baseline"])]
            assert rows[name]["train_gap"]["mean"] == pytest.approx(np.mean(train_gap))
        if name != "KD":
            vs_kd = np.subtract(values, TF["KD"])
            assert rows[name]["vs_kd"]["mean"] == pytest.approx(vs_kd.mean())
    held, missed = section["verdict"].split("It did not hold for:")
    assert "LSR" in held and "Tf-KD self" in missed and "Tf-KD reg" in missed
    assert "holds the model back" in missed.split("Tf-KD reg")[0]  # self: -3 pp of training accuracy
    assert "holds the model back" not in missed.split("Tf-KD reg")[1]
    assert section["held"] is False
    assert "| Tf-KD reg |" in ex.section_table(section)
    gap = [train_accuracy("baseline", b) - b for b in TF["baseline"]]  # +2 pp on every seed
    assert section["generalisation_gap"]["mean"] == pytest.approx(np.mean(gap))
    assert section["generalisation_gap"]["std"] == pytest.approx(std(gap), abs=1e-12)
    assert "+2.00" in section["verdict"].split("The student alone ends")[1]


def test_teacher_free_without_histories_states_no_gap(tmp_path):
    for seed in range(2):
        payload = rows_payload(TF, seed)
        for out in payload["results"].values():
            del out["history"]
        write(tmp_path, "teacher_free", seed, payload, {"student": "resnet8"})
    [section] = ex.load_experiments([str(tmp_path)])
    assert section["generalisation_gap"] is None and "The student alone ends" not in section["verdict"]


def test_teacher_free_runs_with_other_weights_get_their_own_section(tmp_path):
    """Teacher-free JSON keeps its weights only in each row's settings: a run with
    another Tf-KD self alpha must not be averaged with the default's seeds."""
    for seed in range(2):
        for folder, alpha in (("a95", 0.95), ("a50", 0.5)):
            payload = rows_payload(TF, seed)
            for row, out in payload["results"].items():
                out["settings"] = f"T=20.0, alpha={alpha}" if row == "Tf-KD self" else "epsilon=0.1"
            write(tmp_path / folder, "teacher_free", seed, payload, {"student": "resnet8", "teacher": "t.keras"})
    sections = ex.load_experiments([str(tmp_path)])
    assert sorted(len(s["seeds"]) for s in sections) == [2, 2]
    assert sorted("alpha=0.5" in ex.setting_text(s) for s in sections) == [False, True]


def test_reversed_kd_verdict_and_one_section_per_setting(tmp_path):
    clear_gain = {"weak alone": [0.86, 0.87, 0.865], "strong alone": [0.88, 0.885, 0.882],
                  "Re-KD": [0.889, 0.892, 0.891], "normal KD": [0.87, 0.872, 0.871]}
    noisy = dict(clear_gain, **{"Re-KD": [0.886, 0.879, 0.884]})
    for seed in range(3):
        write(tmp_path / "a", "reversed_kd", seed, rows_payload(clear_gain, seed), {"weak": "resnet8",
                                                                                  "strong": "resnet20"})
        write(tmp_path / "b", "reversed_kd", seed, rows_payload(noisy, seed),
              {"weak": "resnet8", "strong": "resnet20", "train_limit": 20000})
    sections = ex.load_experiments([str(tmp_path)])
    assert len(sections) == 2
    by_limit = {s["setting"]["train_limit"]: s for s in sections}
    good, bad = by_limit[10000], by_limit[20000]
    rekd = {r["row"]: r for r in good["rows"]}["Re-KD"]
    gain = np.subtract(clear_gain["Re-KD"], clear_gain["strong alone"])
    assert rekd["reference"] == "strong alone"
    assert rekd["gain"]["mean"] == pytest.approx(gain.mean()) and rekd["gain"]["std"] == pytest.approx(std(gain))
    assert good["held"] is True and "held" in good["verdict"]
    noisy_gain = np.subtract(noisy["Re-KD"], noisy["strong alone"])
    assert abs(noisy_gain.mean()) < std(noisy_gain)  # the fixture is what the test says
    assert bad["held"] is False and "did not hold" in bad["verdict"]


def test_defective_kd_judges_teachers_below_the_student_alone(tmp_path):
    baseline = [0.87, 0.872, 0.868]
    levels = {0: ([0.10, 0.11, 0.10], [0.866, 0.870, 0.867]),       # below baseline, no clear gain
              40: ([0.75, 0.76, 0.74], [0.878, 0.881, 0.879]),      # below baseline, clear gain
              "full": ([0.92, 0.92, 0.92], [0.89, 0.891, 0.888])}   # above baseline: not judged
    for seed in range(3):
        pts = [{"level": lvl, "teacher": f"{lvl} steps", "teacher_top1": t[seed], "student_top1": s[seed],
                "gain": s[seed] - baseline[seed]} for lvl, (t, s) in levels.items()]
        write(tmp_path, "defective_kd", seed, {"points": pts, "baseline_top1": baseline[seed]},
              {"teacher": "resnet20", "student": "resnet8", "defect": "steps", "kd_alpha": 0.9})
    [section] = ex.load_experiments([str(tmp_path)])
    rows = {r["level"]: r for r in section["rows"]}
    for lvl, (t, s) in levels.items():
        assert rows[lvl]["teacher_top1"]["mean"] == pytest.approx(np.mean(t))
        assert rows[lvl]["gain"]["mean"] == pytest.approx(np.mean(np.subtract(s, baseline)))
        assert rows[lvl]["gain"]["std"] == pytest.approx(std(np.subtract(s, baseline)))
    held, missed = section["verdict"].split("It did not hold for:")
    assert "40 (teacher" in held and "0 (teacher" in missed and "full" not in section["verdict"]
    assert "1 of 2 such teachers clearly hurt" in section["verdict"]  # level 0: -0.23 +- 0.15 pp
    assert "none (student alone)" in ex.section_table(section)


@pytest.mark.parametrize("alpha, pull", [(0.9, "more than the true ones"), (0.5, "as hard as the true ones"),
                                          (0.3, "even a minority weight")])
def test_defective_kd_says_when_weak_teachers_hurt(tmp_path, alpha, pull):
    for seed in range(3):
        pts = [{"level": 0, "teacher": "untrained", "teacher_top1": 0.1, "student_top1": 0.1 + 0.001 * seed,
                "gain": 0.1 + 0.001 * seed - 0.87}]
        write(tmp_path, "defective_kd", seed, {"points": pts, "baseline_top1": 0.87},
              {"teacher": "resnet20", "student": "resnet8", "defect": "steps", "kd_alpha": alpha})
    [section] = ex.load_experiments([str(tmp_path)])
    assert section["held"] is False
    assert "1 of 1 such teachers clearly hurt" in section["verdict"]
    assert f"weighted {alpha:g} and cross-entropy {1 - alpha:.2g}, " in section["verdict"] and pull in \
        section["verdict"]


def test_bias_variance_differences_from_ce(tmp_path):
    terms = {"ce": {"bias": [0.30, 0.31, 0.29], "variance": [0.10, 0.11, 0.12]},
             "kd": {"bias": [0.33, 0.34, 0.33], "variance": [0.05, 0.06, 0.05]},
             "wsl": {"bias": [0.32, 0.35, 0.31], "variance": [0.05, 0.05, 0.06]}}
    for seed in range(3):
        results = {m: {"bias": t["bias"][seed], "variance": t["variance"][seed],
                       "expected_ce_measured": t["bias"][seed] + t["variance"][seed], "top1": 0.88}
                   for m, t in terms.items()}
        write(tmp_path, "bias_variance", seed, {"results": results},
              {"student": "resnet8", "teacher": "resnet20", "methods": ["ce", "kd", "wsl"], "num_models": 5,
               "resample": "bootstrap"})
    [section] = ex.load_experiments([str(tmp_path)])
    kd = {r["row"]: r for r in section["rows"]}["kd"]
    d_var = np.subtract(terms["kd"]["variance"], terms["ce"]["variance"])
    assert kd["variance_vs_ce"]["mean"] == pytest.approx(d_var.mean())
    assert kd["variance_vs_ce"]["std"] == pytest.approx(std(d_var))
    held, missed = section["verdict"].split("It did not hold for:")
    assert "KD's variance is below CE's" in held and "KD's bias is above CE's" in held
    assert "WSL's bias is below KD's" in missed  # -0.007 +- 0.023: not clear


def test_clear_needs_a_spread():
    assert ex.clear(0.01, 0.005) and not ex.clear(0.01, 0.02) and not ex.clear(-0.01, 0.005)
    assert ex.clear(-0.01, 0.005, sign=-1) and not ex.clear(0.01, None)


def _results_doc():
    spec = importlib.util.spec_from_file_location("_benchmark_results_doc_ex",
                                                  os.path.join(ROOT, "benchmarks", "results_doc.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_page_carries_experiments_and_archives_them(tmp_path):
    from tests.test_results_doc import write_run

    runs = tmp_path / "table"
    for seed in range(3):
        write_run(runs, "kd", seed, 0.89 + 0.001 * seed, baseline=0.88 + 0.001 * seed)
    experiments = tmp_path / "experiments"
    stale = write(experiments, "teacher_free", 0, rows_payload({k: [0.5] * 3 for k in TF}, 0),
                  {"student": "resnet8", "teacher": "t.keras"}, folder="seed0_old")
    old = time.time() - 100
    os.utime(stale, (old, old))
    for seed in range(3):  # seed 0 again, newer: it replaces the stale one
        write(experiments, "teacher_free", seed, rows_payload(TF, seed), {"student": "resnet8", "teacher": "t.keras"})
    page = tmp_path / "docs" / "results.md"
    payload = _results_doc().main([str(runs), "--experiments", str(experiments), "--output", str(page),
                                   "--archive", str(tmp_path / "docs" / "results_runs")])
    [section] = payload["experiments"]
    lsr = {r["row"]: r for r in section["rows"]}["LSR"]
    assert lsr["top1"]["mean"] == pytest.approx(np.mean(TF["LSR"]))
    text = page.read_text()
    assert "## Experiments of the papers" in text and "**Verdict.**" in text
    assert (tmp_path / "docs" / "results_plots" / "teacher_free_1.png").stat().st_size > 1000
    archived = list((tmp_path / "docs" / "results_runs").rglob("teacher_free.json"))
    assert len(archived) == 4 and all("results_runs" in p for p in section["paths"])


def test_results_page_refuses_an_empty_experiment_root(tmp_path):
    from tests.test_results_doc import write_run

    write_run(tmp_path / "table", "kd", 0, 0.89, baseline=0.88)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="hold no experiment"):
        _results_doc().main([str(tmp_path / "table"), "--experiments", str(tmp_path / "empty"),
                             "--output", str(tmp_path / "r.md")])


def test_one_seed_judges_nothing(tmp_path):
    results = {m: {"bias": b, "variance": v, "expected_ce_measured": b + v, "top1": 0.88, "regularization_share": 0.1}
               for m, b, v in (("ce", 0.36, 0.03), ("kd", 0.31, 0.02))}
    write(tmp_path, "bias_variance", 0, {"results": results}, {"student": "resnet8", "methods": ["ce", "kd"]})
    [section] = ex.load_experiments([str(tmp_path)])
    assert section["held"] is False and "one seed, no spread" in section["verdict"]
    assert "It held" not in section["verdict"]
    assert {r["row"]: r for r in section["rows"]}["kd"]["regularization_share"]["mean"] == pytest.approx(0.1)


def test_one_formatter_for_every_table():
    from kdkeras.analysis.stats import format_mean_std

    assert format_mean_std(0.89283, 0.0016) == "89.28 ± 0.16"
    assert format_mean_std(0.01497, 0.00314, signed=True) == "+1.50 ± 0.31"
    assert format_mean_std(-0.00001, None, signed=True) == "+0.00"  # never "-0.00"
    assert format_mean_std(None, 0.1) == "–" and ex.points(None, None) == "-"
    assert ex.percent(0.5, None) == "50.00"


def test_a_missing_experiment_root_is_named_as_given(tmp_path):
    from tests.test_results_doc import write_run

    write_run(tmp_path / "table", "kd", 0, 0.89, baseline=0.88)
    missing = str(tmp_path / "no_such_folder")
    with pytest.raises(ValueError, match="no_such_folder' is not a folder"):
        _results_doc().main([str(tmp_path / "table"), "--experiments", missing, "--output", str(tmp_path / "r.md"),
                             "--archive", str(tmp_path / "archive")])
    assert not (tmp_path / "archive").exists()  # refused before anything was copied


def test_readme_block_leaves_probes_out_and_tells_experiments_apart(tmp_path):
    """The README's short version: rows and sections with one seed stay on the page
    only; two sections of one recipe are named by the settings they differ in."""
    from tests.test_results_doc import write_run

    runs = tmp_path / "table"
    for seed in range(2):
        write_run(runs, "kd", seed, 0.89 + 0.001 * seed, baseline=0.88 + 0.001 * seed)
        write_run(runs, "at", seed, 0.885 + 0.001 * seed)
    write_run(runs, "crd", 0, 0.87)  # a one-seed probe in a two-seed section
    write_run(tmp_path / "long", "kd", 0, 0.90, baseline=0.905, epochs=15)  # a one-seed section
    experiments = tmp_path / "experiments"
    for folder, alpha in (("a09", 0.9), ("a05", 0.5)):
        for seed in range(2):
            write(experiments / folder, "reversed_kd", seed,
                  rows_payload({"weak alone": [0.86, 0.87], "strong alone": [0.88, 0.885],
                                "Re-KD": [0.87, 0.875], "normal KD": [0.87, 0.872]}, seed),
                  {"weak": "resnet8", "strong": "resnet20", "kd_alpha": alpha})
    readme = tmp_path / "block.md"
    payload = _results_doc().main([str(runs), str(tmp_path / "long"), "--experiments", str(experiments),
                                   "--output", str(tmp_path / "r.md"), f"--readme_output={readme}"])
    block = readme.read_text()
    assert len(payload["sections"]) == 2 and "| **crd** ⚠ | 1 |" in (tmp_path / "r.md").read_text()
    assert "| at | 2 |" in block and "| crd" not in block and "15 epochs" not in block
    assert "- Reversed KD, kd_alpha=0.9 (2 seeds)" in block and "- Reversed KD, kd_alpha=0.5 (2 seeds)" in block

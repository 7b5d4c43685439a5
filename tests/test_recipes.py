"""The foundation recipes end to end on tiny Fashion-MNIST subsets (short form)."""

import json

import pytest

from tests.helpers import needs_fashion_mnist, run_script
from tests.helpers import recipe_output as run

pytestmark = [pytest.mark.e2e, needs_fashion_mnist]
TINY = ["--dataset=fashion_mnist", "--train_limit=192", "--test_limit=128", "--batch_size=64", "--epochs=1"]


def test_train_teacher_then_distill_with_baseline(tmp_path):
    tdir, ddir = tmp_path / "teacher", tmp_path / "kd"
    run("train_teacher.py", "--model=resnet8", f"--output_dir={tdir}", *TINY)
    teacher_metrics = json.loads((tdir / "metrics.json").read_text())
    assert 0.0 <= teacher_metrics["top1"] <= 1.0
    assert (tdir / "model.keras").exists()
    out = run(
        "distill.py", f"--teacher={tdir / 'model.keras'}", "--student=resnet8",
        "--method=kd", "--method_args=kd.temperature=2", "--baseline", "--seed=3",
        f"--output_dir={ddir}", *TINY,
    )
    m = json.loads((ddir / "metrics.json").read_text())
    for key in ("student_top1", "teacher_top1", "baseline_top1", "train_seconds"):
        assert 0.0 <= m[key] and (key == "train_seconds" or m[key] <= 1.0), key
    assert m["method"] == "kd" and m["epochs"] == 1
    assert abs(m["teacher_top1"] - teacher_metrics["top1"]) < 1e-6
    assert "kd" in m["history"] and "agreement" in m["history"]
    assert (ddir / "student.keras").exists() and "RESULT" in out


def test_distill_trains_a_zoo_teacher_and_rejects_bad_method(tmp_path):
    run("distill.py", "--teacher=resnet8", "--teacher_epochs=1", "--student=resnet8",
        f"--output_dir={tmp_path / 'a'}", *TINY)
    assert (tmp_path / "a" / "teacher.keras").exists()
    proc = run_script("recipes/distill.py", "--teacher=none", "--method=kdd",
                      f"--output_dir={tmp_path / 'b'}", *TINY, timeout=300, check=False)
    assert proc.returncode != 0 and "'kdd'" in proc.stderr


@pytest.mark.parametrize("method", ["ft+kd", "crd"])
def test_distill_recipe_runs_staged_and_index_methods(tmp_path, method):
    tdir = tmp_path / "teacher"
    run("train_teacher.py", "--model=resnet8", f"--output_dir={tdir}", *TINY)
    run("distill.py", f"--teacher={tdir / 'model.keras'}", "--student=resnet8", f"--method={method}",
        "--init_epochs=1", f"--output_dir={tmp_path / 'd'}", *TINY)
    m = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert m["method"] == method and 0.0 <= m["student_top1"] <= 1.0
    if method.startswith("ft"):
        assert "ft_paraphraser" in m["history"]["stages"]
        import math

        # the paraphraser learns its reconstruction unweighted: finite, no blow-up
        assert all(math.isfinite(v) for v in m["history"]["stages"]["ft_paraphraser"]["ft"])
        assert all(math.isfinite(v) for v in m["history"]["loss"])
        assert (tmp_path / "d" / "stages" / "00_ft_paraphraser" / "done.json").exists()
    else:
        assert "crd" in m["history"]

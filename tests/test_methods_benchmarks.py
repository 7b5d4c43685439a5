"""The per-method speed benchmark and the results-table script run end to end
on tiny settings and write their JSON keys (no timing or accuracy asserted)."""

import json

import pytest

from tests.helpers import run_script


def _run(script, *args):
    return run_script(f"benchmarks/{script}", *args)


@pytest.mark.e2e
def test_methods_speed_writes_ratios(tmp_path):
    out = tmp_path / "methods_speed.json"
    proc = _run(
        "methods_speed.py", "--teacher=resnet8", "--student=resnet8", "--feature_teacher=resnet8",
        "--feature_student=resnet8", "--image_size=8", "--batch_size=8", "--methods=at,fitnet",
        "--rounds=1", "--steps=1", "--warmup=1", f"--json={out}",
    )
    data = json.loads(out.read_text())
    for key in ("at_over_kd", "fitnet_over_kd", "fitnet_over_keras_feature",
                "keras_feature_over_keras_logits", "fitnet_over_floor", "floor_over_keras_feature"):
        assert data[key] > 0, key
    assert data["skipped"] == {}
    med = data["median_step_seconds"]
    assert set(med) == {"kd", "at", "fitnet", "kdkeras_fitnet", "keras_feature", "keras_logits",
                        "student_alone", "teacher_to_tap"}
    # one round: the floor ratios are plain quotients of the printed times
    floor = med["student_alone"] + med["teacher_to_tap"]
    assert data["fitnet_over_floor"] == pytest.approx(med["kdkeras_fitnet"] / floor)
    assert data["floor_over_keras_feature"] == pytest.approx(floor / med["keras_feature"])
    assert data["config"]["feature_taps"]["teacher_layer"] == data["config"]["feature_taps"]["student_layer"]
    assert "fitnet_over_keras_feature" in proc.stdout


@pytest.mark.e2e
def test_methods_table_writes_markdown_and_json(tmp_path):
    import kdkeras

    teacher = tmp_path / "teacher.keras"
    kdkeras.models.get("resnet8", (8, 8, 1), 10).save(teacher)
    out = tmp_path / "table" / "table.md"
    args = [f"--teacher={teacher}", "--student=resnet8", "--dataset=fashion_mnist", "--methods=at",
            "--epochs=1", "--train_limit=32", "--test_limit=32", "--batch_size=16",
            f"--output={out}"]
    _run("methods_table.py", *args)
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["method"] for r in data["rows"]] == ["baseline", "kd", "at"]
    for key in ("command", "baseline_top1", "kd_top1", "teacher_top1", "config"):
        assert key in data, key
    for row in data["rows"]:
        for key in ("student_top1", "gain_over_baseline", "gain_over_kd", "train_seconds"):
            assert row[key] is not None, (row["method"], key)
    table = out.read_text()
    assert "methods_table.py" in table and "| at |" in table and "| baseline |" in table
    assert (tmp_path / "table" / "at" / "metrics.json").exists()

    # --resume reads the finished runs back instead of training again.
    proc = _run("methods_table.py", *args, "--resume")
    assert "[at] resumed" in proc.stdout and "[kd] resumed" in proc.stdout

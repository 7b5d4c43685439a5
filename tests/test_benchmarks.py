"""The benchmark scripts run and write their ratio keys (no timing asserted)."""

import json

import pytest

from tests.helpers import run_script


@pytest.mark.e2e
def test_speed_benchmark_writes_ratios(tmp_path):
    out = tmp_path / "speed.json"
    proc = run_script(
        "benchmarks/speed.py", "--teacher=resnet8", "--student=resnet8", "--image_size=8",
        "--examples=64", "--batch_size=32", "--repeats=1", f"--json={out}",
    )
    data = json.loads(out.read_text())
    for key in ("kd_over_student", "teacher_over_student", "kd_over_keras_distillation"):
        assert data[key] > 0, key
    assert set(data["median_seconds"]) == {"student", "teacher_inference", "kdkeras_kd", "keras_kd"}
    assert "kd_over_keras_distillation" in proc.stdout

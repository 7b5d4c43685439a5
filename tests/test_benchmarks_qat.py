"""The QAT speed benchmark's JSON holds what its own timings imply (no speed asserted)."""

import json
import re

import numpy as np
import pytest

from tests.test_benchmarks import benchmark


def test_qat_speed_ratio_is_the_quotient_of_its_medians(tmp_path, capsys):
    out = tmp_path / "qat.json"
    repeats = 2
    with benchmark("qat_speed.py", "--student=resnet8", "--image_size=8", "--channels=1",
                   "--examples=64", "--batch_size=32", f"--repeats={repeats}", f"--json={out}") as bench:
        bench.main([])
    data = json.loads(out.read_text())
    assert data["config"]["steps"] == 2 and data["config"]["repeats"] == repeats
    for name in ("float_step", "qat_step"):
        epochs = data["epoch_seconds"][name]
        assert len(epochs) == repeats
        np.testing.assert_allclose(data["seconds_per_step"][name], np.array(epochs) / 2, rtol=1e-12)
        assert data["median_seconds_per_step"][name] == pytest.approx(
            np.median(data["seconds_per_step"][name]), rel=1e-12)
    med = data["median_seconds_per_step"]
    assert data["qat_step_over_float_step"] == pytest.approx(med["qat_step"] / med["float_step"], rel=1e-12)
    printed = re.search(r"^qat_step_over_float_step\s+([0-9.]+)$", capsys.readouterr().out, re.M)
    assert printed and float(printed.group(1)) == pytest.approx(data["qat_step_over_float_step"], abs=5e-4)

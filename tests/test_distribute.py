"""Under MirroredStrategy (2 logical CPUs) one step equals one device's step."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def run_check(spec):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.dist_step_check", json.dumps(spec)],
        capture_output=True, text=True, timeout=300, cwd=os.path.dirname(HERE),
    )
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(line[0][len("RESULT "):])


@pytest.mark.parametrize("spec", [[["kd", {"temperature": 4.0, "weight": 0.7}]]])
def test_mirrored_step_matches_single_device(spec):
    out = run_check(spec)
    assert out["replicas"] == 2
    assert out["max_weight_change"] > 1e-3  # the step did move the weights
    assert abs(out["single_loss"] - out["mirrored_loss"]) < 1e-5 * max(1.0, abs(out["single_loss"]))
    assert out["max_weight_diff"] < 1e-5
    for name, (a, b) in out["terms"].items():
        assert abs(a - b) < 1e-5 * max(1.0, abs(a)), name

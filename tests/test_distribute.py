"""Under MirroredStrategy (2 logical CPUs) one step equals one device's step."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


KD = ["kd", {"temperature": 4.0, "weight": 0.7}]
# dist: its per-class correlation, and uskd: its soft target's batch mean, are statistics over
# the batch, taken over the global batch gathered from the replicas
STEP_SPECS = {"kd": [KD], "dist": [["dist", {"weight": 2.0}]], "uskd": [["uskd", {"alpha": 1.0}]]}
JOBS = [[name, spec, ""] for name, spec in STEP_SPECS.items()] + [
    ["cache", [KD, ["at", {"weight": 10.0}]], "cache"], ["bn_sync", None, "bn_sync"]]


@pytest.fixture(scope="module")
def results():
    """Every check of this file run in one subprocess (one TensorFlow start-up for all of them:
    logical devices must be set before TF starts, so not in pytest's own process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.dist_step_check", "--jobs", json.dumps(JOBS)],
        capture_output=True, text=True, timeout=600, cwd=os.path.dirname(HERE),
    )
    found = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            name, payload = line[len("RESULT "):].split(" ", 1)
            found[name] = json.loads(payload)
    return found, proc.stdout[-2000:] + proc.stderr[-4000:]


def run_check(spec, *extra) -> dict:
    """One check in a subprocess of its own (`tests.dist_step_check SPEC [MODE]`), for the
    other files' single mirrored-step checks (DOT's, SSKD's)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.dist_step_check", json.dumps(spec), *extra],
        capture_output=True, text=True, timeout=300, cwd=os.path.dirname(HERE),
    )
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(line[0][len("RESULT "):])


def result_of(results, name):
    found, tail = results
    assert name in found, tail
    assert "error" not in found[name], found[name]["error"]
    return found[name]


@pytest.mark.parametrize("name", list(STEP_SPECS))
def test_mirrored_step_matches_single_device(results, name):
    out = result_of(results, name)
    assert out["replicas"] == 2
    assert out["max_weight_change"] > 1e-3  # the step did move the weights
    assert abs(out["single_loss"] - out["mirrored_loss"]) < 1e-5 * max(1.0, abs(out["single_loss"]))
    assert out["max_weight_diff"] < 1e-5
    for name, (a, b) in out["terms"].items():
        assert abs(a - b) < 1e-5 * max(1.0, abs(a)), name


def test_mirrored_step_from_a_teacher_cache_matches_one_device_and_the_online_step(results):
    # every replica reads the cached outputs of its own examples (no teacher model)
    out = result_of(results, "cache")
    assert out["replicas"] == 2 and out["max_weight_change"] > 1e-3
    assert abs(out["single_loss"] - out["mirrored_loss"]) < 1e-5 * max(1.0, abs(out["single_loss"]))
    assert abs(out["online_loss"] - out["single_loss"]) < 1e-5 * max(1.0, abs(out["online_loss"]))
    tolerance = 1e-5 * max(1.0, out["max_weight_change"])
    assert out["max_weight_diff"] < tolerance and out["max_weight_diff_online"] < tolerance
    for name, (a, b) in out["terms"].items():
        assert abs(a - b) < 1e-5 * max(1.0, abs(a)), name


def test_batchnorm_needs_the_global_batch_statistics_for_replicas_to_equal_one_device(results):
    """FitNet's regressor and the student hold BatchNorms: per replica (Keras'
    default) each normalises its half batch and the run drifts from one device's;
    synchronised (what compile_and_fit does under several replicas) it does not."""
    result = result_of(results, "bn_sync")
    assert result["replicas"] == 2
    per_replica, synced = result["per_replica"], result["sync"]
    scale = synced["max_weight"]
    assert per_replica["max_weight_diff"] > 1e-3 * scale  # the documented cause: a visible drift
    assert synced["max_weight_diff"] < 1e-5 * scale
    for key in ("loss", "fitnet"):
        a, b = synced[key]
        assert abs(a - b) < 1e-5 * abs(a), (key, synced[key])

"""The speed benchmark's JSON holds what its timings imply (no speed asserted).

The benchmark runs in this process (TensorFlow is already imported, which
saves a subprocess start): `benchmark()` imports a script afresh with its absl
flags parsed and removes those flags on exit, since every benchmark script
defines flags of the same names (`--teacher`, `--json`, ...) on absl's global
`FLAGS`, and defining one twice raises `DuplicateFlagError`.
"""

import collections
import contextlib
import importlib.util
import json
import os
import re

import numpy as np
import pytest
from absl import flags

from tests.helpers import ROOT


@contextlib.contextmanager
def benchmark(script, *args):
    """`benchmarks/<script>` as a fresh module whose absl flags are parsed from
    `args`; on exit its flags are deleted from `flags.FLAGS` again."""
    flag_values = flags.FLAGS
    before = set(flag_values)
    name = "_benchmark_" + os.path.splitext(script)[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", script))
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        flag_values([script, *args])
        yield module
    finally:
        for flag in set(flag_values) - before:
            if flag in flag_values:  # a short name goes with its long one
                delattr(flag_values, flag)
        flag_values.unparse_flags()


def count_calls(variants, counts):
    """`variants` ({name: callable}) with each call counted in `counts[name]`."""

    def counted(name, fn):
        def call():
            counts[name] += 1
            return fn()

        return call

    return {name: counted(name, fn) for name, fn in variants.items()}


def test_benchmark_flags_do_not_leak():
    """Scripts defining the same flag names load one after another (and again),
    and each one's flags are gone after its block."""
    for script in ("speed.py", "methods_speed.py", "methods_table.py", "speed.py"):
        with benchmark(script, "--teacher=resnet8") as module:
            assert module.FLAGS.teacher == "resnet8"
        assert "teacher" not in flags.FLAGS and "json" not in flags.FLAGS, script


@pytest.mark.e2e
def test_speed_benchmark_json_matches_its_timings(tmp_path, monkeypatch, capsys):
    out = tmp_path / "speed.json"
    repeats = 2  # the median of two is their mean: neither the min nor the max
    counts = collections.Counter()
    with benchmark(
        "speed.py", "--teacher=resnet8", "--student=resnet8", "--image_size=8", "--channels=1",
        "--examples=48", "--batch_size=32", f"--repeats={repeats}", f"--json={out}", "--large_cache_mb=2",
    ) as speed:
        make_variants = speed.make_variants
        monkeypatch.setattr(speed, "make_variants", lambda ds: count_calls(make_variants(ds), counts))
        speed.main([])
    data = json.loads(out.read_text())
    variants = {"student", "teacher_inference", "kdkeras_kd", "keras_kd", "kdkeras_kd_cached", "cache_build"}
    ratios = {"kd_over_student": ("kdkeras_kd", "student"),
              "teacher_over_student": ("teacher_inference", "student"),
              "kd_over_keras_distillation": ("kdkeras_kd", "keras_kd"),
              "kd_cached_over_student": ("kdkeras_kd_cached", "student"),
              "kd_cached_over_keras_distillation": ("kdkeras_kd_cached", "keras_kd"),
              "cache_build_over_teacher_epoch": ("cache_build", "teacher_inference")}
    memory = {"cached_epoch_peak_rss_mb", "cached_epoch_rss_growth_mb", "cache_mb",
              "large_cache_mb", "large_cache_read_rss_growth_mb", "large_cache_batch_mb"}
    assert set(data) == set(ratios) | memory | {"seconds", "median_seconds", "config"}
    # the cache holds 48 examples' logits (10 float32 each), one view
    assert data["cache_mb"] == pytest.approx(48 * 10 * 4 / 2**20)
    # the large cache: 8x8x64 float32 feature maps plus 10 logits per example, whole batches of 32
    row = (8 * 8 * 64 + 10) * 4
    assert data["large_cache_mb"] == pytest.approx(2 * 2**20 // (8 * 8 * 64 * 4) // 32 * 32 * row / 2**20)
    assert data["large_cache_batch_mb"] == pytest.approx(32 * row / 2**20)
    assert data["cached_epoch_rss_growth_mb"] <= data["cached_epoch_peak_rss_mb"]
    # one untimed warm-up epoch, then `repeats` timed epochs of every variant
    assert counts == {name: 1 + repeats for name in variants}
    assert set(data["seconds"]) == set(data["median_seconds"]) == variants
    for name, times in data["seconds"].items():
        assert len(times) == repeats, name
        assert data["median_seconds"][name] == pytest.approx(np.median(times), rel=1e-12), name
    med = data["median_seconds"]
    for key, (num, den) in ratios.items():
        assert data[key] == pytest.approx(med[num] / med[den], rel=1e-12), key
    assert data["config"]["examples"] == 48 and data["config"]["repeats"] == repeats
    assert data["config"]["batch_size"] == 32
    printed = capsys.readouterr().out
    value = re.search(r"^kd_over_keras_distillation\s+([0-9.]+)$", printed, re.M)
    assert value is not None, printed
    assert float(value.group(1)) == pytest.approx(data["kd_over_keras_distillation"], abs=5e-4)

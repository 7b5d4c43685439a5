"""The experiment recipes (teacher-free, Re-KD, De-KD, bias-variance) end to end,
in process, on tiny Fashion-MNIST: table, plot and JSON agree with each other. Each
run holds out a validation split, and also carries test_validation_split's checks
that the recipe records it and its fits watched it (one run per recipe for both)."""

import json

import numpy as np
import pytest

from tests.helpers import TINY, needs_fashion_mnist, run_recipe
from tests.test_validation_split import VALIDATION, check_the_split_is_recorded

pytestmark = [pytest.mark.e2e, needs_fashion_mnist]


def _outputs(out, name):
    for ext in ("md", "png", "json"):
        assert (out / f"{name}.{ext}").stat().st_size > 0, ext
    markdown = (out / f"{name}.md").read_text()
    assert f"({name}.png)" in markdown
    return json.loads((out / f"{name}.json").read_text()), markdown


def _row(markdown, first_cell):
    """The cells of the Markdown table row that starts with `first_cell`."""
    line = next(l for l in markdown.splitlines() if l.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_teacher_free_recipe(tiny_teacher, tmp_path):
    results = run_recipe("teacher_free", "--student=resnet8", f"--teacher={tiny_teacher.path}",
                         f"--output_dir={tmp_path}", *VALIDATION, *TINY)
    check_the_split_is_recorded("teacher_free", tmp_path)
    payload, markdown = _outputs(tmp_path, "teacher_free")
    assert list(payload["results"]) == ["baseline", "LSR", "Tf-KD self", "Tf-KD reg", "KD"]
    assert payload["teacher_top1"] == pytest.approx(tiny_teacher.top1)
    baseline = payload["results"]["baseline"]["top1"]
    for run, row in payload["results"].items():
        assert row["top1"] == results[run]["top1"]
        cells = _row(markdown, run)
        assert cells[1] == f"{100 * row['top1']:.2f}"
        assert cells[2] == f"{100 * (row['top1'] - baseline):+.2f}"
    # each row trained its own copy of the student from the same initial weights
    assert payload["results"]["LSR"]["history"]["lsr"] and "kd" in payload["results"]["KD"]["history"]


def test_reversed_kd_recipe(tmp_path):
    run_recipe("reversed_kd", "--weak=resnet8", "--weak_args=width_multiplier=0.5", "--strong=resnet8",
               "--nonormal_kd", f"--output_dir={tmp_path}", *VALIDATION, *TINY)
    check_the_split_is_recorded("reversed_kd", tmp_path)
    payload, markdown = _outputs(tmp_path, "reversed_kd")
    assert list(payload["results"]) == ["weak alone", "strong alone", "Re-KD"]
    assert payload["rekd_gain"] == pytest.approx(payload["rekd_top1"] - payload["strong_top1"])
    assert _row(markdown, "Re-KD")[-1] == f"{100 * payload['rekd_gain']:+.2f}"
    assert _row(markdown, "Re-KD")[2] == f"resnet8 ({100 * payload['weak_top1']:.2f}%)"


def test_defective_kd_recipe(tmp_path):
    points = run_recipe("defective_kd", "--teacher=resnet8", "--student=resnet8", "--defect=steps",
                        "--levels=0,1", "--nofull_teacher", f"--output_dir={tmp_path}", *VALIDATION, *TINY)
    check_the_split_is_recorded("defective_kd", tmp_path)
    payload, markdown = _outputs(tmp_path, "defective_kd")
    assert [p["level"] for p in payload["points"]] == [0, 1] == [p["level"] for p in points]
    assert [p["teacher"] for p in payload["points"]] == ["untrained", "1 steps"]
    for p in payload["points"]:
        assert p["gain"] == pytest.approx(p["student_top1"] - payload["baseline_top1"])
        assert _row(markdown, str(p["level"]))[3] == f"{100 * p['student_top1']:.2f}"
    assert "student alone" in markdown


def test_defective_kd_rejects_bad_levels(tmp_path):
    with pytest.raises(ValueError, match=r"noise levels must lie in \[0, 1\], got \[1.5\]"):
        run_recipe("defective_kd", "--defect=noise", "--levels=1.5", f"--output_dir={tmp_path}", *TINY)
    with pytest.raises(ValueError, match="'x'"):
        run_recipe("defective_kd", "--defect=steps", "--levels=1,x", f"--output_dir={tmp_path}", *TINY)


def test_bias_variance_recipe(tiny_teacher, tmp_path):
    summaries = run_recipe("bias_variance", f"--teacher={tiny_teacher.path}", "--student=resnet8",
                           "--methods=ce,wsl", "--num_models=2", "--resample=bootstrap",
                           f"--output_dir={tmp_path}", *VALIDATION, *TINY)
    check_the_split_is_recorded("bias_variance", tmp_path)
    payload, markdown = _outputs(tmp_path, "bias_variance")
    assert list(payload["results"]) == ["ce", "wsl"] == list(summaries)
    for name, row in payload["results"].items():
        assert row["num_models"] == 2 and row["noise"] == 0.0
        # the decomposition adds up to the expected CE measured separately
        assert row["bias"] + row["variance"] == pytest.approx(row["expected_ce_measured"], rel=1e-6)
        assert row["top1"] == pytest.approx(np.mean(row["top1_per_model"]))
        assert row["top1_std"] == pytest.approx(np.std(row["top1_per_model"]))
        assert set(row["teacher_worse_split"]) == {"in", "out"}
        split = row["teacher_worse_split"]
        assert split["in"]["count"] + split["out"]["count"] == payload["test_examples"] == 64
        assert _row(markdown, name)[6] == f"{row['bias']:.4f}"
    assert "noise+bias+variance" in markdown

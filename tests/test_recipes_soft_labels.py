"""The soft-label recipes end to end on tiny Fashion-MNIST (table, plot, JSON)."""

import json

import pytest

from tests.helpers import run_script

TINY = ["--dataset=fashion_mnist", "--train_limit=128", "--test_limit=64", "--epochs=1",
        "--batch_size=64", "--run_eagerly"]


def run_recipe(name, tmp_path, *flags):
    out = tmp_path / name
    proc = run_script(f"recipes/{name}.py", *TINY, f"--output_dir={out}", *flags,
                      env={"CUDA_VISIBLE_DEVICES": ""})
    for ext in ("md", "png", "json"):
        assert (out / f"{name}.{ext}").stat().st_size > 0, ext
    with open(out / f"{name}.json") as f:
        payload = json.load(f)
    markdown = (out / f"{name}.md").read_text()
    assert f"{name}.png" in markdown and "|---|" in markdown
    return payload, markdown, proc.stdout


@pytest.mark.e2e
def test_teacher_free_recipe(tmp_path):
    payload, markdown, stdout = run_recipe("teacher_free", tmp_path, "--student=resnet8")
    assert list(payload["results"]) == ["baseline", "LSR", "Tf-KD self", "Tf-KD reg"]
    for row in payload["results"].values():
        assert 0.0 <= row["top1"] <= 1.0
    assert "Tf-KD reg" in markdown and "RESULT baseline=" in stdout


@pytest.mark.e2e
def test_reversed_kd_recipe(tmp_path):
    payload, markdown, _ = run_recipe(
        "reversed_kd", tmp_path, "--weak=resnet8", "--weak_args=width_multiplier=0.5",
        "--strong=resnet8", "--nonormal_kd")
    assert list(payload["results"]) == ["weak alone", "strong alone", "Re-KD"]
    assert payload["rekd_gain"] == pytest.approx(payload["rekd_top1"] - payload["strong_top1"])
    assert "Re-KD" in markdown


@pytest.mark.e2e
def test_defective_kd_recipe(tmp_path):
    payload, markdown, _ = run_recipe(
        "defective_kd", tmp_path, "--teacher=resnet8", "--student=resnet8", "--defect=steps",
        "--levels=0,1", "--nofull_teacher")
    assert [p["level"] for p in payload["points"]] == [0, 1]
    assert payload["points"][0]["teacher"] == "untrained"
    for p in payload["points"]:
        assert 0.0 <= p["teacher_top1"] <= 1.0
        assert p["gain"] == pytest.approx(p["student_top1"] - payload["baseline_top1"])
    assert "student alone" in markdown


@pytest.mark.e2e
def test_bias_variance_recipe(tmp_path):
    payload, markdown, _ = run_recipe(
        "bias_variance", tmp_path, "--teacher=resnet8", "--teacher_epochs=1", "--student=resnet8",
        "--methods=ce,wsl", "--num_models=2", "--resample=bootstrap")
    assert list(payload["results"]) == ["ce", "wsl"]
    for row in payload["results"].values():
        assert row["num_models"] == 2 and row["noise"] == 0.0
        # the decomposition adds up to the expected CE measured separately
        assert row["bias"] + row["variance"] == pytest.approx(row["expected_ce_measured"], rel=1e-6)
        assert row["variance"] >= 0 and 0 <= row["regularization_share"] <= 1
        assert set(row["teacher_worse_split"]) == {"in", "out"}
    assert "noise+bias+variance" in markdown

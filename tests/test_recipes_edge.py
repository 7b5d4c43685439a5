"""The edge recipe (distil, export four LiteRT variants, check) and the visual
report recipe end to end on tiny Fashion-MNIST subsets."""

import functools
import json

import numpy as np
import pytest

from tests.helpers import needs_fashion_mnist, recipe_output, tiny_cnn

pytestmark = [pytest.mark.e2e, needs_fashion_mnist]
TINY = ["--dataset=fashion_mnist", "--train_limit=128", "--test_limit=64", "--batch_size=64",
        "--epochs=1"]
VARIANTS = ("keras", "float32", "float16", "dynamic", "int8")
CHECKS = ("float32_top1_matches_keras", "float32_logits_match_keras",
          "int8_size_vs_float32", "int8_top1_vs_keras")


run = functools.partial(recipe_output, timeout=900)


def test_edge_recipe_exports_and_checks_all_variants(tmp_path):
    out = run(
        "edge_mobilenetv2.py", "--teacher=resnet8", "--teacher_epochs=1", "--input_size=32",
        "--alpha=0.35", "--num_representative=16", "--latency_runs=5", "--warmup_runs=1",
        f"--output_dir={tmp_path}", *TINY,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    for name in VARIANTS:
        for key in ("top1", "size_bytes", "latency_ms"):
            assert key in report[name], (name, key)
        assert 0.0 <= report[name]["top1"] <= 1.0 and report[name]["size_bytes"] > 0
        assert report[name]["latency_ms"] > 0
    assert report["keras"]["num_examples"] == report["int8"]["num_examples"] == 64
    for q in VARIANTS[1:]:
        assert (tmp_path / report[q]["file"]).stat().st_size == report[q]["size_bytes"]
    assert (tmp_path / "student_int8.tflite").exists()
    assert 0.0 <= report["teacher_top1"] <= 1.0 and "baseline_top1" not in report
    assert set(CHECKS) <= set(report["checks"])
    for check in report["checks"].values():
        assert isinstance(check["pass"], bool) and isinstance(check["value"], float)
    # float32 conversion must be exact whatever the training budget.
    assert report["float32"]["max_abs_logit_diff"] <= 1e-3
    assert report["checks"]["float32_top1_matches_keras"]["pass"]
    assert report["checks"]["float32_logits_match_keras"]["pass"]
    assert report["int8"]["size_bytes"] < report["float32"]["size_bytes"]
    md = (tmp_path / "report.md").read_text()
    assert "edge_mobilenetv2.py" in md and "| int8 |" in md and "## Checks" in md
    b = report["int8"]["size_breakdown"]
    assert b["file_bytes"] == report["int8"]["size_bytes"] and b["quantized_channels"] > 0
    assert "int8 file by content" in md
    assert "CHECK float32_logits_match_keras" in out
    # Defaults: mixed int8 weight scales, tensor names stripped from every file.
    assert report["int8"]["weight_granularity"] == "mixed" and "`mixed`" in md
    for q in VARIANTS[1:]:
        assert report[q]["names_stripped"] and report[q]["size_breakdown"]["tensor_name_bytes"] == 0


def _save_tiny_run(tmp_path):
    """Tiny teacher/baseline/student CNNs and a distill.py-like metrics.json."""
    paths = {}
    for name, width in (("teacher", 8), ("baseline", 4), ("student", 4)):
        model = tiny_cnn(width=width, num_classes=10, input_shape=(28, 28, 1), name=name)
        paths[name] = str(tmp_path / f"{name}.keras")
        model.save(paths[name])
    history = {"loss": [2.0, 1.5], "accuracy": [0.3, 0.5], "val_loss": [1.8, 1.4],
               "val_accuracy": [0.35, 0.52]}
    metrics = {"method": "kd", "history": dict(history, kd=[0.4, 0.2]),
               "baseline_history": history}
    paths["metrics"] = str(tmp_path / "metrics.json")
    with open(paths["metrics"], "w") as f:
        json.dump(metrics, f)
    return paths


def _not_blank(path):
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 5.0


def test_visualize_writes_figures_and_report(tmp_path):
    paths = _save_tiny_run(tmp_path)
    out_dir = tmp_path / "visual"
    run(
        "visualize.py", f"--teacher={paths['teacher']}", f"--student={paths['student']}",
        f"--baseline={paths['baseline']}", f"--metrics={paths['metrics']}", "--num_images=2",
        "--dataset=fashion_mnist", "--test_limit=64", f"--output_dir={out_dir}",
    )
    pngs = ["saliency.png", "attention_0.png", "attention_1.png", "training_curves.png",
            "agreement.png", "reliability.png"]
    for name in pngs:
        assert _not_blank(out_dir / name), name
    md = (out_dir / "report.md").read_text()
    for name in pngs:
        assert f"({name})" in md, name
    assert "| student |" in md and "ECE" in md
    assert (out_dir / "report.html").exists()
    summary = json.loads((out_dir / "visual.json").read_text())
    assert [r["model"] for r in summary["models"]] == ["teacher", "baseline", "student"]
    assert summary["attention_stages"]["teacher"] == ["relu1", "relu2"]
    assert len(summary["images"]) == 2

"""The edge recipe (distil, export four LiteRT variants, check) and the visual
report recipe end to end on tiny Fashion-MNIST subsets."""

import json
import os

import numpy as np
import pytest

from kdkeras import export
from tests.helpers import TINY, needs_fashion_mnist, run_recipe, tiny_cnn

pytestmark = [pytest.mark.e2e, needs_fashion_mnist]
VARIANTS = ("keras", "float32", "float16", "dynamic", "int8")
CHECKS = ("float32_top1_matches_keras", "float32_logits_match_keras",
          "int8_size_vs_float32", "int8_top1_vs_keras")


@pytest.fixture(scope="module")
def mobilenet_run(tiny_teacher, tmp_path_factory):
    """One MobileNetV2 edge run, QAT on, read by the two tests below (the recipe's
    costliest part, its float training and PTQ exports, runs once): its report and
    folder. The run without QAT is `test_edge_recipe_exports_a_distilled_deit_student`'s."""
    out = tmp_path_factory.mktemp("edge_mobilenetv2")
    # The 28x28x1 teacher reads the recipe's 32x32x3 pipeline through an adapted input.
    report = run_recipe(
        "edge_mobilenetv2", f"--teacher={tiny_teacher.path}", "--input_size=32", "--alpha=0.35",
        "--num_representative=16", "--latency_runs=2", "--warmup_runs=1", "--qat_epochs=1",
        f"--output_dir={out}", *TINY,
    )
    return report, out


def test_edge_recipe_exports_and_checks_all_variants(mobilenet_run, tiny_teacher):
    report, tmp_path = mobilenet_run
    assert json.loads((tmp_path / "report.json").read_text())["checks"] == report["checks"]
    assert report["teacher_top1"] == pytest.approx(tiny_teacher.top1)
    assert report["input_shape"] == [32, 32, 3] and "baseline_top1" not in report
    # Every variant's figures recomputed from its file with the LiteRT interpreter.
    from kdkeras.experiment import RunConfig, setup_data

    test = setup_data(RunConfig(dataset="fashion_mnist", test_limit=64, batch_size=64), (32, 32, 3)).test
    for q in VARIANTS[1:]:
        path = tmp_path / report[q]["file"]
        again = export.evaluate_tflite(str(path), test, latency_runs=1, warmup_runs=0)
        assert report[q]["top1"] == pytest.approx(again["top1"]), q
        assert report[q]["size_bytes"] == os.path.getsize(path) == again["size_bytes"], q
        assert report[q]["num_examples"] == 64
    ratio = report["int8"]["size_bytes"] / report["float32"]["size_bytes"]
    assert report["checks"]["int8_size_vs_float32"]["value"] == pytest.approx(ratio)
    assert report["checks"]["int8_size_vs_float32"]["pass"] == (ratio <= 0.30)
    gap = abs(report["int8"]["top1"] - report["keras"]["top1"]) * 100
    assert report["checks"]["int8_top1_vs_keras"]["value"] == pytest.approx(gap)
    assert set(CHECKS) <= set(report["checks"])  # the QAT ones: the next test; none without QAT: deit's
    # float32 conversion must be exact whatever the training budget.
    assert report["float32"]["max_abs_logit_diff"] <= 1e-3
    assert report["checks"]["float32_top1_matches_keras"]["pass"]
    assert report["checks"]["float32_logits_match_keras"]["pass"]
    md = (tmp_path / "report.md").read_text()
    assert report["command"] in md
    assert "| int8 |" in md and "## Checks" in md and "int8 file by content" in md
    b = report["int8"]["size_breakdown"]
    assert b["file_bytes"] == report["int8"]["size_bytes"] and b["quantized_channels"] > 0
    # Defaults: mixed int8 weight scales, tensor names stripped from every file.
    assert report["int8"]["weight_granularity"] == "mixed" and "`mixed`" in md
    for q in VARIANTS[1:]:
        assert report[q]["names_stripped"] and report[q]["size_breakdown"]["tensor_name_bytes"] == 0


def test_edge_recipe_exports_a_distilled_deit_student(tiny_teacher, tmp_path):
    """A ViT student with a distillation token, distilled with `deit`, ships as the
    four LiteRT variants; the float32 file gives the Keras model's averaged heads."""
    report = run_recipe(
        "edge_mobilenetv2", f"--teacher={tiny_teacher.path}", "--input_size=32", "--student=deit_micro",
        "--method=deit", "--num_representative=16", "--latency_runs=2", "--warmup_runs=1",
        f"--output_dir={tmp_path}", *TINY,
    )
    assert report["student"] == "deit_micro()" and report["method"] == "deit"
    assert set(CHECKS) == set(report["checks"])
    assert report["float32"]["max_abs_logit_diff"] <= 1e-3
    assert report["checks"]["float32_top1_matches_keras"]["pass"]
    from kdkeras.experiment import RunConfig, setup_data

    test = setup_data(RunConfig(dataset="fashion_mnist", test_limit=64, batch_size=64), (32, 32, 3)).test
    for q in VARIANTS[1:]:
        again = export.evaluate_tflite(str(tmp_path / report[q]["file"]), test, latency_runs=1, warmup_runs=0)
        assert report[q]["top1"] == pytest.approx(again["top1"]), q


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
    result = run_recipe(
        "visualize", f"--teacher={paths['teacher']}", f"--student={paths['student']}",
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
    assert summary["models"] == result["models"]
    assert [r["model"] for r in summary["models"]] == ["teacher", "baseline", "student"]
    assert summary["attention_stages"]["teacher"] == ["relu1", "relu2"]
    assert len(summary["images"]) == 2


QAT_CHECKS = ("qat_int8_top1_vs_float", "qat_int8_top1_vs_ptq_int8", "qat_int8_size_vs_float32",
              "qat_int8_matches_fake_quant")


def test_edge_recipe_adds_the_qat_variant(mobilenet_run):
    report, tmp_path = mobilenet_run
    qat = report["qat_int8"]
    assert set(CHECKS + QAT_CHECKS) == set(report["checks"])
    assert report["qat"]["epochs"] == 1 and report["qat"]["lr"] == pytest.approx(0.005)
    assert qat["int8_kernels"] and "FAKE_QUANT" not in qat["ops"]
    # The file and the saved fake-quant model, re-evaluated independently.
    import keras

    from kdkeras.experiment import RunConfig, setup_data
    from kdkeras.training import predict_logits

    test = setup_data(RunConfig(dataset="fashion_mnist", test_limit=64, batch_size=64), (32, 32, 3)).test
    again = export.evaluate_tflite(str(tmp_path / qat["file"]), test, latency_runs=1, warmup_runs=0)
    fake, labels = predict_logits(keras.models.load_model(tmp_path / "student_qat.keras"), test)
    assert qat["top1"] == pytest.approx(again["top1"])
    assert qat["keras_top1"] == pytest.approx(np.mean(fake.argmax(-1) == labels))
    assert qat["agreement_with_fake_quant"] == pytest.approx(
        np.mean(fake.argmax(-1) == again["logits"].argmax(-1)))
    below = (report["keras"]["top1"] - qat["top1"]) * 100
    assert report["checks"]["qat_int8_top1_vs_float"]["value"] == pytest.approx(below)
    assert report["checks"]["qat_int8_top1_vs_float"]["pass"] == (below <= 0.3)
    assert "| qat_int8 |" in (tmp_path / "report.md").read_text()

"""Figures, calibration metrics and report page of kdkeras.vis."""

import os

import keras
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from kdkeras import vis
from kdkeras.vis import plots, saliency

DPI = 100


def _model(width, name):
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(h), name=name)


def _check_png(path, height, width):
    assert os.path.isfile(path)
    img = mpimg.imread(path)
    assert img.shape[:2] == (height, width)
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std() > 0
    assert len(np.unique(rgb, axis=0)) > 1
    assert plt.get_fignums() == []  # nothing left open in pyplot


def _cells(fig):
    """What each plot cell of `fig` draws (colour bars left out), read from its artists."""
    cells = []
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        cells.append({
            "title": ax.get_title(), "ylabel": ax.get_ylabel(),
            "images": [(np.asarray(im.get_array()), im.get_clim()) for im in ax.images],
            "lines": [(np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float),
                       ln.get_linestyle(), ln.get_label()) for ln in ax.lines],
            "bars": [np.array([r.get_height() for r in c]) for c in ax.containers],
            "texts": [t.get_text() for t in ax.texts],
        })
    return cells


@pytest.fixture
def drawn(monkeypatch):
    """The cells of each figure the plotting functions write, taken just before
    it is saved (they return only the PNG's path and release the figure)."""
    figures = []
    save = plots.save_figure

    def snapshot(fig, path):
        figures.append(_cells(fig))
        return save(fig, path)

    for module in (plots, saliency):
        monkeypatch.setattr(module, "save_figure", snapshot)
    return figures


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ece_reference(probs, labels, num_bins):
    """Independent per-bin loop: bins (lo, hi], confidence 0 in the first bin."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    total = 0.0
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        mask = (conf > lo) & (conf <= hi)
        if b == 0:
            mask |= conf == 0
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return total


def _bins_reference(probs, labels, num_bins):
    """Per-bin (accuracy, mean confidence) of the non-empty bins, by a loop over (lo, hi]."""
    conf, correct = probs.max(1), probs.argmax(1) == labels
    acc, mean_conf = [], []
    for b in range(num_bins):
        mask = (conf > b / num_bins) & (conf <= (b + 1) / num_bins) | ((b == 0) & (conf == 0))
        if mask.any():
            acc.append(correct[mask].mean())
            mean_conf.append(conf[mask].mean())
    return np.array(acc), np.array(mean_conf)


def test_saliency_grid(tmp_path, drawn):
    teacher, student = _model(8, "teacher"), _model(4, "student")
    x = np.random.default_rng(0).random((1, 16, 16, 3)).astype("float32")
    before = [w.copy() for w in student.get_weights()]
    out_before = student(x).numpy()
    n_layers = len(student.layers)

    methods = ("gradcam", "gradcam++", "scorecam", "smoothgrad")
    path = vis.saliency_grid({"teacher": teacher, "student": student}, x, np.array([2]),
                             ["a", "b", "c", "d"], str(tmp_path / "sal" / "grid.png"),
                             methods=methods, penultimate_layer={"student": "conv1"},
                             scorecam_max_n=2, smooth_samples=2, dpi=DPI)
    _check_png(path, len(methods) * 2 * DPI, 3 * 2 * DPI)

    # one row per method, columns: the image, then each model's map over it, explaining its predicted class
    cells = drawn[-1]
    assert len(cells) == len(methods) * 3
    assert [cells[3 * r]["ylabel"] for r in range(len(methods))] == ["Grad-CAM", "Grad-CAM++", "Score-CAM",
                                                                      "SmoothGrad"]
    assert cells[0]["title"] == "#0 true: c"
    for r, method in enumerate(methods):
        np.testing.assert_allclose(cells[3 * r]["images"][0][0], x[0])
        for c, (name, model, layer) in enumerate([("teacher", teacher, None), ("student", student, "conv1")], 1):
            predicted = int(np.argmax(model(x).numpy()[0]))
            images = cells[3 * r + c]["images"]
            assert len(images) == 2 and images[1][1] == (0.0, 1.0)
            np.testing.assert_allclose(images[0][0], x[0])
            if r == 0:
                mark = "✓" if predicted == 2 else "✗"
                assert cells[c]["title"] == f"{name}\npred: {'abcd'[predicted]} {mark}"
            if method in ("gradcam", "gradcam++", "scorecam"):  # deterministic: the map drawn is explain()'s
                np.testing.assert_allclose(images[1][0], vis.explain(model, x, [predicted], method, layer,
                                                                      scorecam_max_n=2)[0], atol=1e-6)

    # the caller's model is neither cloned-over nor modified
    assert len(student.layers) == n_layers
    assert student.get_layer("logits").activation is keras.activations.linear
    for a, b in zip(before, student.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(out_before, student(x).numpy())


def test_saliency_grid_degrades_gracefully(tmp_path, drawn):
    # Keras 3 cannot tap a layer inside a nested sub-model from the outer inputs,
    # so CAM methods fail there; the grid is still drawn, with "n/a" and a warning.
    inner = keras.Input((16, 16, 3))
    backbone = keras.Model(inner, keras.layers.Conv2D(4, 3, activation="relu")(inner))
    outer = keras.Input((16, 16, 3))
    h = keras.layers.GlobalAveragePooling2D()(backbone(outer))
    nested = keras.Model(outer, keras.layers.Dense(4)(h))
    x = np.random.default_rng(0).random((1, 16, 16, 3)).astype("float32")
    with pytest.warns(UserWarning, match="gradcam failed"):
        path = vis.saliency_grid({"nested": nested}, x, [1], None, str(tmp_path / "n.png"),
                                 methods=("gradcam", "smoothgrad"), smooth_samples=2, dpi=DPI)
    _check_png(path, 2 * 2 * DPI, 2 * 2 * DPI)
    gradcam, smoothgrad = drawn[-1][1], drawn[-1][3]
    assert gradcam["texts"] == ["n/a"] and len(gradcam["images"]) == 1  # the image alone, no map
    assert smoothgrad["texts"] == [] and len(smoothgrad["images"]) == 2
    assert 0.0 <= smoothgrad["images"][1][0].min() and smoothgrad["images"][1][0].max() <= 1.0 + 1e-6


def test_explain_maps_are_normalised():
    model = _model(4, "m")
    x = np.random.default_rng(1).random((2, 16, 16, 3)).astype("float32")
    for method in ("gradcam", "saliency"):
        maps = vis.explain(model, x, [0, 3], method)
        assert maps.shape == (2, 16, 16)
        assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    with pytest.raises(ValueError, match="nope"):
        vis.explain(model, x, [0, 3], "nope")


def test_attention_maps(tmp_path, drawn):
    rng = np.random.default_rng(0)
    feats = {
        "teacher": [rng.random((2, 16, 16, 8)), rng.random((2, 8, 8, 16))],
        "baseline": [rng.random((16, 16, 4)), rng.random((8, 8, 8))],
        "student": [rng.random((16, 16, 4)), rng.random((8, 8, 8)) ** 3],
    }

    def reference(f):  # mean over channels of f**2, L2-normalised over the map (batched: image 0)
        a = (np.asarray(f)[0] if np.ndim(f) == 4 else np.asarray(f)) ** 2
        a = a.mean(-1)
        return a / np.sqrt((a ** 2).sum())

    path = vis.attention_maps(feats, str(tmp_path / "att.png"), dpi=DPI)
    _check_png(path, round(3 * 2.2 * DPI), round(2 * 2.2 * DPI))
    cells = drawn[-1]
    assert len(cells) == 3 * 2 and [cells[2 * r]["ylabel"] for r in range(3)] == list(feats)
    for r, name in enumerate(feats):
        for s in range(2):
            (image, clim), = cells[2 * r + s]["images"]
            np.testing.assert_allclose(image, reference(feats[name][s]), rtol=1e-5)
            # one colour scale per stage: 0 to the largest value any network reaches there
            np.testing.assert_allclose(clim, (0.0, max(reference(feats[n][s]).max() for n in feats)), rtol=1e-5)
            assert cells[2 * r + s]["title"] == (f"stage {s + 1} ({image.shape[0]}x{image.shape[1]})" if r == 0
                                                 else cells[s]["title"])

    images = rng.random((2, 16, 16, 3))
    path = vis.attention_maps(feats, str(tmp_path / "att_img.png"), images=images, dpi=DPI)
    _check_png(path, round(3 * 2.2 * DPI), round(3 * 2.2 * DPI))
    cells = drawn[-1]
    assert len(cells) == 3 * 3
    for r, name in enumerate(feats):
        np.testing.assert_allclose(cells[3 * r]["images"][0][0], images[0].astype("float32"))
        np.testing.assert_allclose(cells[3 * r + 2]["images"][0][0], reference(feats[name][1]), rtol=1e-5)

    a = vis.attention_map(feats["student"][1])
    np.testing.assert_allclose(a, reference(feats["student"][1]), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a), 1.0, rtol=1e-5)


def test_training_curves(tmp_path, drawn):
    hist = {
        "baseline": {"loss": [1.2, 0.9, 0.7], "val_loss": [1.3, 1.0, 0.9],
                     "accuracy": [0.4, 0.6, 0.7], "val_accuracy": [0.35, 0.5, 0.6]},
        "kd": {"loss": [1.1, 0.8, 0.6], "val_loss": [1.2, 0.9, 0.8],
               "accuracy": [0.45, 0.65, 0.75], "val_accuracy": [0.4, 0.55, 0.65],
               "kd_loss": [0.5, 0.3, 0.2]},
    }
    path = vis.training_curves(hist, str(tmp_path / "curves.png"), dpi=DPI)
    _check_png(path, round(2.8 * DPI), round(3 * 3.6 * DPI))  # loss, accuracy, kd_loss
    cells = drawn[-1]
    assert [c["title"] for c in cells] == ["loss", "accuracy", "kd_loss"]
    for cell in cells:
        # each run's training values solid and its val_ values dashed, against epochs 1..3
        expected = [(run, key, style) for run in hist for key, style in ((cell["title"], "-"),
                                                                        ("val_" + cell["title"], "--"))
                    if key in hist[run]]
        assert [(label, style) for _, _, style, label in cell["lines"]] == [
            (run + (" (val)" if key.startswith("val_") else ""), style) for run, key, style in expected]
        for (x, y, _, _), (run, key, _) in zip(cell["lines"], expected):
            np.testing.assert_array_equal(x, [1, 2, 3])
            np.testing.assert_allclose(y, hist[run][key])

    path = vis.training_curves(hist, str(tmp_path / "c2.png"), keys=["loss"], dpi=DPI)
    _check_png(path, round(2.8 * DPI), round(3.6 * DPI))
    (cell,) = drawn[-1]
    assert cell["title"] == "loss" and [label for *_, label in cell["lines"]] == [
        "baseline", "baseline (val)", "kd", "kd (val)"]


def test_ece_matches_reference():
    rng = np.random.default_rng(0)
    probs = _softmax(rng.normal(size=(400, 5)) * 3)
    labels = rng.integers(0, 5, 400)
    labels[:200] = probs[:200].argmax(1)
    for bins in (1, 10, 15):
        assert vis.expected_calibration_error(probs, labels, bins) == pytest.approx(
            _ece_reference(probs, labels, bins), abs=1e-12)
    # confidences exactly on bin edges go to the lower bin, like the reference
    edge = np.array([[0.6, 0.4], [0.6, 0.4], [0.8, 0.2], [1.0, 0.0]])
    edge_labels = np.array([0, 1, 0, 0])
    assert vis.expected_calibration_error(edge, edge_labels, 5) == pytest.approx(
        _ece_reference(edge, edge_labels, 5), abs=1e-12)


def test_ece_known_values():
    # perfectly calibrated: confidence 0.75 and 3 of 4 right; confidence 0.5 and 1 of 2 right
    probs = np.array([[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 1])
    assert vis.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # always 90% sure and always wrong
    wrong = np.array([[0.9, 0.1]] * 5)
    assert vis.expected_calibration_error(wrong, np.ones(5, int)) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="softmax"):
        vis.expected_calibration_error(np.array([[2.0, -1.0]]), np.array([0]))


def test_reliability_diagram(tmp_path, drawn):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 4)) * 2
    labels = rng.integers(0, 4, 300)
    labels[:150] = logits[:150].argmax(1)
    probs = {"teacher": _softmax(logits), "student": _softmax(logits / 2)}
    path = vis.reliability_diagram(probs, labels, str(tmp_path / "rel.png"), num_bins=10, dpi=DPI)
    _check_png(path, round(3.4 * DPI), round(2 * 3.2 * DPI))
    cells = drawn[-1]
    assert len(cells) == 2
    for cell, (name, p) in zip(cells, probs.items()):
        # bars: each non-empty bin's accuracy, then its gap up to the bin's mean confidence
        acc, conf = _bins_reference(p, labels, 10)
        accuracy_bars, gap_bars = cell["bars"]
        np.testing.assert_allclose(accuracy_bars, acc, atol=1e-12)
        np.testing.assert_allclose(gap_bars, conf - acc, atol=1e-12)
        assert cell["title"] == f"{name}\nECE = {100 * _ece_reference(p, labels, 10):.2f}%"
    assert cells[0]["title"] != cells[1]["title"]  # the softer student is calibrated differently


def test_agreement(tmp_path, drawn):
    a = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.1, 0.0, 0.2], [1.0, 5.0, 2.0]])
    b = np.array([[2.0, 1.0, 0.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.5], [9.0, 5.0, 2.0]])
    assert vis.agreement(a, b) == pytest.approx(0.5)
    assert vis.agreement(a, a) == 1.0
    with pytest.raises(ValueError):
        vis.agreement(a, b[:2])
    labels = np.array([0, 1, 2, 1])
    path = vis.agreement_matrix({"teacher": a, "student": b}, str(tmp_path / "agree.png"),
                                labels=labels, dpi=DPI)
    size = 1.0 + 0.9 * 3
    _check_png(path, round(size * DPI), round((size + 1.0) * DPI))
    # teacher predicts 0,1,2,1; student 0,0,2,0; labels 0,1,2,1: worked out by hand
    expected = np.array([[1.0, 0.5, 1.0], [0.5, 1.0, 0.5], [1.0, 0.5, 1.0]])
    (cell,) = drawn[-1]
    (matrix, clim), = cell["images"]
    np.testing.assert_allclose(matrix, expected)
    assert clim == (0.0, 1.0)
    assert cell["texts"] == [f"{v:.2f}" for v in expected.ravel()]


def test_write_report(tmp_path):
    rng = np.random.default_rng(0)
    probs = _softmax(rng.normal(size=(50, 3)))
    img = vis.reliability_diagram({"m": probs}, rng.integers(0, 3, 50),
                                  str(tmp_path / "figs" / "rel.png"))
    page = vis.write_report(str(tmp_path / "report" / "index.md"), "KD run",
                            [("Calibration", ["ECE is lower after KD.", img]),
                             ("Notes", "plain text <b>")], html_copy=True)
    text = open(page, encoding="utf-8").read()
    assert text.startswith("# KD run")
    assert "## Calibration" in text and "ECE is lower after KD." in text
    assert "](../figs/rel.png)" in text
    html = open(tmp_path / "report" / "index.html", encoding="utf-8").read()
    assert 'src="../figs/rel.png"' in html and "plain text &lt;b&gt;" in html
    assert os.path.isfile(os.path.join(os.path.dirname(page), "../figs/rel.png"))

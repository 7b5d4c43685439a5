"""The visual report of a distillation run: does the student look where the teacher looks?

`write_visual_report(models, test_ds, ...)` writes saliency grids (Grad-CAM,
Grad-CAM++, Score-CAM, SmoothGrad), attention maps of stages matched by
resolution, training curves, agreement and reliability diagrams, and a
report page (Markdown and HTML) that shows them with a table of top-1, ECE
and agreement with the teacher. `recipes/visualize.py` runs it on saved
models; the edge recipe's `--visualize` on the models it trained.
"""

from __future__ import annotations

import os
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from kdkeras import tap_detection, taps
from kdkeras.data.pipeline import fit_images
from kdkeras.keys import image_part
from kdkeras.training import write_json
from kdkeras.vis.plots import (
    agreement,
    agreement_matrix,
    attention_maps,
    expected_calibration_error,
    reliability_diagram,
    training_curves,
)
from kdkeras.vis.report import markdown_table, pct, write_report
from kdkeras.vis.saliency import saliency_grid

SALIENCY_METHODS = ("gradcam", "gradcam++", "scorecam", "smoothgrad")


def input_shape_of(model: keras.Model) -> tuple:
    return tuple(model.input_shape[1:])


def collect_logits(models: dict[str, keras.Model], dataset) -> tuple[dict, np.ndarray]:
    """Logits of every model on the dataset (images fitted to each model) and labels."""
    logits = {name: [] for name in models}
    labels = []
    for x, y in dataset:
        x = image_part(x)
        for name, model in models.items():
            logits[name].append(np.asarray(model.predict_on_batch(fit_images(x, input_shape_of(model)))))
        labels.append(np.asarray(y).reshape(-1))
    return {n: np.concatenate(v) for n, v in logits.items()}, np.concatenate(labels)


def take_images(dataset, indices: Sequence[int]) -> np.ndarray:
    """The dataset's images at the given positions (in that order)."""
    wanted = {int(i): k for k, i in enumerate(indices)}
    out: list = [None] * len(indices)
    offset = 0
    for x, _ in dataset:
        x = np.asarray(image_part(x))
        for i in range(len(x)):
            if offset + i in wanted:
                out[wanted[offset + i]] = x[i]
        offset += len(x)
        if all(o is not None for o in out):
            break
    return np.stack(out)


def choose_images(labels: np.ndarray, preds: dict[str, np.ndarray], n: int, seed: int = 0) -> list[int]:
    """Test images worth looking at, of distinct classes where possible: first
    those the distilled student gets right and the baseline wrong, then any on
    which the models disagree, then the rest (in a seeded random order)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    student = preds.get("student")
    baseline = preds.get("baseline")
    stack = np.stack(list(preds.values()))
    disagree = np.any(stack != stack[:1], axis=0)
    rank = np.full(len(labels), 2)
    rank[disagree] = 1
    if student is not None and baseline is not None:
        rank[(student == labels) & (baseline != labels)] = 0
    order = order[np.argsort(rank[order], kind="stable")]
    chosen, classes = [], set()
    for i in order:  # distinct classes first
        if len(chosen) < n and labels[i] not in classes:
            chosen.append(int(i))
            classes.add(labels[i])
    for i in order:
        if len(chosen) >= n:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return chosen


def _spatial(model: keras.Model, name: str) -> tuple[int, int]:
    shape = taps.find_layer(model, name)[1].output.shape
    return int(shape[1]), int(shape[2])


def matched_stages(models: dict[str, keras.Model]) -> dict[str, list[str]]:
    """Stage outputs (`tap_detection.stage_outputs`) matched across models by
    spatial size, 1x1 stages left out (their map is a single value); models
    without shared resolutions are paired deepest-first (`pair_taps`)."""
    by_size = {}
    for name, model in models.items():
        by_size[name] = {_spatial(model, s): s for s in tap_detection.stage_outputs(model)}
    common = set.intersection(*(set(v) for v in by_size.values()))
    common = sorted((s for s in common if s[0] * s[1] > 1), key=lambda s: -s[0] * s[1])
    if common:
        return {name: [by_size[name][s] for s in common] for name in models}
    lists = {name: tap_detection.stage_outputs(m) for name, m in models.items()}
    k = min(len(v) for v in lists.values())
    return {name: v[len(v) - k:] for name, v in lists.items()}


def cam_layer(model: keras.Model, min_size: int = 4) -> str | None:
    """The deepest stage output at least `min_size` wide, for the CAM methods:
    at 32x32 inputs ResNet50 and MobileNetV2 end at 1x1, where a CAM is flat."""
    try:
        stages = tap_detection.stage_outputs(model)
    except ValueError:
        return None
    wide = [s for s in stages if min(_spatial(model, s)) >= min_size]
    return wide[-1] if wide else None


def _same_input(models: dict[str, keras.Model]) -> tuple:
    shapes = {input_shape_of(m) for m in models.values()}
    return shapes.pop() if len(shapes) == 1 else None


def _wrapped(model: keras.Model, shape: tuple) -> keras.Model:
    """`model` reading images of `shape` (for a shared saliency grid)."""
    if input_shape_of(model) == tuple(shape):
        return model
    inputs = keras.Input(shape)
    own = input_shape_of(model)
    outputs = model(keras.layers.Lambda(lambda t: fit_images(t, own))(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_fitted")


def _table(rows: list[dict]) -> str:
    return markdown_table(
        ["model", "top-1 (%)", "ECE (%)", "agreement with teacher (%)"],
        [[r["model"], pct(r["top1"]), pct(r["ece"]),
          "" if r["agreement_with_teacher"] is None else pct(r["agreement_with_teacher"])]
         for r in rows],
        align="lrrr")


def write_visual_report(
    models: dict[str, keras.Model],
    test_ds,
    class_names: list[str] | None,
    output_dir: str,
    histories: dict[str, dict] | None = None,
    num_images: int = 4,
    methods: Sequence[str] = SALIENCY_METHODS,
    seed: int = 0,
    command: str | None = None,
) -> dict:
    """Write every figure and the report page; returns their paths and the table.

    `models` maps display names to logits models, the teacher first (named
    "teacher" for the agreement column; "baseline" and "student" steer the
    choice of images); `histories` maps run names to Keras History dicts.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = lambda name: os.path.join(output_dir, name)  # noqa: E731
    teacher_name = "teacher" if "teacher" in models else next(iter(models))

    print(f"Visual report: predicting with {list(models)}")
    logits, labels = collect_logits(models, test_ds)
    probs = {n: np.asarray(tf.nn.softmax(v.astype(np.float32), -1)) for n, v in logits.items()}
    rows = []
    for name in models:
        rows.append({
            "model": name,
            "top1": float(np.mean(logits[name].argmax(-1) == labels)),
            "ece": expected_calibration_error(probs[name], labels),
            "agreement_with_teacher": (None if name == teacher_name
                                       else agreement(logits[name], logits[teacher_name])),
        })
    figures = {
        "reliability": reliability_diagram(probs, labels, path("reliability.png")),
        "agreement": agreement_matrix(logits, path("agreement.png"), labels=labels),
    }

    preds = {n: v.argmax(-1) for n, v in logits.items()}
    chosen = choose_images(labels, preds, min(num_images, len(labels)), seed)
    images = take_images(test_ds, chosen)
    shape = _same_input(models) or images.shape[1:]
    grid_models = {n: _wrapped(m, shape) for n, m in models.items()}
    penultimate = {n: layer for n, m in grid_models.items() if (layer := cam_layer(m))}
    print(f"Saliency ({', '.join(methods)}) on test images {chosen}, CAM layers {penultimate}")
    figures["saliency"] = saliency_grid(
        grid_models, fit_images(images, shape).numpy(), labels[chosen], class_names,
        path("saliency.png"), methods=methods, penultimate_layer=penultimate)

    stages = matched_stages(models)
    print(f"Attention maps of stages {stages}")
    features = {}
    for name, model in models.items():
        out = taps.build_tap_model(model, stages[name])(fit_images(images, input_shape_of(model)),
                                                         training=False)
        features[name] = [np.asarray(out[s]) for s in stages[name]]
    attention = []
    for k in range(len(chosen)):
        attention.append(attention_maps(features, path(f"attention_{k}.png"), images, index=k))
    figures["attention"] = attention

    if histories:
        figures["training_curves"] = training_curves(histories, path("training_curves.png"))

    summary = {"test_examples": int(len(labels)), "images": chosen, "models": rows,
               "cam_layers": penultimate, "attention_stages": stages, "figures": figures}
    write_json(path("visual.json"), summary)

    def name_of(i):
        y = int(labels[i])
        return class_names[y] if class_names and y < len(class_names) else str(y)

    intro = [f"Test examples: {len(labels)}. Models: {', '.join(models)} "
             f"(the student is the distilled one)."]
    if command:
        intro.append(f"Command: `{command}`")
    sections = [
        ("Summary", intro + [_table(rows)]),
        ("Saliency", [
            "Grad-CAM, Grad-CAM++, Score-CAM (CAM layers: "
            + ", ".join(f"{n}: `{l}`" for n, l in penultimate.items())
            + ") and SmoothGrad; each map explains the model's predicted class. Images: "
            + ", ".join(f"#{k} test[{i}] ({name_of(i)})" for k, i in enumerate(chosen)) + ".",
            figures["saliency"]]),
        ("Attention maps", [
            "AT maps (mean over channels of f², L2-normalised) of stages matched by resolution: "
            + "; ".join(f"{n}: " + ", ".join(f"`{s}`" for s in v) for n, v in stages.items()) + "."]
         + attention),
    ]
    if "training_curves" in figures:
        sections.append(("Training curves", [figures["training_curves"]]))
    sections += [
        ("Agreement", ["Share of test images on which two models predict the same class.",
                       figures["agreement"]]),
        ("Calibration", ["Reliability diagrams; ECE over 15 equal-width confidence bins.",
                         figures["reliability"]]),
    ]
    page = write_report(path("report.md"), "Visual report", sections, html_copy=True)
    print(f"Wrote {page} (+ report.html)")
    print(_table(rows))
    return {"page": page, "figures": figures, "models": rows}

"""Visual report of a distillation run: does the student look where the teacher looks?

    python recipes/visualize.py --teacher=runs/kd/teacher.keras \
        --student=runs/kd/student.keras --baseline=runs/kd/baseline.keras \
        --metrics=runs/kd/metrics.json --dataset=fashion_mnist --num_images=4 \
        --output_dir=runs/kd/visual

Takes the models distill.py writes (DIR/student.keras, DIR/baseline.keras and
the teacher) and writes into --output_dir: saliency.png (Grad-CAM,
Grad-CAM++, Score-CAM and SmoothGrad for every model on the chosen test
images, with true and predicted classes), attention_<i>.png (AT maps,
mean_c f^2, of stages matched by resolution), training_curves.png (from
--metrics' `history` and `baseline_history`), agreement.png,
reliability.png (with ECE), visual.json and report.md / report.html that
show them with a table of top-1, ECE and agreement with the teacher.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from kdkeras import data as data_lib  # noqa: E402
from kdkeras import tap_detection, taps, training, vis  # noqa: E402

FLAGS = flags.FLAGS
SALIENCY_METHODS = ("gradcam", "gradcam++", "scorecam", "smoothgrad")


def define_flags() -> None:
    """Defined on demand, so the edge recipe can import this module's functions."""
    from kdkeras import recipe_utils

    flags.DEFINE_string("teacher", None, "Path to the teacher .keras model.", required=True)
    flags.DEFINE_string("student", None, "Path to the distilled student .keras model.", required=True)
    flags.DEFINE_string("baseline", None, "Path to the baseline student .keras model (optional).")
    flags.DEFINE_string("metrics", None, "A distill.py metrics.json (history, baseline_history).")
    flags.DEFINE_integer("num_images", 4, "Test images shown in the saliency and attention figures.")
    flags.DEFINE_list("saliency_methods", list(SALIENCY_METHODS), "Saliency methods (kdkeras.vis.METHODS).")
    flags.DEFINE_string("output_dir", "runs/visual", "Where the PNGs and the report are written.")
    recipe_utils.define_data_flags()


def fit_images(x, shape: Sequence[int]):
    """Images resized and channel-converted to a model's (H, W, C) input."""
    h, w, c = shape
    x = tf.convert_to_tensor(x, tf.float32)
    if tuple(x.shape[1:3]) != (h, w):
        x = tf.image.resize(x, (h, w))
    if x.shape[-1] != c:
        x = tf.reduce_mean(x, -1, keepdims=True) if c == 1 else tf.repeat(x[..., :1], c, -1)
    return x


def input_shape_of(model: keras.Model) -> tuple:
    return tuple(model.input_shape[1:])


def collect_logits(models: dict[str, keras.Model], dataset) -> tuple[dict, np.ndarray]:
    """Logits of every model on the dataset (images fitted to each model) and labels."""
    logits = {name: [] for name in models}
    labels = []
    for x, y in dataset:
        x = training.images_of(x)
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
        x = np.asarray(training.images_of(x))
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
    lines = ["| model | top-1 (%) | ECE (%) | agreement with teacher (%) |", "|---|---:|---:|---:|"]
    for r in rows:
        agree = "" if r["agreement_with_teacher"] is None else f"{100 * r['agreement_with_teacher']:.2f}"
        lines.append(f"| {r['model']} | {100 * r['top1']:.2f} | {100 * r['ece']:.2f} | {agree} |")
    return "\n".join(lines)


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
            "ece": vis.expected_calibration_error(probs[name], labels),
            "agreement_with_teacher": (None if name == teacher_name
                                       else vis.agreement(logits[name], logits[teacher_name])),
        })
    figures = {
        "reliability": vis.reliability_diagram(probs, labels, path("reliability.png")),
        "agreement": vis.agreement_matrix(logits, path("agreement.png"), labels=labels),
    }

    preds = {n: v.argmax(-1) for n, v in logits.items()}
    chosen = choose_images(labels, preds, min(num_images, len(labels)), seed)
    images = take_images(test_ds, chosen)
    shape = _same_input(models) or images.shape[1:]
    grid_models = {n: _wrapped(m, shape) for n, m in models.items()}
    penultimate = {n: layer for n, m in grid_models.items() if (layer := cam_layer(m))}
    print(f"Saliency ({', '.join(methods)}) on test images {chosen}, CAM layers {penultimate}")
    figures["saliency"] = vis.saliency_grid(
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
        attention.append(vis.attention_maps(features, path(f"attention_{k}.png"), images, index=k))
    figures["attention"] = attention

    if histories:
        figures["training_curves"] = vis.training_curves(histories, path("training_curves.png"))

    summary = {"test_examples": int(len(labels)), "images": chosen, "models": rows,
               "cam_layers": penultimate, "attention_stages": stages, "figures": figures}
    training.write_json(path("visual.json"), summary)

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
    page = vis.write_report(path("report.md"), "Visual report", sections, html_copy=True)
    print(f"Wrote {page} (+ report.html)")
    print(_table(rows))
    return {"page": page, "figures": figures, "models": rows}


def main(argv):
    del argv
    models = {"teacher": training.load_model(FLAGS.teacher)}
    if FLAGS.baseline:
        models["baseline"] = training.load_model(FLAGS.baseline)
    models["student"] = training.load_model(FLAGS.student)
    info = data_lib.info(FLAGS.dataset, data_dir=FLAGS.data_dir)
    h, w, c = input_shape_of(models["student"])
    if FLAGS.image_size:
        h = w = FLAGS.image_size
    test = data_lib.load(
        FLAGS.dataset, info.test_split, batch_size=FLAGS.batch_size, image_size=(h, w),
        channels=FLAGS.channels or c, limit=FLAGS.test_limit, data_dir=FLAGS.data_dir,
    )
    histories = None
    if FLAGS.metrics:
        with open(FLAGS.metrics) as f:
            metrics = json.load(f)
        histories = {}
        if metrics.get("history"):
            histories["student"] = metrics["history"]
        if metrics.get("baseline_history"):
            histories["baseline"] = metrics["baseline_history"]
    write_visual_report(
        models, test, info.class_names, FLAGS.output_dir, histories=histories or None,
        num_images=FLAGS.num_images, methods=FLAGS.saliency_methods, seed=FLAGS.seed,
        command=" ".join(shlex.quote(a) for a in ["python"] + sys.argv),
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)

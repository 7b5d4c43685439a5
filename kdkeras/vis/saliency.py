"""Side-by-side visual explanations (tf-keras-vis) for teacher, baseline and
student models: do they look at the same evidence?

Models are Keras 3 functional classifiers that output logits, so no model
modifier is applied (there is no softmax to replace); tf-keras-vis then
neither clones nor mutates the caller's model. Grad-CAM style methods build
a *new* functional model over the same layers to tap the penultimate conv
layer, which leaves the original untouched.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Sequence

import keras
import numpy as np

with warnings.catch_warnings():  # tf-keras-vis imports scipy.ndimage.interpolation
    warnings.simplefilter("ignore", DeprecationWarning)
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ExtractIntermediateLayerForGradcam
    from tf_keras_vis.utils.scores import CategoricalScore

from .plots import as_display_image, new_figure, save_figure

METHODS = ("gradcam", "gradcam++", "scorecam", "smoothgrad", "saliency")
_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM",
           "smoothgrad": "SmoothGrad", "saliency": "Saliency"}


@contextlib.contextmanager
def _quiet():
    """Silence Keras progress bars (Score-CAM calls model.predict) and the
    input-structure warning tf-keras-vis triggers by passing inputs as lists."""
    was_on = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The structure of `inputs`")
            yield
    finally:
        if was_on:
            keras.config.enable_interactive_logging()


def _penultimate_channels(model: keras.Model, penultimate_layer: str | None) -> int:
    tap = ExtractIntermediateLayerForGradcam(penultimate_layer, True, False)(model)
    return int(tap.outputs[0].shape[-1])


def explain(model: keras.Model, images: np.ndarray, targets: Sequence[int], method: str,
            penultimate_layer: str | None = None, *, scorecam_max_n: int = 8,
            smooth_samples: int = 16, smooth_noise: float = 0.2) -> np.ndarray:
    """Heat maps (N, H, W) in [0, 1] of one method for `images` (N, H, W, C),
    each explaining the logit of its class in `targets`.

    penultimate_layer: layer name for the CAM methods; None lets tf-keras-vis
    pick the last convolutional layer.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    x = np.asarray(images, dtype=np.float32)
    score = CategoricalScore([int(t) for t in targets])
    with _quiet():
        if method == "gradcam":
            maps = Gradcam(model)(score, x, penultimate_layer=penultimate_layer)
        elif method == "gradcam++":
            maps = GradcamPlusPlus(model)(score, x, penultimate_layer=penultimate_layer)
        elif method == "scorecam":
            max_n = min(scorecam_max_n, _penultimate_channels(model, penultimate_layer))
            maps = Scorecam(model)(score, x, penultimate_layer=penultimate_layer,
                                   max_N=max_n)
        elif method == "smoothgrad":
            maps = Saliency(model)(score, x, smooth_samples=smooth_samples,
                                   smooth_noise=smooth_noise)
        else:
            maps = Saliency(model)(score, x)
    maps = np.asarray(maps, dtype=np.float32).reshape(x.shape[:3])
    return np.nan_to_num(maps)


def _class_name(i: int, class_names: Sequence[str] | None) -> str:
    return class_names[i] if class_names is not None and 0 <= i < len(class_names) else str(i)


def saliency_grid(models: dict[str, keras.Model], images: np.ndarray, labels: np.ndarray,
                  class_names: list[str] | None, path: str,
                  methods: Sequence[str] = ("gradcam", "gradcam++", "scorecam", "smoothgrad"),
                  penultimate_layer: dict[str, str] | None = None, *,
                  target: str = "predicted", scorecam_max_n: int = 8,
                  smooth_samples: int = 16, smooth_noise: float = 0.2,
                  cell_size: float = 2.0, dpi: int = 100) -> str:
    """Compare explanations of several models on the same images.

    Layout: one row group per image, one row per method inside it; column 0
    is the plain image (titled with the true class, the row labelled with the
    method), then one column per model with the method's heat map overlaid,
    titled with that model's prediction (✓/✗). Each map explains the logit of
    the model's predicted class (`target="predicted"`) or of the true class
    (`target="true"`, which makes models directly comparable).

    penultimate_layer: optional {model name: layer name} for the CAM methods;
    models not listed use the last convolutional layer (tf-keras-vis default).
    The PNG is (1 + len(models)) * cell_size * dpi wide and
    len(images) * len(methods) * cell_size * dpi high.
    """
    if not models:
        raise ValueError("models is empty")
    methods = list(methods)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; expected one of {METHODS}")
    if target not in ("predicted", "true"):
        raise ValueError(f"target must be 'predicted' or 'true', got {target!r}")
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    penultimate_layer = penultimate_layer or {}

    preds: dict[str, np.ndarray] = {}
    maps: dict[tuple[str, str], np.ndarray | None] = {}
    for name, model in models.items():
        preds[name] = np.asarray(model(x, training=False)).argmax(-1)
        targets = preds[name] if target == "predicted" else y
        for method in methods:
            try:
                maps[name, method] = explain(
                    model, x, targets, method, penultimate_layer.get(name),
                    scorecam_max_n=scorecam_max_n, smooth_samples=smooth_samples,
                    smooth_noise=smooth_noise)
            except (ValueError, TypeError) as err:  # e.g. no conv layer for CAMs
                warnings.warn(f"saliency_grid: {method} failed for {name}: {err}")
                maps[name, method] = None

    nrows, ncols = len(x) * len(methods), 1 + len(models)
    fig, axes = new_figure(nrows, ncols, cell_size, cell_size, dpi)
    for i in range(len(x)):
        img, cmap = as_display_image(x[i])
        for j, method in enumerate(methods):
            r = i * len(methods) + j
            ax = axes[r, 0]
            ax.imshow(img, cmap=cmap, interpolation="nearest")
            ax.set_ylabel(_LABELS[method], fontsize=9)
            if j == 0:
                ax.set_title(f"#{i} true: {_class_name(int(y[i]), class_names)}", fontsize=9)
            for c, name in enumerate(models, start=1):
                ax = axes[r, c]
                ax.imshow(img, cmap=cmap, interpolation="nearest")
                heat = maps[name, method]
                if heat is None:
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", color="red",
                            transform=ax.transAxes)
                else:
                    ax.imshow(heat[i], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0,
                              interpolation="bilinear")
                if j == 0:
                    p = int(preds[name][i])
                    mark = "✓" if p == y[i] else "✗"
                    ax.set_title(f"{name}\npred: {_class_name(p, class_names)} {mark}",
                                 fontsize=9, color="k" if p == y[i] else "firebrick")
        for ax in axes[i * len(methods):(i + 1) * len(methods)].ravel():
            ax.set_xticks([])
            ax.set_yticks([])
    return save_figure(fig, path)


__all__: list[str] = ["METHODS", "explain", "saliency_grid"]

"""Static figures for distillation experiments: attention maps, training
curves, calibration (ECE, reliability diagrams) and teacher/student agreement.

Figures are built with `matplotlib.figure.Figure` on an Agg canvas, never
through pyplot, so nothing needs a display, no global pyplot state is
touched and no figure outlives the call. Each plotting function writes a
PNG of exactly `figsize * dpi` pixels (no tight bounding box) and returns
its path.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


# --------------------------------------------------------------------------- helpers

def new_figure(nrows: int, ncols: int, cell_w: float, cell_h: float,
               dpi: int = 100) -> tuple[Figure, np.ndarray]:
    """A constrained-layout Agg figure of nrows x ncols cells (axes as a 2-D array)."""
    fig = Figure(figsize=(ncols * cell_w, nrows * cell_h), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Figure, path: str) -> str:
    """Write `fig` as PNG at its own size and dpi, create parent dirs, release it."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fig.savefig(path, dpi=fig.dpi, format="png", facecolor="white")
    finally:
        fig.clear()  # drop artists; the Figure is not registered with pyplot
    return path


def as_display_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An HWC or HW image as something imshow draws faithfully: clipped to
    [0, 1] (rescaled first if it looks like 0..255) and a colormap for grey."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.size and img.max() > 1.5:
        img = img / 255.0
    img = np.clip(img, 0.0, 1.0)
    return img, ("gray" if img.ndim == 2 else None)


# --------------------------------------------------------------------------- attention

def attention_map(feature: np.ndarray) -> np.ndarray:
    """Attention-transfer map of one feature map (H, W, C): mean over channels
    of f**2, flattened-L2 normalised as in the AT loss (Zagoruyko & Komodakis
    2017), so teacher and student maps of one stage share a scale."""
    f = np.asarray(feature, dtype=np.float32)
    a = np.mean(f ** 2, axis=-1)
    norm = np.linalg.norm(a.ravel())
    return a / norm if norm > 0 else a


def attention_maps(features: dict[str, list[np.ndarray]], path: str,
                   images: np.ndarray | None = None, *, index: int = 0,
                   dpi: int = 100) -> str:
    """Grid of AT attention maps for one image: rows = networks (e.g. teacher,
    baseline, student), columns = tapped stages (plus the image first if
    `images` is given). Shows where each network concentrates activation
    energy and whether distillation made the student look where the teacher
    looks. Feature maps may be (H, W, C) or batched (N, H, W, C); `index`
    picks the image from batches. Each stage column shares one colour scale.
    """
    if not features:
        raise ValueError("features is empty")
    names = list(features)
    maps = {}
    for name in names:
        stage_maps = []
        for f in features[name]:
            f = np.asarray(f)
            if f.ndim == 4:
                f = f[index]
            if f.ndim != 3:
                raise ValueError(f"{name}: feature maps must be (H, W, C) or (N, H, W, C), "
                                 f"got shape {np.shape(f)}")
            stage_maps.append(attention_map(f))
        maps[name] = stage_maps
    num_stages = max(len(m) for m in maps.values())
    offset = 1 if images is not None else 0
    fig, axes = new_figure(len(names), num_stages + offset, 2.2, 2.2, dpi)

    vmax = [max((float(maps[n][s].max()) for n in names if s < len(maps[n])), default=1.0)
            for s in range(num_stages)]
    for r, name in enumerate(names):
        if images is not None:
            img = np.asarray(images)
            img = img[index] if img.ndim == 4 else img
            img, cmap = as_display_image(img)
            ax = axes[r, 0]
            ax.imshow(img, cmap=cmap, interpolation="nearest")
            ax.set_title("input" if r == 0 else "", fontsize=9)
        for s in range(num_stages):
            ax = axes[r, s + offset]
            if s >= len(maps[name]):
                ax.axis("off")
                continue
            a = maps[name][s]
            im = ax.imshow(a, cmap="inferno", vmin=0.0, vmax=vmax[s] or 1.0,
                           interpolation="bilinear")
            ax.set_title(f"stage {s + 1} ({a.shape[0]}x{a.shape[1]})", fontsize=9)
            if r == len(names) - 1:
                fig.colorbar(im, ax=axes[:, s + offset], shrink=0.6)
        axes[r, 0].set_ylabel(name, fontsize=10)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Attention maps (mean of squared activations, L2-normalised)", fontsize=10)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- curves

def _curve_groups(histories: dict[str, dict[str, list[float]]],
                  keys: Sequence[str] | None) -> list[str]:
    if keys is not None:
        return list(keys)
    seen: list[str] = []
    for hist in histories.values():
        for k in hist:
            base = k[4:] if k.startswith("val_") else k
            if base not in seen:
                seen.append(base)
    order = {k: i for i, k in enumerate(seen)}
    return sorted(seen, key=lambda k: (k != "loss", order[k]))  # loss first, then as found


def training_curves(histories: dict[str, dict[str, list[float]]], path: str,
                    keys: Sequence[str] | None = None, *, dpi: int = 100) -> str:
    """Training curves of several runs (Keras `History.history` dicts).

    One subplot per metric; each run has one colour, its training values as
    a solid line and the matching `val_` values dashed in the same subplot,
    so over-fitting and run-to-run differences read at a glance. `keys`
    chooses the metrics (default: every key found, `val_` folded into its
    training metric, loss first); an explicit `val_x` key gets a subplot of
    its own.
    """
    if not histories:
        raise ValueError("histories is empty")
    groups = _curve_groups(histories, keys)
    if not groups:
        raise ValueError("histories contain no metrics")
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = new_figure(nrows, ncols, 3.6, 2.8, dpi)
    colours = [f"C{i % 10}" for i in range(len(histories))]
    for g, key in enumerate(groups):
        ax = axes[g // ncols, g % ncols]
        plotted = False
        for colour, (run, hist) in zip(colours, histories.items()):
            series = [(key, "-", run)]
            if not key.startswith("val_"):
                series.append((f"val_{key}", "--", f"{run} (val)"))
            for k, style, label in series:
                values = hist.get(k)
                if values is None or len(values) == 0:
                    continue
                epochs = np.arange(1, len(values) + 1)
                ax.plot(epochs, np.asarray(values, dtype=float), style, color=colour,
                        label=label, marker="o" if len(values) < 15 else None, markersize=3)
                plotted = True
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if plotted:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for g in range(len(groups), nrows * ncols):
        axes[g // ncols, g % ncols].axis("off")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- calibration

def _check_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probs must be (N, K) with N = len(labels); got {p.shape} "
                         f"and {len(y)} labels")
    if len(y) == 0:
        raise ValueError("no examples")
    if np.any(p < -1e-6) or not np.allclose(p.sum(-1), 1.0, atol=1e-3):
        raise ValueError("probs rows must be probabilities summing to 1 "
                         "(apply softmax to logits first)")
    return p, y


def calibration_bins(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width confidence bins (lo, hi] over [0, 1] (confidence 0 goes to
    the first bin). Returns (edges, counts, accuracy, mean confidence) per bin;
    empty bins have accuracy and confidence 0."""
    p, y = _check_probs(probs, labels)
    conf = p.max(-1)
    correct = (p.argmax(-1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, num_bins - 1)
    counts = np.bincount(idx, minlength=num_bins).astype(np.int64)
    safe = np.maximum(counts, 1)
    acc = np.bincount(idx, weights=correct, minlength=num_bins) / safe
    mean_conf = np.bincount(idx, weights=conf, minlength=num_bins) / safe
    return edges, counts, acc, mean_conf


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               num_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017): the count-weighted mean of
    |accuracy - mean confidence| over equal-width confidence bins. 0 means the
    top-1 confidence matches the observed accuracy; distillation with a
    temperature often changes it, so it is reported next to accuracy."""
    _, counts, acc, conf = calibration_bins(probs, labels, num_bins)
    return float(np.sum(counts * np.abs(acc - conf)) / np.sum(counts))


def reliability_diagram(probs_by_model: dict[str, np.ndarray], labels: np.ndarray,
                        path: str, num_bins: int = 15, *, dpi: int = 100) -> str:
    """Reliability diagrams, one panel per model with its ECE in the title:
    blue bars = accuracy per confidence bin, red hatched = gap to the bin's
    mean confidence (bars below the diagonal mean over-confidence), grey
    steps = share of examples in each bin."""
    if not probs_by_model:
        raise ValueError("probs_by_model is empty")
    fig, axes = new_figure(1, len(probs_by_model), 3.2, 3.4, dpi)
    for ax, (name, probs) in zip(axes[0], probs_by_model.items()):
        edges, counts, acc, conf = calibration_bins(probs, labels, num_bins)
        ece = float(np.sum(counts * np.abs(acc - conf)) / np.sum(counts))
        width = edges[1] - edges[0]
        centres = edges[:-1] + width / 2
        filled = counts > 0
        ax.bar(centres[filled], acc[filled], width=width, color="C0", alpha=0.8,
               edgecolor="k", linewidth=0.5, label="accuracy")
        ax.bar(centres[filled], conf[filled] - acc[filled], bottom=acc[filled], width=width,
               color="C3", alpha=0.35, edgecolor="C3", hatch="//", linewidth=0.5,
               label="gap to confidence")
        ax.stairs(counts / counts.sum(), edges, color="0.4", linewidth=1.2,
                  label="share of examples")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"{name}\nECE = {100 * ece:.2f}%", fontsize=10)
        ax.legend(fontsize=6, loc="upper left")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- agreement

def agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Top-1 agreement: the share of examples on which two models (e.g. teacher
    and student, or Keras and LiteRT) predict the same class."""
    a, b = np.asarray(logits_a), np.asarray(logits_b)
    if a.shape != b.shape or a.ndim < 2 or len(a) == 0:
        raise ValueError(f"logits must share a non-empty (N, K) shape; got {a.shape} and {b.shape}")
    return float(np.mean(a.argmax(-1) == b.argmax(-1)))


def agreement_matrix(logits_by_model: dict[str, np.ndarray], path: str,
                     labels: np.ndarray | None = None, *, dpi: int = 100) -> str:
    """Heat map of pairwise top-1 agreement between models (and with the true
    labels when given), to see how closely a student follows its teacher
    compared with a baseline trained without distillation."""
    names = list(logits_by_model)
    if not names:
        raise ValueError("logits_by_model is empty")
    preds = {n: np.asarray(logits_by_model[n]).argmax(-1) for n in names}
    if labels is not None:
        preds["labels"] = np.asarray(labels).reshape(-1)
        names = names + ["labels"]
    n = len(names)
    mat = np.array([[float(np.mean(preds[a] == preds[b])) for b in names] for a in names])
    size = 1.0 + 0.9 * n
    fig, axes = new_figure(1, 1, size + 1.0, size, dpi)
    ax = axes[0, 0]
    im = ax.imshow(mat, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="w" if mat[i, j] < 0.6 else "k")
    ax.set_title("top-1 agreement", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return save_figure(fig, path)

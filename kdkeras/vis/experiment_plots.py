"""The figures of the experiment recipes: accuracy bars against a reference,
student against teacher accuracy, and the bias-variance bars."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kdkeras.vis.plots import new_figure, save_figure

GREY, BLUE, RED, ORANGE, GREEN = "#888888", "#4c72b0", "#c44e52", "#dd8452", "#55a868"


def accuracy_bars(labels: Sequence[str], top1s: Sequence[float], path: str, title: str,
                  reference: float | None = None, reference_label: str = "baseline",
                  highlight: Sequence[bool] | None = None,
                  errors: Sequence[float | None] | None = None) -> str:
    """Top-1 (%) per run as bars, annotated, with an optional dashed reference
    line; `highlight` marks the bars drawn in colour (the others grey);
    `errors` (fractions, e.g. the std over seeds) draws error bars."""
    values = [100 * v for v in top1s]
    highlight = [True] * len(values) if highlight is None else list(highlight)
    spread = None if errors is None else [100 * (e or 0.0) for e in errors]
    fig, axes = new_figure(1, 1, max(4.5, 1.4 * len(values)), 3.6)
    ax = axes[0, 0]
    bars = ax.bar(range(len(values)), values, color=[BLUE if h else GREY for h in highlight],
                  yerr=spread, capsize=4 if spread else 0)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    for i, (bar, v) in enumerate(zip(bars, values)):
        text = f"{v:.2f}" if spread is None else f"{v:.2f}\n±{spread[i]:.2f}"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, v + (spread[i] if spread else 0.0)),
                    ha="center", va="bottom", fontsize=8)
    if reference is not None:
        ax.axhline(100 * reference, color=RED, linestyle="--", label=reference_label)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_ylim(max(0.0, min(values) - 5.0), min(100.0, max(values) + 3.0))
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def student_vs_teacher(points: Sequence[dict], baseline: float, path: str, title: str) -> str:
    """Student top-1 against its teacher's top-1 (points with `level`,
    `teacher_top1`, `student_top1`, and optionally their `*_std` over seeds as
    error bars), and the student alone as a dashed line."""
    fig, axes = new_figure(1, 1, 5.5, 4.0)
    ax = axes[0, 0]
    t = np.array([100 * p["teacher_top1"] for p in points])
    s = np.array([100 * p["student_top1"] for p in points])
    order = np.argsort(t)
    ax.plot(t[order], s[order], "o-", color=BLUE, label="student with KD")
    if any(p.get("student_top1_std") or p.get("teacher_top1_std") for p in points):
        ax.errorbar(t, s, yerr=[100 * (p.get("student_top1_std") or 0.0) for p in points],
                    xerr=[100 * (p.get("teacher_top1_std") or 0.0) for p in points], fmt="none",
                    ecolor=BLUE, capsize=3)
    for p, x, y in zip(points, t, s):
        ax.annotate(str(p["level"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(100 * baseline, color=RED, linestyle="--",
               label=f"student alone ({100 * baseline:.2f}%)")
    ax.margins(x=0.08, y=0.12)
    ax.set_xlabel("teacher top-1 (%)")
    ax.set_ylabel("student top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def bias_variance_bars(summaries: dict[str, dict], path: str) -> str:
    """Per method: bias and variance stacked against the measured expected CE;
    top-1 and the share of regularisation samples beside it. `bias_std` and
    `variance_std` in a summary (the spread over repetitions) draw error bars."""
    names = list(summaries)
    x = np.arange(len(names))
    fig, axes = new_figure(1, 2, 4.2, 3.8)
    ax = axes[0, 0]
    bias = [summaries[n]["bias"] for n in names]
    variance = [summaries[n]["variance"] for n in names]

    def spread(key):
        values = [summaries[n].get(key) for n in names]
        return None if all(v is None for v in values) else [v or 0.0 for v in values]

    ax.bar(x, bias, color=BLUE, label="bias", yerr=spread("bias_std"), capsize=3)
    ax.bar(x, variance, bottom=bias, color=ORANGE, label="variance", yerr=spread("variance_std"),
           capsize=3)
    ax.scatter(x, [summaries[n]["expected_ce_measured"] for n in names], color="black",
               marker="_", s=400, zorder=3, label="measured E[CE]")
    ax.set_xticks(x, names)
    ax.set_ylabel("nats")
    ax.set_title("test CE = bias + variance (noise 0)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    share = [summaries[n].get("regularization_share") for n in names]
    width = 0.4
    ax.bar(x - width / 2, [100 * summaries[n]["top1"] for n in names], width, color=GREEN,
           label="top-1 (%)")
    if all(s is not None for s in share):
        ax.bar(x + width / 2, [100 * s for s in share], width, color=RED,
               label="regularisation samples (%)")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 100)
    ax.set_title("accuracy and regularisation samples", fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)

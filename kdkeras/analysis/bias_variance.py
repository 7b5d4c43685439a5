"""Bias-variance decomposition of the cross-entropy over several trainings.

Following Heskes (1998) as used by the bias-variance view of soft labels
(Zhou et al. 2021): for M models trained on resampled data and their
predicted distributions `p_m` on the same N samples,

    y_bar    = exp(mean_m log p_m) / Z          (normalised geometric mean)
    noise    = H(y)                             (0 for one-hot labels)
    bias     = KL(y || y_bar)                   (-log y_bar[label] for one-hot)
    variance = mean_m KL(y_bar || p_m)          (= -log Z)
    error    = mean_m CE(y, p_m) = noise + bias + variance

The last line is an identity, not an approximation; `decompose` checks it.
"Regularisation samples" are those where the teacher's cross-entropy is
above the student's: there soft labels pull the student towards a worse
answer, which is the bias that WSL's per-sample weights turn down.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

_TINY = np.finfo(np.float64).tiny


@dataclasses.dataclass
class Decomposition:
    """Mean terms over the samples, and the per-sample arrays behind them."""

    noise: float
    bias: float
    variance: float
    expected_ce: float
    top1: float
    ensemble_top1: float
    num_models: int
    noise_per_sample: np.ndarray
    bias_per_sample: np.ndarray
    variance_per_sample: np.ndarray
    ce_per_sample: np.ndarray
    y_bar: np.ndarray

    @property
    def error(self) -> float:
        """`noise + bias + variance`, equal to `expected_ce`."""
        return self.noise + self.bias + self.variance

    def summary(self) -> dict[str, Any]:
        """The scalar terms as a JSON-ready dict."""
        return {
            "noise": self.noise,
            "bias": self.bias,
            "variance": self.variance,
            "error": self.error,
            "expected_ce": self.expected_ce,
            "top1": self.top1,
            "ensemble_top1": self.ensemble_top1,
            "num_models": self.num_models,
        }


def _log_probs(values: np.ndarray, from_logits: bool) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if from_logits:
        shifted = values - values.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    if np.any(values < 0):
        raise ValueError("probabilities must be >= 0 (pass from_logits=True for logits).")
    # Renormalise in float64: float32 softmax rows sum to 1 only within ~1e-7.
    values = values / values.sum(axis=-1, keepdims=True)
    return np.log(np.maximum(values, _TINY))


def _label_distribution(labels: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (distribution (N, K), hard labels (N,)) from int or soft labels."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        hard = labels.astype(np.int64)
        if hard.shape[0] != n:
            raise ValueError(f"labels has {hard.shape[0]} samples, predictions {n}.")
        if hard.min() < 0 or hard.max() >= k:
            raise ValueError(f"labels must lie in [0, {k}), got [{hard.min()}, {hard.max()}].")
        dist = np.zeros((n, k))
        dist[np.arange(n), hard] = 1.0
        return dist, hard
    if labels.shape != (n, k):
        raise ValueError(f"soft labels must have shape {(n, k)}, got {labels.shape}.")
    dist = labels.astype(np.float64)
    if np.any(dist < 0) or not np.allclose(dist.sum(-1), 1.0, atol=1e-5):
        raise ValueError("soft labels must be distributions (>= 0, rows summing to 1).")
    return dist, dist.argmax(-1)


def _xlogy(x: np.ndarray, log_y: np.ndarray) -> np.ndarray:
    """`x * log_y` with `0 * anything = 0`."""
    return np.where(x > 0, x * log_y, 0.0)


def decompose(
    predictions: np.ndarray,
    labels: np.ndarray,
    from_logits: bool = False,
    check: bool = True,
) -> Decomposition:
    """Decompose the expected cross-entropy of M models on N samples.

    Args:
        predictions: `p[m, n, k]`, each model's predicted probabilities (or
            logits with `from_logits=True`) on the same samples; rows of
            probabilities are renormalised in float64.
        labels: int labels (N,) or label distributions (N, K).
        from_logits: whether `predictions` are logits.
        check: assert `noise + bias + variance == expected CE` (to 1e-6
            relative); it holds for any predictions, so a failure is a bug.

    Returns:
        A `Decomposition`: the means over samples and per-sample arrays.
    """
    log_p = _log_probs(predictions, from_logits)
    if log_p.ndim != 3:
        raise ValueError(f"predictions must have shape (M, N, K), got {log_p.shape}.")
    m, n, k = log_p.shape
    y, hard = _label_distribution(labels, n, k)

    mean_log_p = log_p.mean(axis=0)  # (N, K)
    log_z = np.log(np.exp(mean_log_p - mean_log_p.max(-1, keepdims=True)).sum(-1))
    log_z += mean_log_p.max(-1)
    log_y_bar = mean_log_p - log_z[:, None]
    y_bar = np.exp(log_y_bar)

    log_y = np.log(np.maximum(y, _TINY))
    noise = -_xlogy(y, log_y).sum(-1)
    bias = (_xlogy(y, log_y) - _xlogy(y, log_y_bar)).sum(-1)
    variance = (y_bar[None] * (log_y_bar[None] - log_p)).sum(-1).mean(0)
    ce = -_xlogy(y[None], log_p).sum(-1).mean(0)

    if check:
        np.testing.assert_allclose(
            noise + bias + variance, ce, rtol=1e-6, atol=1e-9,
            err_msg="bias-variance identity broken",
        )
    top1 = float((log_p.argmax(-1) == hard[None]).mean())
    return Decomposition(
        noise=float(noise.mean()),
        bias=float(bias.mean()),
        variance=float(variance.mean()),
        expected_ce=float(ce.mean()),
        top1=top1,
        ensemble_top1=float((log_y_bar.argmax(-1) == hard).mean()),
        num_models=m,
        noise_per_sample=noise,
        bias_per_sample=bias,
        variance_per_sample=variance,
        ce_per_sample=ce,
        y_bar=y_bar,
    )


def cross_entropy_per_sample(
    predictions: np.ndarray, labels: np.ndarray, from_logits: bool = False
) -> np.ndarray:
    """`-log p[label]` per sample for predictions of shape (..., N, K)."""
    log_p = _log_probs(predictions, from_logits)
    labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), log_p.shape[:-1])
    return -np.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]


def regularization_samples(
    teacher_predictions: np.ndarray,
    student_predictions: np.ndarray,
    labels: np.ndarray,
    from_logits: bool = False,
) -> np.ndarray:
    """Boolean mask of the samples where the teacher's CE is above the student's.

    `teacher_predictions` is (N, K); `student_predictions` (N, K) or
    (M, N, K) for M students, giving an (M, N) mask.
    """
    ce_t = cross_entropy_per_sample(teacher_predictions, labels, from_logits)
    ce_s = cross_entropy_per_sample(student_predictions, labels, from_logits)
    return ce_t > ce_s


def regularization_share(
    teacher_predictions: np.ndarray,
    student_predictions: np.ndarray,
    labels: np.ndarray,
    from_logits: bool = False,
) -> float:
    """The fraction of regularisation samples (averaged over students)."""
    return float(
        regularization_samples(
            teacher_predictions, student_predictions, labels, from_logits
        ).mean()
    )


def split_by_mask(decomposition: Decomposition, mask: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean bias, variance and CE on the samples where `mask` is True / False.

    Use it with a per-sample regularisation mask (e.g. the teacher's CE above
    the CE-trained students' mean) to see where soft labels add bias.
    """
    mask = np.asarray(mask, dtype=bool)
    out = {}
    for name, sel in (("in", mask), ("out", ~mask)):
        if not sel.any():
            out[name] = {"count": 0, "bias": float("nan"), "variance": float("nan"),
                         "expected_ce": float("nan")}
            continue
        out[name] = {
            "count": int(sel.sum()),
            "bias": float(decomposition.bias_per_sample[sel].mean()),
            "variance": float(decomposition.variance_per_sample[sel].mean()),
            "expected_ce": float(decomposition.ce_per_sample[sel].mean()),
        }
    return out


def compare_methods(
    logits: dict[str, list[np.ndarray]],
    labels: np.ndarray,
    teacher_logits: np.ndarray | None = None,
    reference: str = "ce",
) -> tuple[dict[str, dict], np.ndarray | None]:
    """Decompose each method's M trainings (`logits[name]`: M arrays of (N, K)).

    Per method: the decomposition's summary plus the measured expected CE;
    with the teacher's logits, the share of regularisation samples; with a
    `reference` method (plain CE) too, the split of bias and variance over the
    samples where the teacher is worse than the reference students (returned
    as the mask, else None).
    """
    teacher_worse = None
    if teacher_logits is not None and reference in logits:
        ce_reference = cross_entropy_per_sample(np.stack(logits[reference]), labels, from_logits=True)
        ce_teacher = cross_entropy_per_sample(teacher_logits, labels, from_logits=True)
        teacher_worse = ce_teacher > ce_reference.mean(0)
    summaries = {}
    for name, runs in logits.items():
        stacked = np.stack(runs)
        d = decompose(stacked, labels, from_logits=True)
        s = {**d.summary(), "expected_ce_measured": float(
            cross_entropy_per_sample(stacked, labels, from_logits=True).mean())}
        if teacher_logits is not None:
            s["regularization_share"] = regularization_share(teacher_logits, stacked, labels,
                                                             from_logits=True)
        if teacher_worse is not None:
            s["teacher_worse_split"] = split_by_mask(d, teacher_worse)
        summaries[name] = s
    return summaries, teacher_worse


def summary_table(summaries: dict[str, dict]) -> str:
    """`compare_methods`' summaries as a Markdown table (percentages for accuracies)."""
    from kdkeras.vis.report import markdown_table, pct

    def pair(split, key):
        return "-" if split is None else f"{split['in'][key]:.4f} / {split['out'][key]:.4f}"

    rows = []
    for name, s in summaries.items():
        share, split = s.get("regularization_share"), s.get("teacher_worse_split")
        rows.append([
            name, s["num_models"], pct(s["top1"]),
            "-" if s.get("top1_std") is None else pct(s["top1_std"]), pct(s["ensemble_top1"]),
            s["noise"], s["bias"], s["variance"], s["error"], s["expected_ce_measured"],
            "-" if share is None else pct(share), pair(split, "bias"), pair(split, "variance"),
        ])
    return markdown_table(
        ["method", "M", "top-1 (%)", "± std", "ensemble top-1 (%)", "noise", "bias", "variance",
         "noise+bias+variance", "E[CE] measured", "reg. samples (%)",
         "bias: teacher-worse / other", "variance: teacher-worse / other"], rows, align="lrrrrrrrrrrrr")
